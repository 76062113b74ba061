"""Tests for overhead_service.model.quantity: Kubernetes quantities as k8s.io/apimachinery v0.34 does them.

Every expected value here was worked out by hand from the Go sources
(``k8s.io/apimachinery/pkg/api/resource/{quantity,amount,math,scale_int,suffix}.go`` and
``gopkg.in/inf.v0``), never by running the module under test:

* ``ParseQuantity`` keeps a value in the int64 form when Go's precision estimate allows it
  (decimal: ``18 - len(num) - len(denom) >= 0`` and the scale is not finer than nano; binary:
  no fraction and ``15 - len(num) - int(exp*3/10) - 1 >= 0``); otherwise it builds an ``inf.Dec``,
  rounds it away from zero to nano, caps binary values at 2^63-1 and turns binary values in
  (0, 1) into DecimalSI.
* ``String()`` is ``CanonicalizeBytes``; ``Add``, ``Value``/``ScaledValue`` follow ``amount.go``,
  ``math.go`` and ``scale_int.go`` including their int64 wraparound.

The hypothesis properties use an independent ``decimal.Decimal`` model of the same rules.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP, Context, Decimal, localcontext
from fractions import Fraction
from typing import NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overhead_service import jsonio
from overhead_service.errors import InexactNumber, InvalidQuantity
from overhead_service.model.quantity import (
    KILO,
    MAX_INT64,
    MIN_INT64,
    Format,
    Quantity,
    go_int_div,
    parse_quantity,
    quantity_from_json,
    wrap_int64,
)

B = Format.BINARY_SI
D = Format.DECIMAL_SI
X = Format.DECIMAL_EXPONENT
NONE = Format.NONE
F = Fraction
MAX = (1 << 63) - 1
MIN = -(1 << 63)


def value_of(q: Quantity) -> Fraction:
    return Fraction(*q.as_fraction())


def go_div(a: int, b: int) -> int:
    """Go's integer division: truncates toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b > 0) else -quotient


def test_constants() -> None:
    assert (MAX_INT64, MIN_INT64, KILO) == (MAX, MIN, 3)


@pytest.mark.parametrize(
    ("value", "wrapped"),
    [
        (0, 0),
        (MAX, MAX),
        (MIN, MIN),
        (MAX + 1, MIN),
        (MIN - 1, MAX),
        (2**64, 0),
        (2**64 + 5, 5),
        (10**19, 10**19 - 2**64),
        (-(10**19), 2**64 - 10**19),
        (9223372036854776 * 1000, -9223372036854775616),
    ],
)
def test_wrap_int64(value: int, wrapped: int) -> None:
    assert wrap_int64(value) == wrapped


# --------------------------------------------------------------------------------------------------
# Parsing: value, format, and which of Go's two forms holds the result.
# --------------------------------------------------------------------------------------------------

