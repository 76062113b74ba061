"""Tests for overhead_service.model.gofloat: parity with Go's strconv.ParseFloat(s, 64).

The expected values and error kinds in the tables were checked against a real
Go strconv.ParseFloat (Go 1.19). The property tests compare against independent
oracles: Python's correctly rounded float(), and exact big-integer division.
"""

from __future__ import annotations

import math
import re
import struct
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from overhead_service.model.gofloat import (
    GoFloatError,
    GoFloatRangeError,
    GoFloatSyntaxError,
    _eisel_lemire64,
    _pow10_128,
    parse_go_float,
)

INF = math.inf
MAX = sys.float_info.max
MIN_SUBNORMAL = 5e-324
GO_NAN_BITS = 0x7FF8000000000001


def bits(x: float) -> int:
    """The IEEE-754 bits of x. Comparing these tells -0.0 from 0.0 and NaN payloads apart."""
    result: int = struct.unpack("<Q", struct.pack("<d", x))[0]
    return result


def assert_same_float(got: float, want: float) -> None:
    assert bits(got) == bits(want), f"got {got!r} ({got.hex()}), want {want!r} ({want.hex()})"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

ACCEPTED: list[tuple[str, float]] = [
    # plain decimals, signs, optional parts
    ("0", 0.0),
    ("+0", 0.0),
    ("-0", -0.0),
    ("-0.0", -0.0),
    ("-.0e5", -0.0),
    ("1", 1.0),
    ("1.", 1.0),
    (".5", 0.5),
    ("+1.5", 1.5),
    ("-1.5", -1.5),
    ("00001.5000", 1.5),
    ("1e0", 1.0),
    ("1E+3", 1000.0),
    ("1e-3", 0.001),
    ("1.e1", 10.0),
    (".5e1", 5.0),
    ("0.1", 0.1),
    ("1.1", 1.1),
    ("0.25", 0.25),
    ("1e-0", 1.0),
    ("1e00000000000000000003", 1000.0),
    # underscores between digits
    ("1_5", 15.0),
    ("1_000_000", 1e6),
    ("1_5.2_5", 15.25),
    ("1e1_0", 1e10),
    ("1_0e-0_1", 1.0),
    ("0_1", 1.0),
    ("-1_5", -15.0),
    ("0.0_0_1", 0.001),
    # hexadecimal: a p exponent is required; underscores may also follow 0x
    ("0x1p0", 1.0),
    ("0x1.8p0", 1.5),
    ("0x1p-2", 0.25),
    ("0X1P4", 16.0),
    ("0x.8p1", 1.0),
    ("0x1.p0", 1.0),
    ("-0x1p0", -1.0),
    ("+0x1p+0", 1.0),
    ("0x_1p0", 1.0),
    ("-0x_1p0", -1.0),
    ("0x1_0p0", 16.0),
    ("0xA.Bp0", 10.6875),
    ("0xabcdefp0", 11259375.0),
    ("0xABCDEFp-4", 703710.9375),
    ("0x1p+1_0", 1024.0),
    ("0x0p0", 0.0),
    ("-0x0p0", -0.0),
    ("0x0p99999999", 0.0),
    ("0x1.fffffffffffffp1023", MAX),
    ("0x1p-1022", 2.2250738585072014e-308),
    ("0x1p-1074", MIN_SUBNORMAL),
    ("0x0.0000000000001p-1022", MIN_SUBNORMAL),
    # hex rounding: ties to even, sticky bits from long mantissas, subnormals
    ("0x1.00000000000008p0", 1.0),  # exactly half an ulp above 1: ties to even (down)
    ("0x1.00000000000018p0", 1.0 + 2 * 2.0**-52),  # half above an odd mantissa: up
    ("0x1.000000000000080000000000001p0", 1.0 + 2.0**-52),  # just above half: up
    ("0x1.00000000000007ffffffffffffffp0", 1.0),  # just below half: down
    ("0x" + "f" * 20 + "p0", 2.0**80),
    ("0x1p-1075", 0.0),  # half of the smallest subnormal: ties to even (zero)
    ("0x1.0000000000000000001p-1075", MIN_SUBNORMAL),
    ("0x3p-1076", MIN_SUBNORMAL),  # 0.75 of a subnormal ulp: up
    ("0x1.8p-1074", 2 * MIN_SUBNORMAL),  # 1.5 units: tie, to even (2)
    ("0x2.8p-1074", 2 * MIN_SUBNORMAL),  # 2.5 units: tie, to even (2)
    ("0x1p-1100", 0.0),  # underflow is not an error
    ("-0x1p-1100", -0.0),
    ("0x1.fffffffffffff7ffp1023", MAX),  # below the overflow midpoint
    # decimal rounding edge cases
    ("9007199254740993", 9007199254740992.0),  # 2**53 + 1: tie, to even (down)
    ("9007199254740995", 9007199254740996.0),  # tie, to even (up)
    ("2.2250738585072011e-308", 2.225073858507201e-308),
    ("2.2250738585072012e-308", 2.2250738585072014e-308),
    ("1.7976931348623157e308", MAX),
    ("1.7976931348623158e308", MAX),  # above MAX, below the overflow midpoint
    (str(2**1024 - 2**970 - 1), MAX),  # one below the exact overflow midpoint
    ("4.9e-324", MIN_SUBNORMAL),
    ("2.4703282292062328e-324", MIN_SUBNORMAL),  # just above half the smallest subnormal
    ("2.4703282292062327e-324", 0.0),  # just below: rounds to zero
    ("1e-400", 0.0),  # underflow is not an error
    ("-1e-400", -0.0),
    ("0e999999", 0.0),
    ("-0e999999", -0.0),
    ("1e-99999999", 0.0),
    ("123456789012345678901234567890", 1.2345678901234568e29),
    ("0." + "0" * 320 + "1e320", 0.1),
    # specials: any case; inf and infinity may be signed
    ("inf", INF),
    ("+Inf", INF),
    ("-inf", -INF),
    ("INF", INF),
    ("Infinity", INF),
    ("+infinity", INF),
    ("-INFINITY", -INF),
    ("iNfInItY", INF),
]

