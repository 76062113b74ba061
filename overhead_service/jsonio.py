"""JSON in and out, the same way for the HTTP API and the CLI.

Two decoders:

* :func:`loads` is the fast one (orjson) for the hot path.  A number with a fraction or exponent
  becomes a ``float``, which is fine everywhere except where a quantity is given as a JSON number:
  there the service raises :class:`~overhead_service.errors.InexactNumber`, and the caller decodes
  again with
* :func:`loads_exact`, which keeps such numbers as :class:`JsonNumber` (exact value and raw text),
  so that ``"memory": 1.5e9`` parses exactly as Kubernetes parses it.

``NaN`` and ``Infinity``, which Python's :mod:`json` accepts but JSON does not, are rejected by both.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["JsonNumber", "dumps", "dumps_bytes", "loads", "loads_exact"]


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
    exponent form), so :func:`overhead_service.model.quantity.quantity_from_json` reads :attr:`raw`.
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
    """Decode fast; fractional numbers become ``float`` (see the module docstring).

    orjson refuses a few documents that are valid JSON (lone surrogate escapes, integers beyond
    64 bits, UTF-16 text, very deep nesting); those go to :func:`loads_exact`, which decides.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return loads_exact(raw)


def loads_exact(raw: str | bytes) -> Any:
    """Decode one JSON document keeping fractional numbers exact; raises :class:`ValueError` (or
    :class:`RecursionError`) when malformed."""
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return _DECODER.decode(raw)


def dumps_bytes(value: Any) -> bytes:
    """:func:`dumps` as UTF-8 bytes, without a detour through ``str`` on the hot path."""
    try:
        return orjson.dumps(value, default=_default)
    except TypeError:
        return _ENCODER.encode(value).encode()


def dumps(value: Any) -> str:
    """Encode compactly, in key order.

    orjson writes UTF-8; a string it cannot encode (a lone surrogate echoed from the input) sends
    the whole document to the standard encoder, which escapes everything outside ASCII.
    """
    try:
        return orjson.dumps(value, default=_default).decode()
    except TypeError:
        return _ENCODER.encode(value)
