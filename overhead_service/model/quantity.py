"""Kubernetes resource quantities, exactly as ``k8s.io/apimachinery`` (v0.34) computes them.

Byte-exact parity with KubeVirt depends on more than the mathematical value of a quantity:

* the *format* (``DecimalSI``, ``BinarySI``, ``DecimalExponent``) decides how ``String()`` prints
  the same value (786,432,000 is ``786432k`` or ``750Mi``), and ``Add`` hands the operand's format
  to a zero receiver;
* Go keeps a quantity either as an ``int64`` with a decimal scale or as an arbitrary-precision
  decimal (``inf.Dec``).  Values agree, but ``Value()``/``ScaledValue()`` overflow differently in
  the two forms, and KubeVirt's page-table step relies on int64 wraparound for huge requests.

So a :class:`Quantity` records its value as ``unscaled × 10**exp``, which of Go's two forms holds
it (``big``), and its format.  Arithmetic on values is exact Python ``int`` arithmetic; only the
operations Go defines with int64 semantics reproduce the wraparound.  Quantities are immutable:
operations return new objects.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final

from overhead_service.errors import InexactNumber, InvalidQuantity

__all__ = [
    "GO_ZERO",
    "INT64_FLOAT_BOUND",
    "Format",
    "Quantity",
    "go_int_div",
    "parse_quantity",
    "quantity_from_json",
    "wrap_int64",
]

MAX_INT64: Final = (1 << 63) - 1
MIN_INT64: Final = -(1 << 63)
_TWO64: Final = 1 << 64
_MAX_QUANTITY_CHARS: Final = 100

NANO: Final = -9
KILO: Final = 3


class Format(StrEnum):
    """How a quantity prints.  ``NONE`` is the format of Go's zero value ``Quantity{}``."""

    DECIMAL_SI = "DecimalSI"
    BINARY_SI = "BinarySI"
    DECIMAL_EXPONENT = "DecimalExponent"
    NONE = ""


def wrap_int64(value: int) -> int:
    """``value`` reduced to a two's-complement int64, as Go's wrapping arithmetic does."""
    if MIN_INT64 <= value <= MAX_INT64:
        return value
    return ((value - MIN_INT64) % _TWO64) + MIN_INT64


def go_int_div(a: int, b: int) -> int:
    """Go's integer division, which truncates toward zero (Python's ``//`` floors)."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b > 0) else -quotient


# |x| below this converts from float64 to int64 exactly as int(x) does; at or above it (and for
# NaN) Go's conversion is platform-dependent, so callers treat it as an input error.
INT64_FLOAT_BOUND: Final = float(2**63)


def _big_int64(value: int) -> int:
    """Go's ``big.Int.Int64()``: the low 64 bits of the magnitude, then the sign applied."""
    if MIN_INT64 <= value <= MAX_INT64:
        return value
    low = abs(value) & (_TWO64 - 1)
    return wrap_int64(-low if value < 0 else low)


def _fits(value: int) -> bool:
    return MIN_INT64 <= value <= MAX_INT64


def _positive_scale_int64(base: int, scale: int) -> tuple[int, bool]:
    """Go's ``positiveScaleInt64``: ``base × 10**scale`` and whether it fit.

    On overflow the small fixed scales return the wrapped product and the generic loop returns 0;
    ``Value()`` hands either straight to the caller, so both are reproduced.
    """
    if scale == 0:
        return base, True
    if scale in (1, 2, 3, 6, 9):
        factor = 10**scale
        if base in (0, 1):
            return base * factor, True
        if base == MIN_INT64:
            return 0, False
        product = base * factor
        return wrap_int64(product), _fits(product)
    # Generic loop: multiplies by 10 step by step and returns 0 at the first overflow.
    if base == 0:
        return 0, True
    if scale >= 19:
        return 0, False
    product = base * 10**scale
    return (product, True) if _fits(product) else (0, False)