NAN_SPELLINGS = ["nan", "NaN", "NAN", "nAn"]

SYNTAX_ERRORS: list[str] = [
    # empty and whitespace
    "",
    " ",
    " 1.5",
    "1.5 ",
    "1 .5",
    "1 000",
    "\t1",
    "1\n",
    "1\x00",
    "1\u00a0",
    # malformed underscores
    "_",
    "__",
    "_1",
    "1_",
    "1__5",
    "1.5_",
    "1_.5",
    "1._5",
    "1_e5",
    "1e_5",
    "1e5_",
    "1e+_5",
    "1e1__0",
    "+_1",
    "._5",
    "0x__1p0",
    "0x1_p0",
    "0x1_.8p0",
    "0x1._8p0",
    "0x1.8_p0",
    "0x1p_1",
    "0x1p1_",
    "0x1.8p0_",
    "0x_",
    "0x_p0",
    "0_x1p0",
    # malformed numbers
    "1,5",
    "1.5x",
    "1.2.3",
    "..5",
    "0.5.",
    ".",
    "+",
    "-",
    "+.",
    "--1",
    "++1",
    "+-1",
    "e5",
    "E5",
    ".e1",
    "1e",
    "1e+",
    "1.5E-",
    "1e--1",
    "1e1.5",
    "1p0",
    "1e0x1",
    # hex without a p exponent, or otherwise malformed
    "0x",
    "0X",
    "0x.",
    "0x1",
    "0x1.8",
    "0x1e5",
    "0x1.8e0",
    "0xp0",
    "0x.p0",
    "0x1p",
    "0x1p+",
    "0xg1p0",
    "0x1.8p0.5",
    "-0x",
    "0b1",
    "0o7",
    "0b1p0",
    # specials: no sign on nan, no partial or trailing words
    "+nan",
    "-nan",
    "+NaN",
    "nanx",
    "NaN1",
    "na",
    "n",
    "nan ",
    "in",
    "i",
    "infin",
    "infinit",
    "infinityy",
    "Infinity1",
    "infx",
    "Inf1",
    "inf ",
    " inf",
    "1inf",
    "+-inf",
    "--inf",
    # non-ASCII look-alikes that Python's float() accepts or case-folds
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\u0661.\u0665",
    "\uff11",  # FULLWIDTH DIGIT ONE
    "1e\u0661",
    "0x1p\u0661",
    "\u0131nf",  # LATIN SMALL LETTER DOTLESS I
    "\u0130nf",  # LATIN CAPITAL LETTER I WITH DOT ABOVE
    "na\u212a",  # KELVIN SIGN (folds to k under Unicode IGNORECASE)
]