PARSE_CASES = [
    # decimal SI suffixes
    ("0", 0, D, False),
    ("1", 1, D, False),
    ("1n", F(1, 10**9), D, False),
    ("1u", F(1, 10**6), D, False),
    ("1m", F(1, 1000), D, False),
    ("1k", 1000, D, False),
    ("1M", 10**6, D, False),
    ("1G", 10**9, D, False),
    ("1T", 10**12, D, False),
    ("1P", 10**15, D, False),
    ("1E", 10**18, D, False),
    ("5E", 5 * 10**18, D, False),
    ("10E", 10**19, D, False),  # int64Amount{10, 18}: the int64 form may hold more than int64
    ("305M", 305 * 10**6, D, False),
    ("100u", F(1, 10**4), D, False),
    # binary SI suffixes; precision 15-len(num)-int(exp*3/10)-1 decides the form
    ("1Ki", 1024, B, False),
    ("1Mi", 2**20, B, False),
    ("1Gi", 2**30, B, False),
    ("1Ti", 2**40, B, False),
    ("1Pi", 2**50, B, True),
    ("1Ei", 2**60, B, True),
    ("99Ti", 99 * 2**40, B, False),
    ("100Ti", 100 * 2**40, B, True),
    ("12345678901Ki", 12641975194624, B, False),
    ("123456789012Ki", 123456789012 * 1024, B, True),
    ("288Mi", 301989888, B, False),
    ("7Ei", 8070450532247928832, B, True),
    # binary values are capped at 2^63-1, decimal ones are not
    ("8Ei", MAX, B, True),
    ("9Ei", MAX, B, True),
    ("-8Ei", -MAX, B, True),
    ("-9Ei", -MAX, B, True),
    ("9223372036854775807", MAX, D, True),
    ("99999999999999999999", 10**20 - 1, D, True),
    # exponents
    ("1e3", 1000, X, False),
    ("1E3", 1000, X, False),
    ("1e+3", 1000, X, False),
    ("1e-3", F(1, 1000), X, False),
    ("2e9", 2 * 10**9, X, False),
    ("5E8", 5 * 10**8, X, False),
    ("3E+9", 3 * 10**9, X, False),
    ("2e-3", F(2, 1000), X, False),
    ("1.5e3", 1500, X, False),
    ("1e0", 1, X, False),
    ("1e-9", F(1, 10**9), X, False),
    ("1E19", 10**19, X, False),
    ("12e-1", F(6, 5), X, False),
    ("1e-10", F(1, 10**9), X, True),  # finer than nano: inf.Dec, rounded up
    ("-1e-10", -F(1, 10**9), X, True),
    # fractions
    ("1.5", F(3, 2), D, False),
    ("0.1", F(1, 10), D, False),
    ("1.", 1, D, False),
    (".5", F(1, 2), D, False),
    ("1.5k", 1500, D, False),
    ("0.5G", 5 * 10**8, D, False),
    ("1.5Gi", 1610612736, B, True),
    (".5Gi", 2**29, B, True),
    ("5.Gi", 5368709120, B, False),  # no fraction digits: the binary fast path
    ("0.1Ki", F(512, 5), B, True),  # 102.4 is >= 1, so it stays BinarySI
    ("0.75Ti", 3 * 2**38, B, True),
    ("0.5Ki", 512, B, True),
    ("1.0001Ki", F(10241024, 10**4), B, True),
    # binary values in (0, 1) become DecimalSI (the sign is set aside for the test)
    ("0.0001Ki", F(1024, 10**4), D, True),
    ("-0.0001Ki", -F(1024, 10**4), D, True),
    ("0.0Ki", 0, B, True),
    # signs
    ("+1Gi", 2**30, B, False),
    ("-1Gi", -(2**30), B, False),
    ("-1.5", -F(3, 2), D, False),
    ("+0.5", F(1, 2), D, False),
    ("-0", 0, D, False),
    ("0Gi", 0, B, False),
    # leading zeros do not count toward the precision estimate
    ("007", 7, D, False),
    ("00.5", F(1, 2), D, False),
    ("0001.5Gi", 1610612736, B, True),
    ("0" * 23 + "1", 1, D, False),
    ("0" * 16 + "12345678901Ki", 12641975194624, B, False),
    # nano is the finest scale; anything finer rounds up, away from zero
    ("0.000000001", F(1, 10**9), D, False),
    ("0.1n", F(1, 10**9), D, True),
    ("-0.1n", -F(1, 10**9), D, True),
    ("0.0000000001", F(1, 10**9), D, True),
    ("1.0000000001", F(1000000001, 10**9), D, True),
    ("0.0000000000", 0, D, True),
    # the decimal precision estimate: 18 digits fit, 19 do not
    ("123456789012345678", 123456789012345678, D, False),
    ("1234567890123456789", 1234567890123456789, D, True),
    ("12345678901234567.8", F(123456789012345678, 10), D, False),
    ("1234567890.123456789", F(1234567890123456789, 10**9), D, True),
    ("1" + "0" * 99, 10**99, D, True),  # 100 characters is still accepted
]


@pytest.mark.parametrize(("text", "value", "fmt", "big"), PARSE_CASES)
def test_parse_quantity(text: str, value: Fraction | int, fmt: Format, big: bool) -> None:
    q = parse_quantity(text)
    assert value_of(q) == value
    assert q.format is fmt
    assert q.big is big


@pytest.mark.parametrize(
    ("raw", "value", "fmt", "big"),
    [
        (1073741824, 2**30, D, False),
        (0, 0, D, False),
        (-5, -5, D, False),
        (8, 8, D, False),
        (10**19, 10**19, D, True),
        (Decimal("1.5"), F(3, 2), D, False),
        (Decimal("-0.5"), -F(1, 2), D, False),
        (Decimal("1E+3"), 1000, X, False),
        (Decimal("1.5E+9"), 1500000000, X, False),
        (" 1Gi ", 2**30, B, False),
        ("\t512Mi\n", 512 * 2**20, B, False),
        ("\r\v\f1Gi", 2**30, B, False),
        ("\u00a01Gi\u0085", 2**30, B, False),  # unicode.IsSpace: U+00A0, U+0085
        ("\u20031Gi\u3000", 2**30, B, False),  # White_Space: U+2003, U+3000
        ("1Gi", 2**30, B, False),
        ("1.5Gi", 1610612736, B, True),
    ],
)
def test_quantity_from_json(raw: object, value: Fraction | int, fmt: Format, big: bool) -> None:
    q = quantity_from_json(raw)
    assert value_of(q) == value
    assert q.format is fmt
    assert q.big is big