def _negative_scale_int64(base: int, scale: int) -> tuple[int, bool]:
    """Go's ``negativeScaleInt64``: ``base / 10**scale`` rounded away from zero, and exactness."""
    if scale == 0:
        return base, True
    magnitude = abs(base)
    divisor = 10**scale if scale < 40 else None
    if divisor is None or magnitude < divisor:
        quotient, fraction = 0, magnitude != 0
    else:
        quotient, remainder = divmod(magnitude, divisor)
        fraction = remainder != 0
    if quotient == 0:
        if fraction:
            return (1 if base > 0 else -1), False
        return 0, True
    if fraction:
        quotient += 1
    return (quotient if base > 0 else -quotient), not fraction


def _int64_add(av: int, ae: int, bv: int, be: int) -> tuple[int, int] | None:
    """Go's ``int64Amount.Add``: the sum at the finer scale, or None where Go reports overflow."""
    if bv == 0:
        return av, ae
    if av == 0:
        return bv, be
    if ae == be:
        total = av + bv
        return (total, ae) if _fits(total) else None
    if ae > be:
        scaled, ok = _positive_scale_int64(av, ae - be)
        if not ok:
            return None
        total = scaled + bv
        return (total, be) if _fits(total) else None
    scaled, ok = _positive_scale_int64(bv, be - ae)
    if not ok:
        return None
    total = av + scaled
    return (total, ae) if _fits(total) else None


def _strip_tens(unscaled: int, exp: int) -> tuple[int, int]:
    if unscaled == 0:
        return 0, 0
    while unscaled % 10 == 0:
        unscaled //= 10
        exp += 1
    return unscaled, exp


_DECIMAL_SUFFIXES: Final = {
    -9: "n",
    -6: "u",
    -3: "m",
    0: "",
    3: "k",
    6: "M",
    9: "G",
    12: "T",
    15: "P",
    18: "E",
}
_BINARY_SUFFIXES: Final = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


