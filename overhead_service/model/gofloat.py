"""Parse a string exactly as Go's ``strconv.ParseFloat(s, 64)`` does.

KubeVirt reads ``additionalGuestMemoryOverheadRatio`` with ``strconv.ParseFloat``.
To compute the same overhead as KubeVirt, byte for byte, this service has to
accept exactly the strings Go accepts, reject exactly the strings Go rejects, and
produce the same float64.

Python's ``float()`` is not enough for that. It accepts strings Go rejects:

* whitespace around the number (``float(" 1.5\\n")``), Unicode spaces included;
* non-ASCII digits (``float("١.٥")``);
* a sign before ``nan`` (``"+nan"``, ``"-nan"``).

``float.fromhex()`` is not enough for hex floats either. It accepts ``"0x1.8"``,
which Go rejects because a Go hex float needs a ``p`` exponent. It rejects
``"0x_1p0"``, which Go accepts. Python's ``float()`` rejects all hex floats.

Overflow is reported differently too. ``float("1e400")`` returns ``inf`` with no
error, while Go returns ±Inf together with ``ErrRange``.

Go's rules and results, from ``src/strconv/atof.go`` (``special``, ``readFloat``,
``atofHex``, ``atof64``, ``ParseFloat``) and ``src/strconv/atoi.go``
(``underscoreOK``):

* A sign may come before a number or ``inf``/``infinity``. It may not come before
  ``nan``. These three words are matched without regard to case.
* A number is decimal, with digits, an optional ``.``, and an optional
  ``e``/``E`` exponent. It may also be hexadecimal: ``0x``, hex digits, an
  optional ``.``, and a required ``p``/``P`` exponent whose digits are decimal.
  There must be at least one mantissa digit, and an exponent needs at least one
  digit right after its optional sign.
* An underscore must sit between two digits. After ``0x``, one may also sit
  between the prefix and a digit.
* Nothing may follow the number, whitespace included.
* The result is the correctly rounded float64 (ties to even). That includes
  subnormals and hex mantissas longer than 53 bits. A finite number that rounds
  past the largest float64 gives ±Inf with ``ErrRange``. A number too small for
  a float64 gives ±0 without an error.
* ``NaN`` is ``math.NaN()``, whose bits are ``0x7FF8000000000001``. The NaN
  returned here has those same bits.

Two Go quirks only matter for absurdly long input. Both are reproduced here:

* Exponent digits stop accumulating once the value reaches 10000. An exponent
  with more than five significant digits is therefore read as its first five
  digits: ``"1e123456"`` is read as ``1e12345`` (golang/go#42436).
* Go's exact fallback (``decimal.set``) keeps only 800 significant digits. When
  more than 800 significant digits come before the decimal point, it places
  the decimal point after digit 800 instead of after the real last integer
  digit. The fallback only runs when the Eisel-Lemire fast path gives up. That
  fast path is ported here so the same inputs take the fallback.
"""

from __future__ import annotations

import re
import struct
from functools import cache
from typing import Final

__all__ = [
    "GoFloatError",
    "GoFloatRangeError",
    "GoFloatSyntaxError",
    "parse_go_float",
]


_QUOTE_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _go_quote(s: str) -> str:
    """Quote ``s`` roughly like Go's ``strconv.Quote``; exact for ASCII input."""
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


class GoFloatError(ValueError):
    """``strconv.ParseFloat`` would return a non-nil error for ``input``.

    ``reason`` is ``"syntax"`` (Go's ``ErrSyntax``) or ``"range"`` (``ErrRange``).
    ``str(error)`` is the text of Go's ``*NumError``.
    """

    reason: str
    input: str

    def __init__(self, s: str, reason: str, message: str) -> None:
        self.input = s
        self.reason = reason
        super().__init__(f"strconv.ParseFloat: parsing {_go_quote(s)}: {message}")


class GoFloatSyntaxError(GoFloatError):
    """Go returns ``ErrSyntax``: ``input`` is not a Go float literal."""

    def __init__(self, s: str) -> None:
        super().__init__(s, "syntax", "invalid syntax")


class GoFloatRangeError(GoFloatError):
    """Go returns ``ErrRange``. ``value`` is the ±Inf that Go returns with the error."""

    value: float

    def __init__(self, s: str, value: float) -> None:
        super().__init__(s, "range", "value out of range")
        self.value = value