@pytest.mark.parametrize(
    ("document", "value", "fmt"),
    [
        # Go's UnmarshalJSON parses the raw JSON text of a number, so its spelling picks the format.
        ('{"q": 1073741824}', 2**30, D),
        ('{"q": 1.5}', F(3, 2), D),
        ('{"q": -0.5}', -F(1, 2), D),
        ('{"q": 1e3}', 1000, X),
        ('{"q": 1.5e9}', 1500000000, X),
        ('{"q": 0.0000001}', F(1, 10**7), D),
        ('{"q": 12e-1}', F(6, 5), X),
        ('{"q": 100e0}', 100, X),
    ],
)
def test_quantity_from_json_number_keeps_go_format(document: str, value: Fraction | int, fmt: Format) -> None:
    q = quantity_from_json(jsonio.loads_exact(document)["q"])
    assert value_of(q) == value
    assert q.format is fmt


ILLEGAL_TEXTS = [
    "",
    "abc",
    "1.5.5",
    "1KMi",
    "Mi",
    "Ki",
    "1e",
    "1ee5",
    "1e+",
    "e3",
    "+",
    "-",
    ".",
    "1 Gi",
    "1Gb",
    "--1",
    "+-1",
    "1" * 101,
    "1i",
    "1K",
    "1Ki5",
    "1m5",
    "1e3m",
    "1e1.5",
    " 1Gi",
    "1Gi ",
    "1Gi\n",
    "0x10",
    "1_000",
    "1,5",
    "\u0661",  # ARABIC-INDIC DIGIT ONE is not [0-9]
    "\uff11Gi",  # FULLWIDTH DIGIT ONE
]


@pytest.mark.parametrize("text", ILLEGAL_TEXTS)
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(InvalidQuantity) as raised:
        parse_quantity(text)
    assert raised.value.path == ""


@pytest.mark.parametrize(
    "raw",
    [
        True,
        False,
        None,
        [],
        ["1Gi"],
        {},
        {"memory": "1Gi"},
        1.5,
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "",
        "   ",
        "abc",
        "1 Gi",
        # strings.TrimSpace trims only \t \n \v \f \r and space in ASCII; Python's str.strip()
        # also strips the information separators U+001C..U+001F, which Go leaves in place.
        "\x1c1Gi",
        "\x1d1Gi",
        "\x1e1Gi",
        "1Gi\x1f",
    ],
)
def test_quantity_from_json_rejects(raw: object) -> None:
    with pytest.raises(InvalidQuantity):
        quantity_from_json(raw)


def test_invalid_quantity_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_quantity("1Gb")


# --------------------------------------------------------------------------------------------------
# String(): CanonicalizeBytes
# --------------------------------------------------------------------------------------------------

STR_CASES = [
    (301989888, 0, B, "288Mi"),
    (1073741824, 0, B, "1Gi"),
    (452984888, 0, B, "452984888"),
    (2785280000, 0, B, "2720000Ki"),
    (304087040, 0, D, "304087040"),
    (305000000, 0, D, "305M"),
    (304100000, 0, D, "304100k"),
    (10**9, 0, D, "1G"),
    (3019898885, -1, D, "301989888500m"),
    (786432000, 0, D, "786432k"),
    (786432000, 0, B, "750Mi"),
    (10**12, 0, D, "1T"),
    (1099511627776, 0, B, "1Ti"),
    # zero prints "0" whatever the format and scale
    (0, 0, D, "0"),
    (0, 0, B, "0"),
    (0, 0, X, "0"),
    (0, 0, NONE, "0"),
    (0, 3, B, "0"),
    (0, -9, D, "0"),
    # negatives
    (-301989888, 0, B, "-288Mi"),
    (-305000000, 0, D, "-305M"),
    (-15, -1, D, "-1500m"),
    (-1024, 0, B, "-1Ki"),
    (-1023, 0, B, "-1023"),
    (-2048, 0, B, "-2Ki"),
    (-960, 0, D, "-960"),
    (-18014398207492095, 0, D, "-18014398207492095"),
    # BinarySI in (-1024, 1024) prints as DecimalSI
    (1023, 0, B, "1023"),
    (1000, 0, B, "1k"),
    (-1000, 0, B, "-1k"),
    (512, 0, B, "512"),
    (5, -1, B, "500m"),
    (1, 0, B, "1"),
    (1, 3, B, "1k"),
    # from 1024 on, BinarySI divides by 1024 while it can
    (1024, 0, B, "1Ki"),
    (1025, 0, B, "1025"),
    (2000, 0, B, "2000"),
    (1536, 0, B, "1536"),
    (1000000, 0, B, "1000000"),
    (3, 6, B, "3000000"),
    (1048576, 3, B, "1000Mi"),
    # non-integer BinarySI prints as DecimalSI
    (15365, -1, B, "1536500m"),
    (10245, -1, B, "1024500m"),
    (10241024, -4, B, "1024102400u"),
    # DecimalExponent, and Go's zero-value format (printed as DecimalExponent)
    (1, 3, X, "1e3"),
    (10**4, 0, X, "10e3"),
    (15, 2, X, "1500"),
    (1, -3, X, "1e-3"),
    (2, -4, X, "200e-6"),
    (1, 0, X, "1"),
    (10**18, 0, X, "1e18"),
    (10**21, 0, X, "1e21"),
    (-1, 3, X, "-1e3"),
    (1000, 0, NONE, "1e3"),
    (5, 0, NONE, "5"),
    # exponents outside n..E print with no suffix at all
    (10**21, 0, D, "1"),
    (10**22, 0, D, "10"),
    (15 * 10**20, 0, D, "1500E"),
    (10**19, 0, D, "10E"),
    (1, -12, D, "1"),
    (1, -10, D, "100"),
    (2**70, 0, B, "1"),
    (3 * 2**70, 0, B, "3"),
    (2**64, 0, B, "16Ei"),
    (2**64, 0, D, "18446744073709551616"),
    (MAX, 0, B, "9223372036854775807"),
]