class Quantity:
    """An immutable Kubernetes quantity: ``unscaled × 10**exp`` in one of Go's two forms."""

    __slots__ = ("_str", "big", "exp", "format", "unscaled")

    unscaled: int
    exp: int
    big: bool
    format: Format

    def __init__(self, unscaled: int, exp: int = 0, fmt: Format = Format.DECIMAL_SI, *, big: bool = False):
        if not big and not _fits(unscaled):
            big = True
        self.unscaled = unscaled
        self.exp = exp
        self.big = big
        self.format = fmt
        self._str: str | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_int(cls, value: int, fmt: Format = Format.DECIMAL_SI) -> Quantity:
        """Go's ``NewQuantity(value, format)``."""
        return cls(value, 0, fmt)

    @classmethod
    def scaled(cls, value: int, scale: int) -> Quantity:
        """Go's ``NewScaledQuantity(value, scale)``: ``value × 10**scale`` as DecimalSI."""
        return cls(value, scale, Format.DECIMAL_SI)

    # -- value ----------------------------------------------------------------------------------
    def is_zero(self) -> bool:
        return self.unscaled == 0

    def sign(self) -> int:
        return (self.unscaled > 0) - (self.unscaled < 0)

    def as_fraction(self) -> tuple[int, int]:
        """The exact value as ``(numerator, denominator)``, the denominator a power of ten."""
        if self.exp >= 0:
            return self.unscaled * 10**self.exp, 1
        return self.unscaled, 10**-self.exp

    def exact_ceil(self) -> int:
        """The exact value rounded up (toward +∞) to a whole number, without Go's overflow."""
        num, den = self.as_fraction()
        return -((-num) // den)

    def cmp(self, other: Quantity) -> int:
        """Exact comparison of values: -1, 0 or 1."""
        exp = min(self.exp, other.exp)
        a: int = self.unscaled * 10 ** (self.exp - exp)
        b: int = other.unscaled * 10 ** (other.exp - exp)
        return (a > b) - (a < b)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.cmp(other) == 0

    def __hash__(self) -> int:
        unscaled, exp = _strip_tens(self.unscaled, self.exp)
        return hash((unscaled, exp))

    def scaled_value(self, scale: int) -> int:
        """Go's ``ScaledValue(scale)``: ``ceil(value / 10**scale)`` with Go's int64 overflow.

        The int64 form rounds away from zero; the decimal form's fast path truncates and adds one,
        its slow path floors and adds one.  All three are kept because they differ on negatives.
        """
        if not self.big:
            if self.exp < scale:
                return _negative_scale_int64(self.unscaled, scale - self.exp)[0]
            return _positive_scale_int64(self.unscaled, self.exp - scale)[0]
        dif = scale - self.exp
        if dif == 0:
            return _big_int64(self.unscaled)
        if dif < 0:
            # math.Pow10 beyond 1e18 converts to int64 as the amd64 "integer indefinite" value.
            factor = 10**-dif if -dif <= 18 else MIN_INT64
            return wrap_int64(_big_int64(self.unscaled) * factor)
        if self.unscaled < MAX_INT64 and dif < 19:
            small = _big_int64(self.unscaled)
            divisor: int = 10**dif
            quotient = abs(small) // divisor * (1 if small >= 0 else -1)
            return quotient + 1 if small - quotient * divisor != 0 else quotient
        quotient, remainder = divmod(self.unscaled, 10**dif)
        return wrap_int64(_big_int64(quotient) + 1) if remainder else _big_int64(quotient)

    def value(self) -> int:
        """Go's ``Value()``: the value rounded up away from zero, as an int64 (may wrap)."""
        return self.scaled_value(0)

    # -- arithmetic -----------------------------------------------------------------------------
    def add(self, other: Quantity) -> Quantity:
        """Go's ``q.Add(y)`` as a new quantity: exact, with Go's format and form rules."""
        if not self.big and not other.big:
            fmt = other.format if self.unscaled == 0 else self.format
            summed = _int64_add(self.unscaled, self.exp, other.unscaled, other.exp)
            if summed is not None:
                return Quantity(summed[0], summed[1], fmt)
        else:
            fmt = other.format if self.unscaled == 0 else self.format
        # inf.Dec addition aligns both operands on the finer scale.
        exp = min(self.exp, other.exp)
        total = self.unscaled * 10 ** (self.exp - exp) + other.unscaled * 10 ** (other.exp - exp)
        return Quantity(total, exp, fmt, big=True)

    def sub(self, other: Quantity) -> Quantity:
        """Go's ``q.Sub(y)`` as a new quantity: exact, with Go's format and form rules.

        A zero receiver takes the operand's format, as in :meth:`add`.  Go's int64 form subtracts
        by adding the negated operand, and negating the smallest int64 wraps to itself, so that
        one operand is *added* there (reproduced; only an int64 overflow leaves the int64 form).
        """
        fmt = other.format if self.unscaled == 0 else self.format
        if not self.big and not other.big:
            summed = _int64_add(self.unscaled, self.exp, wrap_int64(-other.unscaled), other.exp)
            if summed is not None:
                return Quantity(summed[0], summed[1], fmt)
        exp = min(self.exp, other.exp)
        total = self.unscaled * 10 ** (self.exp - exp) - other.unscaled * 10 ** (other.exp - exp)
        return Quantity(total, exp, fmt, big=True)

    def with_format(self, fmt: Format) -> Quantity:
        return Quantity(self.unscaled, self.exp, fmt, big=self.big)

    # -- printing -------------------------------------------------------------------------------
    def __str__(self) -> str:
        if self._str is None:
            self._str = self._canonical()
        return self._str

    def __repr__(self) -> str:
        return f"Quantity({str(self)!r}, {self.format.value or 'NONE'}{', big' if self.big else ''})"

    def _canonical(self) -> str:
        """Go's ``String()`` (``CanonicalizeBytes``); the result depends only on value and format."""
        if self.unscaled == 0:
            return "0"
        fmt = self.format
        if fmt is Format.BINARY_SI:
            num, den = self.as_fraction()
            if -1024 * den < num < 1024 * den or num % den:
                fmt = Format.DECIMAL_SI
            else:
                integer = num // den
                magnitude, power = abs(integer), 0
                while magnitude >= 1024 and magnitude % 1024 == 0:
                    magnitude //= 1024
                    power += 1
                suffix = _BINARY_SUFFIXES[power] if power < len(_BINARY_SUFFIXES) else ""
                return f"{'-' if integer < 0 else ''}{magnitude}{suffix}"
        elif fmt is not Format.DECIMAL_SI:
            fmt = Format.DECIMAL_EXPONENT
        mantissa, exponent = _strip_tens(self.unscaled, self.exp)
        shift = exponent % 3  # bring the exponent down to a multiple of three
        mantissa *= 10**shift
        exponent -= shift
        if fmt is Format.DECIMAL_EXPONENT:
            return f"{mantissa}e{exponent}" if exponent else str(mantissa)
        return f"{mantissa}{_DECIMAL_SUFFIXES.get(exponent, '')}"

    def to_json(self) -> dict[str, Any]:
        """``{"quantity": String(), "bytes": Value()}``, the shape the API answers with."""
        return {"quantity": str(self), "bytes": self.value()}


ZERO: Final = Quantity(0, 0, Format.DECIMAL_SI)
GO_ZERO: Final = Quantity(0, 0, Format.NONE)  # Go's zero value Quantity{}: a missing field or map entry

# The documented Kubernetes grammar.  Go's scanner also lets "", "+", "-" and "." through as zero;
# those are not quantities by the grammar, so they are input errors here.  The exponent suffix is
# bounded to four digits: a larger one is nonsense for memory and would only cost CPU.
_GRAMMAR: Final = re.compile(
    r"(?P<sign>[+-]?)(?P<zeros>0*)(?P<num>[0-9]*)(?:\.(?P<denom>[0-9]*))?"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,4})?"
)
_BINARY_EXPONENTS: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXPONENTS: Final = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}


