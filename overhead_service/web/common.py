"""What every blueprint needs: the application's domain objects, and JSON bodies in and out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from overhead_service import jsonio
from overhead_service.errors import InexactNumber
from overhead_service.extensions import get_registry as registry
from overhead_service.extensions import get_service as service
from overhead_service.web.errors import MalformedJSON, UnsupportedMediaType

T = TypeVar("T")

__all__ = ["json_response", "read_body", "read_json", "registry", "service"]

def read_body() -> bytes:
    """The raw request body; 413 when it is larger than ``MAX_CONTENT_LENGTH``.

    Reads ``wsgi.input`` directly rather than through ``request.get_data()``: the same limits for
    less work on the hot path, and a chunked body over the limit is refused (Werkzeug cuts it at
    the limit silently).
    """
    environ = request.environ
    limit = request.max_content_length
    length = request.content_length
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        raw: bytes = environ["wsgi.input"].read(length)
        return raw
    if not environ.get("wsgi.input_terminated"):
        return b""  # neither a length nor a server that ends the stream: nothing is safe to read
    raw = environ["wsgi.input"].read(-1 if limit is None else limit + 1)
    if limit is not None and len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw


def read_json_bytes() -> bytes:
    """The raw body of a JSON request; 415 unless it is declared JSON."""
    content_type = request.environ.get("CONTENT_TYPE", "")
    # The common spelling without parsing; anything else (parameters, +json types) the full way.
    if content_type != "application/json" and not request.is_json:
        declared = request.mimetype or "none"
        raise UnsupportedMediaType("", f"Content-Type must be application/json, got {declared}")
    return read_body()


def decode_json(raw: bytes, *, exact: bool = False) -> Any:
    """``raw`` decoded by :func:`jsonio.loads` (or :func:`jsonio.loads_exact`); 400 unless it is JSON."""
    try:
        return jsonio.loads_exact(raw) if exact else jsonio.loads(raw)
    except RecursionError:
        raise MalformedJSON("", "request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise MalformedJSON("", f"request body is not valid JSON: {exc}") from None


def read_json() -> Any:
    """The request body decoded; 415 unless it is declared JSON, 400 unless it is."""
    return decode_json(read_json_bytes())


def answer_json(compute: Callable[[Any], T]) -> T:
    """``compute`` applied to the decoded body; decoded again exactly when a quantity needs it.

    The fast decoder turns ``1.5e9`` into a float; the service says so with
    :class:`InexactNumber` and the request is decoded once more keeping every number exact.
    """
    raw = read_json_bytes()
    try:
        return compute(decode_json(raw))
    except InexactNumber:
        return compute(decode_json(raw, exact=True))


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    """``body`` encoded by :func:`jsonio.dumps`, the same bytes the CLI prints."""
    return Response(jsonio.dumps_bytes(body), status=status, mimetype=mimetype)