RANGE_ERRORS: list[tuple[str, float]] = [
    ("1e400", INF),
    ("-1e400", -INF),
    ("1e309", INF),
    ("1.7976931348623159e308", INF),
    (str(2**1024 - 2**970), INF),  # exactly the overflow midpoint: ties to even (up)
    ("-" + str(2**1024 - 2**970), -INF),
    ("1e99999", INF),
    ("1e123456", INF),
    ("1_0e4_00", INF),
    ("0x1p1024", INF),
    ("-0x1p1024", -INF),
    ("0x1.fffffffffffff8p1023", INF),  # overflow midpoint: ties to even (up)
    ("0x1p99999999", INF),
    ("0x_1p1_024", INF),
]


# ---------------------------------------------------------------------------------------------
# Table-driven tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted(text: str, expected: float) -> None:
    assert_same_float(parse_go_float(text), expected)


@pytest.mark.parametrize("text", NAN_SPELLINGS)
def test_nan_has_go_payload(text: str) -> None:
    value = parse_go_float(text)
    assert math.isnan(value)
    assert bits(value) == GO_NAN_BITS


@pytest.mark.parametrize("text", SYNTAX_ERRORS)
def test_syntax_error(text: str) -> None:
    with pytest.raises(GoFloatSyntaxError) as info:
        parse_go_float(text)
    assert info.value.reason == "syntax"
    assert info.value.input == text


@pytest.mark.parametrize(("text", "value"), RANGE_ERRORS)
def test_range_error(text: str, value: float) -> None:
    with pytest.raises(GoFloatRangeError) as info:
        parse_go_float(text)
    assert info.value.reason == "range"
    assert info.value.input == text
    assert_same_float(info.value.value, value)


def test_error_hierarchy() -> None:
    assert issubclass(GoFloatSyntaxError, GoFloatError)
    assert issubclass(GoFloatRangeError, GoFloatError)
    assert issubclass(GoFloatError, ValueError)
    assert not issubclass(GoFloatSyntaxError, GoFloatRangeError)
    with pytest.raises(ValueError):
        parse_go_float("x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1e400", 'strconv.ParseFloat: parsing "1e400": value out of range'),
        ("", 'strconv.ParseFloat: parsing "": invalid syntax'),
        ("\t1", 'strconv.ParseFloat: parsing "\\t1": invalid syntax'),
        ("\x00", 'strconv.ParseFloat: parsing "\\x00": invalid syntax'),
        ("\x7f", 'strconv.ParseFloat: parsing "\\x7f": invalid syntax'),
        ('a"b\\', 'strconv.ParseFloat: parsing "a\\"b\\\\": invalid syntax'),
        ("\u00a0", 'strconv.ParseFloat: parsing "\\u00a0": invalid syntax'),
        ("é", 'strconv.ParseFloat: parsing "é": invalid syntax'),
    ],
)
def test_error_message_matches_go(text: str, message: str) -> None:
    with pytest.raises(GoFloatError) as info:
        parse_go_float(text)
    assert str(info.value) == message


# Long inputs: Go's quirks, with results checked against Go 1.19.
_MID = str(10**53 + 5**53)  # digits of 1 + 2**-53, the midpoint between 1.0 and its successor