def _round_up_to_nano(unscaled: int, exp: int) -> tuple[int, int]:
    """``inf.Dec.Round(Nano, RoundUp)``: the result always has scale nano (Go's unscaled digits
    matter for ``ScaledValue``'s fast path); anything finer rounds away from zero."""
    if exp >= NANO:
        return unscaled * 10 ** (exp - NANO), NANO
    divisor = 10 ** (NANO - exp)
    quotient, remainder = divmod(abs(unscaled), divisor)
    if remainder:
        quotient += 1
    return (quotient if unscaled >= 0 else -quotient), NANO


@lru_cache(maxsize=4096)
def parse_quantity(text: str) -> Quantity:
    """Go's ``ParseQuantity``: the value, its format and the form Go would hold it in.

    Raises :class:`InvalidQuantity` (path ``""``) for anything the Kubernetes grammar rejects.
    """
    if len(text) > _MAX_QUANTITY_CHARS:
        raise InvalidQuantity("", f"quantity is longer than {_MAX_QUANTITY_CHARS} characters")
    match = _GRAMMAR.fullmatch(text)
    if match is None or not (match["zeros"] or match["num"] or match["denom"]):
        raise InvalidQuantity("", f"{text!r} is not a quantity (e.g. 1Gi, 512Mi, 1.5G, 2e9, 100m)")
    if text == "0":
        return Quantity(0, 0, Format.DECIMAL_SI)
    negative = match["sign"] == "-"
    num = match["num"] or "0"
    denom = match["denom"] or ""
    suffix = match["suffix"] or ""

    if suffix in _BINARY_EXPONENTS:
        base, exponent, fmt = 2, _BINARY_EXPONENTS[suffix], Format.BINARY_SI
    elif suffix in _DECIMAL_EXPONENTS:
        base, exponent, fmt = 10, _DECIMAL_EXPONENTS[suffix], Format.DECIMAL_SI
    else:
        # strconv.ParseInt on the exponent, then narrowed to int32 (wraps) as Go does.
        raw = int(suffix[1:])
        base, exponent, fmt = 10, ((raw + 2**31) % 2**32) - 2**31, Format.DECIMAL_EXPONENT

    # The int64 fast path, under the same precision estimate Go uses.
    if fmt is Format.BINARY_SI:
        precision = 15 - len(num) - (exponent * 3 // 10) - 1 if not denom else -1
        scale, mantissa = 0, 1 << exponent
    else:
        precision = 18 - (len(num) + len(denom))
        scale, mantissa = exponent, 1
    if precision >= 0:
        scale -= len(denom)
        if scale >= NANO:
            shifted = int(num + denom)
            product = shifted * mantissa
            if shifted <= MAX_INT64 and _fits(product):
                return Quantity(-product if negative else product, scale, fmt)

    # The inf.Dec path: exact digits, then suffix, round to nano, cap binary values at 2^63-1.
    unscaled = int(num + denom)
    exp = -len(denom)
    if base == 10:
        exp += exponent
    else:
        unscaled <<= exponent
    if unscaled:
        unscaled, exp = _round_up_to_nano(unscaled, exp)
    if fmt is Format.BINARY_SI:
        magnitude = Quantity(unscaled, exp, fmt, big=True)
        if magnitude.cmp(_MAX_ALLOWED) > 0:
            unscaled, exp = MAX_INT64, 0
        elif unscaled != 0 and magnitude.cmp(_ONE) < 0:
            fmt = Format.DECIMAL_SI
    return Quantity(-unscaled if negative else unscaled, exp, fmt, big=True)


_MAX_ALLOWED: Final = Quantity(MAX_INT64, 0, big=True)
_ONE: Final = Quantity(1, 0, big=True)


# Go's strings.TrimSpace set: ASCII \t \n \v \f \r and space, plus unicode.IsSpace beyond ASCII
# (Python's str.strip() would also remove U+001C..U+001F, which Go keeps and then rejects).
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)