# Go's math.NaN() is Float64frombits(0x7FF8000000000001), not Python's 0x7FF8000000000000.
_GO_NAN: Final[float] = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
_INF: Final = float("inf")

# Everything below is ASCII-only on purpose: Go works on bytes, and any non-ASCII byte is
# a syntax error. Character classes are spelled out; no \d and no IGNORECASE, which would
# let Unicode digits or case folds (e.g. U+0131 dotless i) in.
_DEC_DIGITS: Final = r"[0-9]+(?:_[0-9]+)*"
_HEX_DIGITS: Final = r"[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*"
_FLOAT_RE: Final = re.compile(
    rf"""
    (?P<neg>[+-])?
    (?:
        (?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)
      | 0[xX]
        (?:
            _?(?P<hint>{_HEX_DIGITS})(?:\.(?P<hfrac>{_HEX_DIGITS})?)?
          | \.(?P<hfrac2>{_HEX_DIGITS})
        )
        [pP](?P<hexpsign>[+-])?(?P<hexp>{_DEC_DIGITS})
      | (?:
            (?P<int>{_DEC_DIGITS})(?:\.(?P<frac>{_DEC_DIGITS})?)?
          | \.(?P<frac2>{_DEC_DIGITS})
        )
        (?:[eE](?P<expsign>[+-])?(?P<exp>{_DEC_DIGITS}))?
    )
    | (?P<nan>[nN][aA][nN])
    """,
    re.VERBOSE | re.ASCII,
)

# The common case on the request path: a plain decimal with no underscores. When it matches
# and the input is short, float() gives Go's answer directly.
_PLAIN_DECIMAL_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

# Inputs at most this long never hit either long-input quirk. The 800-digit fallback bug
# needs more than 800 digits. A capped exponent (>= 100000 written, >= 10000 used) gives
# ±Inf or ±0 either way when fewer than ~9000 mantissa digits could offset it. So for
# these inputs, Go's result is just the correctly rounded value, which float() and
# float.fromhex() compute.
_SHORT: Final = 800

# decimal.set in Go keeps this many significant digits.
_GO_DECIMAL_DIGITS: Final = 800
_U64: Final = (1 << 64) - 1


def parse_go_float(s: str) -> float:
    """Return what Go's ``strconv.ParseFloat(s, 64)`` returns.

    Raises :class:`GoFloatSyntaxError` when Go returns ``ErrSyntax``. Raises
    :class:`GoFloatRangeError` when Go returns ``ErrRange``; its ``value`` is the ±Inf
    Go returns with the error.
    """
    if len(s) <= _SHORT and _PLAIN_DECIMAL_RE.fullmatch(s) is not None:
        value = float(s)
        if value in (_INF, -_INF):
            raise GoFloatRangeError(s, value)
        return value
    m = _FLOAT_RE.fullmatch(s)
    if m is None:
        raise GoFloatSyntaxError(s)
    if m["nan"] is not None:
        return _GO_NAN
    neg = m["neg"] == "-"
    if m["inf"] is not None:
        return -_INF if neg else _INF

    short = len(s) <= _SHORT
    clean = s.replace("_", "") if "_" in s else s
    if m["hexp"] is not None:
        if short:
            text = clean
        else:
            exp = _go_exponent(m["hexp"], m["hexpsign"])
            int_part = (m["hint"] or "").replace("_", "")
            frac_part = (m["hfrac"] or m["hfrac2"] or "").replace("_", "")
            text = f"{'-' if neg else ''}0x{int_part or '0'}.{frac_part}p{exp}"
        try:
            return float.fromhex(text)
        except OverflowError:
            raise GoFloatRangeError(s, -_INF if neg else _INF) from None

    if short:
        value = float(clean)
    else:
        value = _long_decimal(
            neg,
            (m["int"] or "").replace("_", ""),
            (m["frac"] or m["frac2"] or "").replace("_", ""),
            _go_exponent(m["exp"], m["expsign"]) if m["exp"] is not None else 0,
        )
    if value in (_INF, -_INF):
        raise GoFloatRangeError(s, value)
    return value