@pytest.mark.parametrize(
    ("text", "expected_bits"),
    [
        # golang/go#42436: the exponent stops accumulating at 10000, so 9e100000 is read as 9e10000.
        ("0." + "0" * 100000 + "9e100000", 0x0000000000000000),
        ("0." + "0" * 99990 + "1e99999", 0x4197D78400000000),  # 5 exponent digits: exact (1e8)
        ("0x0." + "0" * 30000 + "1p100000", 0x0000000000000000),
        # More than 800 integer digits and Eisel-Lemire gives up: decimal.set keeps 800 digits and
        # puts the decimal point after them.
        (_MID + "0" * 760 + "1" + "e-814", 0x3CD203AF9EE75616),
        (_MID + "0" * 800 + "e-853", 0x34B8851A0B548EA5),
        (_MID + "0" * 800 + "1" + "e-854", 0x34839DAE6F76D884),
        ("1" + "0" * 900 + "e-900", 0x2AF665BF1D3E6A8D),
        ("1" + "0" * 200000 + "e-200000", 0x0000000000000000),  # both quirks at once
        ("9" * 900 + "e-500", 0x7E37E43C8800759C),  # really about 1e400, but Go says 1e300, no error
        # Go rounds digits[:800] * 10**exp; digits past 800 only act as a sticky bit. Here the
        # 800 kept digits are exactly the midpoint between 1.0 and its successor.
        (_MID.ljust(800, "0") + "0" * 400 + "1" + "e-799", 0x3FF0000000000001),
        ("-" + _MID.ljust(800, "0") + "0" * 400 + "1" + "e-799", 0xBFF0000000000001),
        (_MID.ljust(800, "0") + "0" * 401 + "e-799", 0x3FF0000000000000),
        # More than 800 integer digits, but Eisel-Lemire answers: correctly rounded.
        (_MID + "0" * 747 + "." + "0" * 53 + "e-800", 0x3FB999999999999A),
        ("1" + "0" * 20000 + "e-20000", 0x0000000000000000),
        ("1" + "2" * 900 + "e-900", bits(1.2222222222222223)),
        # Long hex mantissas are rounded correctly.
        ("0x1" + "0" * 3000 + "p-12001", 0x3FE0000000000000),
    ],
)
def test_long_input_matches_go(text: str, expected_bits: int) -> None:
    assert bits(parse_go_float(text)) == expected_bits


@pytest.mark.parametrize(
    "text",
    ["0x" + "0" * 3000 + "1p12000", "0x1" + "0" * 3000 + "p-1000000", "9" * 900 + "e-100"],
)
def test_long_input_range_error(text: str) -> None:
    with pytest.raises(GoFloatRangeError) as info:
        parse_go_float(text)
    assert info.value.value == INF


@pytest.mark.parametrize(
    ("k", "high", "low"),
    [
        # Rows of Go's detailedPowersOfTen table (src/strconv/eisel_lemire.go).
        (-348, 0xFA8FD5A0081C0288, 0x1732C869CD60E453),
        (-1, 0xCCCCCCCCCCCCCCCC, 0xCCCCCCCCCCCCCCCC),
        (0, 0x8000000000000000, 0x0000000000000000),
        (43, 0xE596B7B0C643C719, 0x6D9CCD05D0000000),
        (347, 0xD13EB46469447567, 0x4B7195F2D2D1A9FB),
    ],
)
def test_pow10_table_rows(k: int, high: int, low: int) -> None:
    assert _pow10_128(k) == (high, low)


def test_eisel_lemire_answers_and_gives_up_like_go() -> None:
    assert _eisel_lemire64(1, 0, False) == 1.0
    assert _eisel_lemire64(123456789, -5, True) == -1234.56789
    negative_zero = _eisel_lemire64(0, 5, True)
    assert negative_zero is not None
    assert_same_float(negative_zero, -0.0)
    assert _eisel_lemire64(1, -349, False) is None  # outside the table
    assert _eisel_lemire64(1, 348, False) is None
    assert _eisel_lemire64(10**18, -18, False) is None  # halfway ambiguity: Go falls back
    assert _eisel_lemire64(1, 309, False) is None  # would overflow: Go falls back


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@given(finite_floats)
@example(0.0)
@example(-0.0)
@example(MAX)
@example(MIN_SUBNORMAL)
@example(2.2250738585072014e-308)
def test_repr_round_trips(x: float) -> None:
    assert_same_float(parse_go_float(repr(x)), x)