# The same few strings ("1Gi", "4", "2048Mi") arrive in almost every VMI: remember their parse.
# Quantities are immutable, so sharing them is safe.
_FROM_STRING: dict[str, Quantity] = {}


def quantity_from_json(value: Any) -> Quantity:
    """A quantity as ``UnmarshalJSON`` reads it: a string (whitespace trimmed) or a JSON number.

    JSON numbers should arrive as :class:`~overhead_service.jsonio.JsonNumber` (their raw text)
    or ``int``; a plain :class:`~decimal.Decimal` is accepted too.
    """
    cached = _FROM_STRING.get(value) if type(value) is str else None
    if cached is not None:
        return cached
    if isinstance(value, str):
        if len(value) > _MAX_QUANTITY_CHARS:  # the raw string, as the API contract bounds it
            raise InvalidQuantity("", f"quantity is longer than {_MAX_QUANTITY_CHARS} characters")
        parsed = parse_quantity(value.strip(_GO_SPACE))
        if len(_FROM_STRING) < 4096:  # callers choose the strings: keep the memo bounded
            _FROM_STRING[value] = parsed
        return parsed
    if isinstance(value, bool):
        raise InvalidQuantity("", "must be a quantity string or number, not a boolean")
    if isinstance(value, int):
        return parse_quantity(str(value))
    if isinstance(value, Decimal):
        raw = getattr(value, "raw", None)
        if raw is None:
            if not value.is_finite():
                raise InvalidQuantity("", "must be a finite number")
            raw = str(value)
        return parse_quantity(raw)
    if isinstance(value, float):
        raise InexactNumber("", "a quantity given as a JSON number needs exact decoding (jsonio.loads_exact)")
    raise InvalidQuantity("", f"must be a quantity string or number, not {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