@pytest.mark.parametrize(("unscaled", "exp", "fmt", "text"), STR_CASES)
def test_str(unscaled: int, exp: int, fmt: Format, text: str) -> None:
    assert str(Quantity(unscaled, exp, fmt)) == text
    # The form (int64 or inf.Dec) never changes the text.
    assert str(Quantity(unscaled, exp, fmt, big=True)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1.5Gi", "1536Mi"),
        ("1.5", "1500m"),
        ("0.1Ki", "102400m"),
        ("8Ei", "9223372036854775807"),
        ("9Ei", "9223372036854775807"),
        ("7Ei", "7Ei"),
        ("1Ei", "1Ei"),
        ("0.1n", "1n"),
        ("1e3", "1e3"),
        ("1000", "1k"),
        ("1024", "1024"),
        ("1Ki", "1Ki"),
        ("2048Ki", "2Mi"),
        ("1536Ki", "1536Ki"),
        ("1024Mi", "1Gi"),
        ("0.5Ki", "512"),
        ("0.5Gi", "512Mi"),
        ("-0.5Gi", "-512Mi"),
        ("0.0001Ki", "102400u"),
        ("12e-1", "1200e-3"),
        ("1.5e3", "1500"),
        ("1E19", "10e18"),
        ("10E", "10E"),
        ("1000E", "1"),  # 10^21 DecimalSI: Go's String() drops the exponent
        ("100m", "100m"),
        ("0.100", "100m"),
        ("1000m", "1"),
        ("1000000u", "1"),
        ("0Gi", "0"),
        ("-0.0", "0"),
        ("1e-10", "1e-9"),
        ("1.0000000001", "1000000001n"),
        ("+1Gi", "1Gi"),
        ("007", "7"),
        ("1.500", "1500m"),
        ("5.Gi", "5Gi"),
        ("1E3", "1e3"),
    ],
)
def test_canonical_form_of_parsed(text: str, canonical: str) -> None:
    """``str()`` is ``CanonicalizeBytes``.

    Go's ``String()`` of a *freshly parsed* quantity may instead return the input text verbatim
    (ParseQuantity keeps ``s: str`` when it judges the input canonical: ``"+1Gi"``, ``"007"``,
    ``"1.500"``, ``"5.Gi"``, ``"1E3"``).  Every quantity the service prints comes out of ``Add``,
    which clears that cache, so only the canonical form matters here.
    """
    assert str(parse_quantity(text)) == canonical


def test_to_json() -> None:
    assert Quantity(3019898885, -1, D).to_json() == {"quantity": "301989888500m", "bytes": 301989889}
    assert parse_quantity("288Mi").to_json() == {"quantity": "288Mi", "bytes": 301989888}


# --------------------------------------------------------------------------------------------------
# Add
# --------------------------------------------------------------------------------------------------

ADD_CASES = [
    # a zero receiver takes the operand's format, even a zero operand's
    (Quantity(0, 3, D), Quantity(26214400, 0, B), 26214400, B, False),
    (Quantity(0, 0, D), Quantity(0, 0, B), 0, B, False),
    (Quantity(0, 0, B), Quantity(0, 0, D), 0, D, False),
    (Quantity(0, 0, NONE), Quantity(5, 0, D), 5, D, False),
    (Quantity(0, 0, D), Quantity(0, 0, NONE), 0, NONE, False),
    (Quantity(0, 0, D), parse_quantity("1.5Gi"), 1610612736, B, True),
    (Quantity(0, 0, D, big=True), Quantity(1, 0, B), 1, B, True),
    # a non-zero receiver keeps its own
    (Quantity(5, 0, D), Quantity(1024, 0, B), 1029, D, False),
    (Quantity(1024, 0, B), Quantity(5, 0, D), 1029, B, False),
    (Quantity(-5, 0, B), Quantity(5, 0, D), 0, B, False),
    (parse_quantity("1.5Gi"), Quantity(1, 0, D), 1610612737, B, True),
    # scales are aligned on the finer one
    (Quantity(1, 0), Quantity(5, 3), 5001, D, False),
    (Quantity(15, -1), Quantity(1, 3), F(10015, 10), D, False),
    (Quantity(3019898880, -1, B), Quantity(5, -1, D), F(3019898885, 10), B, False),
    # int64 overflow switches to the exact decimal form
    (Quantity(MAX - 1), Quantity(1), MAX, D, False),
    (Quantity(MAX), Quantity(1), 2**63, D, True),
    (Quantity(MIN), Quantity(-1), MIN - 1, D, True),
    (Quantity(MIN), Quantity(MIN), -(2**64), D, True),
    (Quantity(1, 0), Quantity(10**16, 3), 10**19 + 1, D, True),  # 10^16 * 1000 overflows while aligning
    (Quantity(10**18, 0), Quantity(9, 18), 10**19, D, True),
    (Quantity(MAX, 0, B), Quantity(MAX, 0, D), 2 * MAX, B, True),
]