def _go_hex_spellings(x: float, variant: int, underscore_at: int) -> str:
    """float.hex() output in one of the spellings Go also accepts."""
    h = x.hex()  # e.g. '-0x1.8000000000000p+0', already valid Go syntax
    if variant == 1:
        h = h.replace("p+", "p")
    elif variant == 2:
        h = h.upper()
    elif variant == 3:
        # strip trailing zeros of the fraction (keeps at least "0x1.p..")
        mantissa, exponent = h.split("p")
        h = mantissa.rstrip("0") + "p" + exponent
    elif variant == 4:
        # an underscore between two hex digits of the fraction; zero ("0x0.0p+0") has
        # no such gap, so it gets one after the prefix instead
        mantissa, exponent = h.split("p")
        frac_len = len(mantissa.split(".")[1])
        if frac_len < 2:
            return h.replace("0x", "0x_")
        cut = mantissa.index(".") + 1 + 1 + underscore_at % (frac_len - 1)
        h = mantissa[:cut] + "_" + mantissa[cut:] + "p" + exponent
    elif variant == 5:
        h = h.replace("0x", "0x_")
    return h


@given(finite_floats, st.integers(0, 5), st.integers(0, 100))
@example(MIN_SUBNORMAL, 4, 0)
@example(0.0, 4, 0)
@example(-0.0, 2, 0)
def test_hex_round_trips(x: float, variant: int, underscore_at: int) -> None:
    text = _go_hex_spellings(x, variant, underscore_at)
    assert_same_float(parse_go_float(text), x)


def _exact_round(numerator: int, denominator: int) -> float:
    """Correctly rounded numerator/denominator; CPython's int true division rounds half to even."""
    return numerator / denominator


@given(
    mantissa=st.one_of(st.integers(0, 2**64), st.integers(0, 2**300)),
    frac_digits=st.integers(0, 80),
    exponent=st.integers(-1400, 1300),
    neg=st.booleans(),
)
@settings(max_examples=500)
@example(mantissa=1, frac_digits=0, exponent=-1075, neg=False)
@example(mantissa=3, frac_digits=0, exponent=-1076, neg=True)
@example(mantissa=2**53 + 1, frac_digits=0, exponent=0, neg=False)
@example(mantissa=2**54 - 1, frac_digits=0, exponent=971, neg=False)
def test_hex_rounding_matches_exact_division(
    mantissa: int, frac_digits: int, exponent: int, neg: bool
) -> None:
    digits = f"{mantissa:x}"
    if frac_digits >= len(digits):
        digits = "0" * (frac_digits - len(digits) + 1) + digits
    split = len(digits) - frac_digits
    text = f"{'-' if neg else ''}0x{digits[:split]}.{digits[split:]}p{exponent}"
    e2 = exponent - 4 * frac_digits
    sign = -1 if neg else 1
    try:
        expected = sign * _exact_round(mantissa << max(e2, 0), 1 << max(-e2, 0))
    except OverflowError:
        with pytest.raises(GoFloatRangeError) as info:
            parse_go_float(text)
        assert_same_float(info.value.value, sign * INF)
        return
    if expected == 0.0:
        expected = math.copysign(0.0, sign)
    assert_same_float(parse_go_float(text), expected)


FUZZ_ALPHABET = "0123456789._+-eEpPxXabcdefinfINFNa "


@given(st.text(alphabet=FUZZ_ALPHABET, max_size=24))
@settings(max_examples=1000)
def test_random_strings_return_float_or_go_error(text: str) -> None:
    try:
        value = parse_go_float(text)
    except GoFloatRangeError as err:
        assert err.reason == "range"
        assert math.isinf(err.value)
        return
    except GoFloatSyntaxError as err:
        assert err.reason == "syntax"
        return
    assert isinstance(value, float)
    assert " " not in text and text != ""
    lowered = text.lower()
    if not any(c in lowered for c in "xpn_i"):
        # A plain decimal that Go accepted must also be valid for Python and mean the same.
        assert_same_float(value, float(text))