def _go_exponent(digits: str, sign: str | None) -> int:
    """Read an exponent the way readFloat does: it stops adding digits once it reaches 10000."""
    significant = digits.replace("_", "").lstrip("0")
    value = int(significant[:5]) if significant else 0
    return -value if sign == "-" else value


def _long_decimal(neg: bool, int_digits: str, frac_digits: str, exp: int) -> float:
    """Follow atof64's decimal path for long input (where the quirks can show)."""
    sign = "-" if neg else ""
    int_sig = int_digits.lstrip("0")
    if len(int_sig) <= _GO_DECIMAL_DIGITS:
        # Every path Go can take (exact float math, Eisel-Lemire, or the decimal fallback)
        # gives the correctly rounded value of digits * 10**exp.
        return float(f"{sign}{int_digits or '0'}.{frac_digits}e{exp}")

    # More than 800 significant integer digits. readFloat keeps 19 of them for Eisel-Lemire.
    # The exact fast path never applies: a 19-digit mantissa is >= 10**18 > 2**52.
    digits = int_sig + frac_digits
    mantissa = int(digits[:19])
    trunc = digits[19:].strip("0") != ""
    exp10 = len(int_sig) - 19 + exp
    f = _eisel_lemire64(mantissa, exp10, neg)
    if f is not None and (not trunc or _eisel_lemire64(mantissa + 1, exp10, neg) == f):
        return f

    # Go's decimal fallback keeps 800 digits (plus a "truncated" flag). It puts the decimal
    # point after the 800th digit, so the value it rounds is digits[:800] * 10**exp. When
    # the rest is nonzero, appending a '1' rounds the same as Go's sticky flag: a 800-digit
    # value can't be within 10**exp of a rounding midpoint (midpoints have <= 767 digits).
    kept = digits[:_GO_DECIMAL_DIGITS]
    if digits[_GO_DECIMAL_DIGITS:].strip("0"):
        return float(f"{sign}{kept}1e{exp - 1}")
    return float(f"{sign}{kept}e{exp}")


@cache
def _pow10_128(k: int) -> tuple[int, int]:
    """Return the top 128 bits of 10**k, rounded down, as (high 64 bits, low 64 bits).

    Eisel-Lemire uses these 128-bit approximations. The value is computed rather than
    tabulated. Only the long-input path calls this.
    """
    if k >= 0:
        p = 10**k
        n = p.bit_length()
        m = p << (128 - n) if n <= 128 else p >> (n - 128)
    else:
        d = 10**-k
        m = (1 << (127 + d.bit_length())) // d
    return m >> 64, m & _U64


def _eisel_lemire64(man: int, exp10: int, neg: bool) -> float | None:
    """Eisel-Lemire as in Go's eiselLemire64. Return None where Go returns ok == false."""
    if man == 0:
        return -0.0 if neg else 0.0
    if not -348 <= exp10 <= 347:
        return None
    clz = 64 - man.bit_length()
    man <<= clz
    ret_exp2 = ((217706 * exp10) >> 16) + 64 + 1023 - clz
    pow_hi, pow_lo = _pow10_128(exp10)
    x = man * pow_hi
    x_hi, x_lo = x >> 64, x & _U64
    if x_hi & 0x1FF == 0x1FF and x_lo + man > _U64:
        y = man * pow_lo
        y_hi, y_lo = y >> 64, y & _U64
        merged_hi, merged_lo = x_hi, x_lo + y_hi
        if merged_lo > _U64:
            merged_lo &= _U64
            merged_hi += 1
        if merged_hi & 0x1FF == 0x1FF and merged_lo == _U64 and y_lo + man > _U64:
            return None
        x_hi, x_lo = merged_hi, merged_lo
    msb = x_hi >> 63
    ret_mantissa = x_hi >> (msb + 9)
    ret_exp2 -= 1 ^ msb
    if x_lo == 0 and x_hi & 0x1FF == 0 and ret_mantissa & 3 == 1:
        return None
    ret_mantissa += ret_mantissa & 1
    ret_mantissa >>= 1
    if ret_mantissa >> 53:
        ret_mantissa >>= 1
        ret_exp2 += 1
    if not 0 < ret_exp2 < 0x7FF:
        return None
    bits = ret_exp2 << 52 | ret_mantissa & ((1 << 52) - 1) | (neg << 63)
    result: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return result