@pytest.mark.parametrize(("a", "b", "value", "fmt", "big"), ADD_CASES)
def test_add(a: Quantity, b: Quantity, value: Fraction | int, fmt: Format, big: bool) -> None:
    before = (a.unscaled, a.exp, a.format, a.big)
    total = a.add(b)
    assert value_of(total) == value
    assert total.format is fmt
    assert total.big is big
    assert (a.unscaled, a.exp, a.format, a.big) == before  # quantities are immutable


SUB_CASES = [
    # KubeVirt's hugepages step: NewScaledQuantity(0, Kilo) + requests - guest
    (Quantity(1 << 30, 0, B), parse_quantity("512Mi"), 512 << 20, B, False),
    (Quantity(5, 0, D), Quantity(1024, 0, B), -1019, D, False),
    # a zero receiver takes the operand's format (IsZero, in either form)
    (Quantity(0, 3, D), Quantity(7, 0, B), -7, B, False),
    (Quantity(0, 0, D, big=True), Quantity(7, 0, B), -7, B, True),
    (Quantity(0, 0, NONE), Quantity(0, 0, B), 0, B, False),
    # scales aligned on the finer one; an inf.Dec operand makes the result inf.Dec
    (Quantity(1, 3), Quantity(5, -1), F(1999, 2), D, False),  # 1000 - 0.5
    (Quantity(1 << 30, 0, B), parse_quantity("1.5Gi"), -(1 << 29), B, True),
    # int64 overflow leaves the int64 form, exactly
    (Quantity(MIN), Quantity(1), MIN - 1, D, True),
    (Quantity(MAX), Quantity(-1), MAX + 1, D, True),
    # Go negates the operand in int64: -MIN wraps to MIN, so MIN is *added* when that fits
    (Quantity(1), Quantity(MIN), 1 + MIN, D, False),
    (Quantity(-1), Quantity(MIN), F(-1) - MIN, D, True),  # the add overflows: exact decimal
]


@pytest.mark.parametrize(("a", "b", "value", "fmt", "big"), SUB_CASES)
def test_sub(a: Quantity, b: Quantity, value: Fraction | int, fmt: Format, big: bool) -> None:
    before = (a.unscaled, a.exp, a.format, a.big)
    difference = a.sub(b)
    assert value_of(difference) == value
    assert difference.format is fmt
    assert difference.big is big
    assert (a.unscaled, a.exp, a.format, a.big) == before


def test_add_format_follows_the_receiver_at_the_moment_of_the_add() -> None:
    q = Quantity.scaled(0, KILO)
    assert q.format is D
    q = q.add(parse_quantity("1Gi"))
    assert q.format is B
    q = q.add(parse_quantity("-1Gi"))
    assert (q.is_zero(), q.format) == (True, B)
    q = q.add(Quantity(5, 0, D))  # zero again: takes the operand's format
    assert (value_of(q), q.format) == (Fraction(5), D)


@pytest.mark.parametrize(
    ("memory", "text", "fmt"),
    [
        # upstream's accumulator: NewScaledQuantity(0, Kilo) + pagetables (DecimalSI) + 25Mi ...
        (None, "288Mi", B),
        ("1Gi", "304087040", D),
    ],
)
def test_add_reproduces_upstream_accumulator_format(memory: str | None, text: str, fmt: Format) -> None:
    overhead = Quantity.scaled(0, KILO)
    pagetables = 0
    if memory is not None:
        pagetables = go_div(Quantity.scaled(parse_quantity(memory).scaled_value(KILO), KILO).value(), 512)
    overhead = overhead.add(Quantity.from_int(pagetables, D))
    for constant in ("25Mi", "100Mi", "25Mi", "40Mi", "50Mi", "8Mi", "8Mi", "32Mi"):
        overhead = overhead.add(parse_quantity(constant))
    assert str(overhead) == text
    assert overhead.format is fmt


# --------------------------------------------------------------------------------------------------
# Value / ScaledValue
# --------------------------------------------------------------------------------------------------