DIGITS = st.text(alphabet="0123456789", max_size=30)


@st.composite
def plain_decimals(draw: st.DrawFn) -> str:
    """Strings of the grammar [+-]? digits* ('.' digits*)? ([eE] [+-]? digits+)?, with a digit."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    int_part = draw(DIGITS)
    frac_part = draw(st.none() | DIGITS)
    if not int_part and not frac_part:
        int_part = draw(st.text(alphabet="0123456789", min_size=1, max_size=5))
    text = sign + int_part + ("" if frac_part is None else "." + frac_part)
    if draw(st.booleans()):
        e = draw(st.integers(-400, 400))
        e_sign = "-" if e < 0 else draw(st.sampled_from(["", "+"]))
        text += draw(st.sampled_from("eE")) + e_sign + "0" * draw(st.integers(0, 2)) + str(abs(e))
    return text


@given(plain_decimals())
@settings(max_examples=1000)
@example("1.7976931348623158e308")
@example("2.4703282292062328e-324")
@example("-0")
def test_plain_decimals_agree_with_python_float(text: str) -> None:
    expected = float(text)
    if math.isinf(expected):
        with pytest.raises(GoFloatRangeError) as info:
            parse_go_float(text)
        assert_same_float(info.value.value, expected)
    else:
        assert_same_float(parse_go_float(text), expected)


@given(plain_decimals(), st.integers(0, 2000))
def test_long_path_agrees_with_float_when_no_quirk_applies(text: str, zeros: int) -> None:
    # Leading zeros push the input past the short-input fast path without adding significant
    # digits, so Go's result is still the correctly rounded value.
    sign = text[0] if text[0] in "+-" else ""
    padded = sign + "0" * (zeros + 801) + text[len(sign) :]
    expected = float(text)
    if math.isinf(expected):
        with pytest.raises(GoFloatRangeError):
            parse_go_float(padded)
    else:
        assert_same_float(parse_go_float(padded), expected)


def _digit_gaps(text: str) -> list[int]:
    return [i for i in range(1, len(text)) if text[i - 1].isdigit() and text[i].isdigit()]


@given(plain_decimals(), st.data())
def test_underscore_between_digits_changes_nothing(text: str, data: st.DataObject) -> None:
    gaps = _digit_gaps(text)
    if not gaps:
        text = text + "0" if text[-1].isdigit() else text + "00"
        gaps = _digit_gaps(text)
    i = data.draw(st.sampled_from(gaps))
    with_underscore = text[:i] + "_" + text[i:]
    try:
        expected = parse_go_float(text)
    except GoFloatRangeError:
        with pytest.raises(GoFloatRangeError):
            parse_go_float(with_underscore)
        return
    assert_same_float(parse_go_float(with_underscore), expected)


@given(plain_decimals(), st.data())
def test_underscore_not_between_digits_is_syntax_error(text: str, data: st.DataObject) -> None:
    bad = [i for i in range(len(text) + 1) if not (0 < i < len(text) and text[i - 1 : i + 1].isdigit())]
    i = data.draw(st.sampled_from(bad))
    with pytest.raises(GoFloatSyntaxError):
        parse_go_float(text[:i] + "_" + text[i:])


@given(st.integers(1, 2**64 - 1), st.integers(-348, 347))
@settings(max_examples=500)
def test_eisel_lemire_is_correct_whenever_it_answers(mantissa: int, exp10: int) -> None:
    got = _eisel_lemire64(mantissa, exp10, False)
    if got is not None:
        assert_same_float(got, float(f"{mantissa}e{exp10}"))


@given(st.text(max_size=12))
def test_arbitrary_unicode_never_escapes_go_errors(text: str) -> None:
    try:
        value = parse_go_float(text)
    except GoFloatError:
        return
    # Anything accepted is pure ASCII and has no whitespace.
    assert text.isascii()
    assert not re.search(r"\s", text)
    assert isinstance(value, float)
