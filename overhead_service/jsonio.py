"""JSON in and out, the same way for the HTTP API and the CLI.

Numbers with a fraction or exponent decode to :class:`~decimal.Decimal`, so a quantity written as a
JSON number (``"memory": 1.5e9``) keeps its exact value; ``NaN`` and ``Infinity``, which Python's
:mod:`json` accepts but JSON does not, are rejected.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["JsonNumber", "dumps", "loads"]


# Python refuses to convert integers longer than this (CVE-2020-10735) and json.loads would fail
# on valid JSON; such a number becomes a Decimal, which the service then rejects at its path.
_MAX_INT_DIGITS = 4000


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _MAX_INT_DIGITS else Decimal(text)


def _default(value: object) -> Any:
    # Table documents may carry Decimals; an integral one is written as an integer, like the input.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JsonNumber(Decimal):
    """A JSON number with a fraction or exponent: its exact value, and its text as written.

    Kubernetes parses a quantity given as a JSON number from the raw text (``1.5e9`` keeps its
    exponent form), so :func:`overhead_service.quantity.quantity_from_json` reads :attr:`raw`.
    """

    __slots__ = ("raw",)
    raw: str

    def __new__(cls, raw: str) -> JsonNumber:
        number = super().__new__(cls, raw)
        number.raw = raw
        return number


# One decoder and one encoder for the process: json.loads/json.dumps with keyword arguments build a
# new one on every call, which costs more than decoding a whole VMI.
_DECODER = json.JSONDecoder(parse_float=JsonNumber, parse_int=_int, parse_constant=_reject_constant)
# ensure_ascii: a lone surrogate ("\ud800" is valid JSON input and can be echoed back in an answer
# or an error) cannot be encoded as UTF-8, but can be written as an escape.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_default)


def loads(raw: str | bytes) -> Any:
    """Decode one JSON document; raises :class:`ValueError` (or :class:`RecursionError`) when malformed."""
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return _DECODER.decode(raw)


def dumps(value: Any) -> str:
    """Encode compactly, in key order, as ASCII (anything else escaped)."""
    return _ENCODER.encode(value)