SCALED_CASES = [
    # int64 form: negativeScaleInt64 rounds away from zero
    ("1Gi", 3, 1073742),
    ("1Gi", 0, 1073741824),
    ("1Gi", 9, 2),
    ("-1Gi", 9, -2),
    ("1.5", 0, 2),
    ("-1.5", 0, -2),
    ("500m", 0, 1),
    ("-500m", 0, -1),
    ("1500m", 0, 2),
    ("2.5", 0, 3),
    ("1.999", 0, 2),
    ("1n", 0, 1),
    ("-1n", 0, -1),
    ("1n", 3, 1),
    ("-1n", 3, -1),
    ("0", 0, 0),
    ("1001", 3, 2),
    ("-1001", 3, -2),
    ("1000", 3, 1),
    ("1", 3, 1),
    ("1k", -3, 10**6),
    ("1.5", -3, 1500),
    # int64 form, scaling up: positiveScaleInt64
    ("1k", 0, 1000),
    ("1E", 0, 10**18),
    ("9E", 0, 9 * 10**18),
    ("1E19", 3, 10**16),
    ("10E", 0, 0),  # the generic loop returns 0 on overflow
    ("1E19", 0, 0),
    ("10000000T", 0, 0),
    ("10000000000G", 0, 10**19 - 2**64),  # x10^9 returns the wrapped product
    ("10000000000000M", 0, 10**19 - 2**64),  # x10^6 likewise
    ("10000000000000000k", 0, 10**19 - 2**64),  # x1000 likewise
    ("999999999999999999e1", 0, 9999999999999999990 - 2**64),  # x10 likewise
    # inf.Dec form
    ("8Ei", 0, MAX),
    ("9Ei", 3, 9223372036854776),
    ("8Ei", -3, -1000),  # Int64() * 1000 wraps
    ("1.5Gi", 0, 1610612736),
    ("1.5Gi", 3, 1610613),
    ("0.1Ki", 0, 103),
    ("1e-10", 0, 1),
    ("1Pi", 0, 2**50),
    ("1Pi", 3, 1125899906843),
    ("7Ei", 0, 7 * 2**60),
    ("-1.5Gi", 0, -1610612736),
    # negative fractions in inf.Dec form: the fast path truncates, then adds one
    ("-0.0001Ki", 0, 1),
    ("-1.0001Ki", 0, -1023),
    ("-0.1n", 0, 1),
    # big.Int.Int64() keeps the low 64 bits of an unscaled value that does not fit
    ("-1Ei", 0, 0),
    ("-1Pi", 0, -2882303760),
    ("9223372036854775807", 0, MAX),
    ("99999999999999999999", 0, 7766279631452241919),
    ("9223372036854775807.5", 0, MIN),  # the slow path's result.Int64() + 1 wraps
]


@pytest.mark.parametrize(("text", "scale", "expected"), SCALED_CASES)
def test_scaled_value(text: str, scale: int, expected: int) -> None:
    assert parse_quantity(text).scaled_value(scale) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Gi", 1073741824), ("1.5", 2), ("-1.5", -2), ("-0.0001Ki", 1), ("8Ei", MAX), ("0", 0)],
)
def test_value_is_scaled_value_zero(text: str, expected: int) -> None:
    assert parse_quantity(text).value() == expected


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (Quantity(5, -1, D, big=True), 1),
        (Quantity(-15, -1, D, big=True), 0),  # trunc(-1.5) + 1
        (Quantity(-15, -1, D), -2),  # the int64 form rounds away from zero
        (Quantity(-15, -20, D, big=True), 0),  # slow path: floor + 1
        (Quantity(15, -20, D, big=True), 1),
        (Quantity(10**19 + 1, 0, D, big=True), 10**19 + 1 - 2**64),
        (Quantity(7, 20, D, big=True), wrap_int64(7 * MIN)),  # math.Pow10(20) as int64 on amd64
    ],
)
def test_value_of_constructed(quantity: Quantity, expected: int) -> None:
    assert quantity.value() == expected


@pytest.mark.parametrize(
    ("memory", "kilo", "wrapped", "pagetables"),
    [
        ("1Gi", 1073742, 1073742000, 2097152),
        ("511", 1, 1000, 1),
        ("1", 1, 1000, 1),
        ("0", 0, 0, 0),
        # the memform-overflow vectors: 8Ei/9Ei are capped at 2^63-1, then x1000 wraps
        ("8Ei", 9223372036854776, -9223372036854775616, -18014398509481983),
        ("9Ei", 9223372036854776, -9223372036854775616, -18014398509481983),
        ("1E19", 10**16, -8446744073709551616, -16497547018963968),
    ],
)
def test_page_table_arithmetic(memory: str, kilo: int, wrapped: int, pagetables: int) -> None:
    """``NewScaledQuantity(R.ScaledValue(Kilo), Kilo).Value() / 512`` as upstream computes it."""
    k = parse_quantity(memory).scaled_value(KILO)
    assert k == kilo
    scaled = Quantity.scaled(k, KILO)
    assert scaled.format is D
    assert scaled.value() == wrapped
    assert go_div(scaled.value(), 512) == pagetables


def test_constructors() -> None:
    assert (Quantity.from_int(7).format, Quantity.from_int(7, B).format) == (D, B)
    q = Quantity.scaled(5, KILO)
    assert (value_of(q), q.format, q.big) == (Fraction(5000), D, False)
    assert Quantity(MAX + 1).big is True


@pytest.mark.parametrize(
    ("a", "b", "cmp"),
    [
        ("1Gi", "1073741824", 0),
        ("1", "1000m", 0),
        ("1.5Gi", "1536Mi", 0),
        ("1G", "1Gi", -1),
        ("8Ei", "9Ei", 0),
        ("-1", "1n", -1),
        ("10E", "9E", 1),
    ],
)
def test_cmp_and_equality(a: str, b: str, cmp: int) -> None:
    qa, qb = parse_quantity(a), parse_quantity(b)
    assert qa.cmp(qb) == cmp
    assert qb.cmp(qa) == -cmp
    assert (qa == qb) is (cmp == 0)
    if cmp == 0:
        assert hash(qa) == hash(qb)


# --------------------------------------------------------------------------------------------------
# Properties, against an independent Decimal model of Go's parser
# --------------------------------------------------------------------------------------------------

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_CTX = Context(prec=400)
_NANO = Decimal("1e-9")


class Case(NamedTuple):
    text: str
    value: Decimal  # the exact value Go ends up with
    fmt: Format
    big: bool  # inf.Dec form
    i64: tuple[int, int] | None  # Go's int64Amount{value, scale} when not big


@st.composite
def quantity_texts(draw: st.DrawFn) -> Case:
    """A legal quantity string drawn from the grammar, with what Go's ParseQuantity makes of it."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    zeros = draw(st.sampled_from(["", "", "", "0", "000"]))
    intd = zeros + draw(st.text("0123456789", max_size=20))
    has_dot = draw(st.booleans())
    fracd = draw(st.text("0123456789", max_size=12)) if has_dot else ""
    assume(intd or fracd)
    kind = draw(st.sampled_from(["decimal", "binary", "exponent"]))
    if kind == "decimal":
        suffix = draw(st.sampled_from(list(_DECIMAL)))
    elif kind == "binary":
        suffix = draw(st.sampled_from(list(_BINARY)))
    else:
        exponent = draw(st.integers(-30, 30))
        plus = draw(st.sampled_from(["", "+"])) if exponent >= 0 else ""
        suffix = draw(st.sampled_from(["e", "E"])) + plus + str(exponent)
    text = sign + intd + ("." + fracd if has_dot else "") + suffix

    negative = sign == "-"
    num = intd.lstrip("0") or "0"  # parseQuantityString strips leading zeros
    with localcontext(_CTX):
        magnitude = Decimal(f"{intd or '0'}.{fracd or '0'}")
        if kind == "binary":
            exp, fmt = _BINARY[suffix], B
            magnitude *= Decimal(2) ** exp
            precision = 15 - len(num) - int(exp * 3 / 10) - 1 if not fracd else -1
            scale, mantissa = 0, 2**exp
        else:
            exp = _DECIMAL[suffix] if kind == "decimal" else int(suffix[1:])
            fmt = D if kind == "decimal" else X
            magnitude = magnitude.scaleb(exp)
            precision = 18 - (len(num) + len(fracd))
            scale, mantissa = exp - len(fracd), 1
        i64 = None
        if precision >= 0 and scale >= -9 and int(num + fracd) * mantissa <= MAX:
            unscaled = int(num + fracd) * mantissa
            i64 = (-unscaled if negative else unscaled, scale)
        else:
            magnitude = magnitude.quantize(_NANO, rounding=ROUND_UP)  # Round(Nano, RoundUp)
            if fmt is B and magnitude > MAX:
                magnitude = Decimal(MAX)
            if fmt is B and 0 < magnitude < 1:
                fmt = D
        value = -magnitude if negative else magnitude
    return Case(text, value, fmt, i64 is None, i64)


def _decimal(q: Quantity) -> Decimal:
    num, den = q.as_fraction()
    with localcontext(_CTX):
        return Decimal(num) / Decimal(den)


def _stripped_exponent(value: Decimal) -> int:
    """The exponent Go's canonical printer starts from (all trailing zeros moved into it)."""
    return int(value.normalize(_CTX).as_tuple().exponent)


def _go_int64_add_ok(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether Go's int64Amount.Add succeeds (amount.go): aligning and summing without overflow."""
    (av, ae), (bv, be) = a, b
    if av == 0 or bv == 0:
        return True
    if ae > be:
        av, ae = av * 10 ** (ae - be), be
    elif be > ae:
        bv, be = bv * 10 ** (be - ae), ae
    return all(MIN <= v <= MAX for v in (av, bv, av + bv))


@settings(max_examples=200, deadline=None)
@given(quantity_texts())
def test_property_parse_matches_model(case: Case) -> None:
    q = parse_quantity(case.text)
    assert _decimal(q) == case.value
    assert q.format is case.fmt
    assert q.big is case.big


@settings(max_examples=200, deadline=None)
@given(quantity_texts())
def test_property_string_round_trip(case: Case) -> None:
    value, fmt = case.value, case.fmt
    q = parse_quantity(case.text)
    integral = value == value.to_integral_value()
    printed_as_decimal = fmt is D or (fmt is B and (not integral or abs(value) < 1024))
    # Go's String() drops the suffix of DecimalSI exponents above E: those do not round-trip in Go.
    assume(not (printed_as_decimal and value != 0 and _stripped_exponent(value) >= 21))
    again = parse_quantity(str(q))
    assert again == q
    assert _decimal(again) == value
    assert str(again) == str(q)
    if value == 0:
        assert again.format is D  # "0"
    elif fmt is D:
        assert again.format is D
    elif fmt is B:
        # Only a BinarySI string that kept a binary suffix parses back as BinarySI.
        assert again.format is (B if not printed_as_decimal and int(value) % 1024 == 0 else D)
    else:
        assert again.format is (X if "e" in str(q) else D)


@settings(max_examples=200, deadline=None)
@given(quantity_texts(), quantity_texts())
def test_property_add_is_exact(a: Case, b: Case) -> None:
    total = parse_quantity(a.text).add(parse_quantity(b.text))
    with localcontext(_CTX):
        assert _decimal(total) == a.value + b.value
    assert total.format is (b.fmt if a.value == 0 else a.fmt)
    if a.i64 is not None and b.i64 is not None and _go_int64_add_ok(a.i64, b.i64):
        assert total.big is False
    else:
        assert total.big is True


@settings(max_examples=200, deadline=None)
@given(quantity_texts(), quantity_texts())
def test_property_sub_is_exact(a: Case, b: Case) -> None:
    difference = parse_quantity(a.text).sub(parse_quantity(b.text))
    with localcontext(_CTX):
        assert _decimal(difference) == a.value - b.value
    assert difference.format is (b.fmt if a.value == 0 else a.fmt)
    negated = (-b.i64[0], b.i64[1]) if b.i64 is not None else None
    if a.i64 is not None and negated is not None and _go_int64_add_ok(a.i64, negated):
        assert difference.big is False
    else:
        assert difference.big is True


@settings(max_examples=200, deadline=None)
@given(quantity_texts(), st.sampled_from([0, 3, -3, 6]))
def test_property_scaled_value(case: Case, scale: int) -> None:
    with localcontext(_CTX):
        scaled = case.value.scaleb(-scale)
        ceiling = int(scaled.to_integral_value(rounding=ROUND_UP))  # away from zero
        truncated = int(scaled.to_integral_value(rounding=ROUND_DOWN))
    q = parse_quantity(case.text)
    if not case.big or case.value >= 0:
        # int64 form, or a positive inf.Dec: ceil(value / 10^scale) away from zero.
        assume(MIN <= ceiling <= MAX)
        assert q.scaled_value(scale) == ceiling
    else:
        # Negative inf.Dec at nano scale: scaledValue's fast path truncates, then adds one for a
        # remainder; exact only while the unscaled nano value fits int64 (big.Int.Int64()).
        assume(case.value.scaleb(9) >= MIN and case.value != -MAX)
        assert q.scaled_value(scale) == truncated + (0 if scaled == truncated else 1)


def test_fast_decoding_hands_fractional_numbers_back_for_exact_decoding() -> None:
    """The hot-path decoder yields a float; the quantity parser refuses to guess its digits."""
    with pytest.raises(InexactNumber):
        quantity_from_json(jsonio.loads('{"q": 1.5e9}')["q"])
    assert quantity_from_json(jsonio.loads('{"q": 1500000000}')["q"]).value() == 1_500_000_000


@pytest.mark.parametrize(
    ("a", "b", "quotient"),
    [(7, 2, 3), (-7, 2, -3), (7, -2, -3), (-7, -2, 3), (0, 5, 0), (6, 3, 2), (-6, 3, -2)],
)
def test_go_int_div_truncates_toward_zero(a: int, b: int, quotient: int) -> None:
    assert go_int_div(a, b) == quotient


@given(st.integers(MIN_INT64, MAX_INT64), st.integers(MIN_INT64, MAX_INT64).filter(bool))
def test_go_int_div_matches_truncated_division(a: int, b: int) -> None:
    quotient = go_int_div(a, b)
    assert abs(quotient * b) <= abs(a) and abs(a) - abs(quotient * b) < abs(b)  # |remainder| < |b|
    assert quotient == 0 or (quotient > 0) == ((a > 0) == (b > 0))  # the sign of the true quotient
