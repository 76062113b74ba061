"""Reading requests, for every blueprint: JSON bodies, object fields, query parameters, table ids.

Every check raises :class:`~overhead_service.errors.InputError` (or a subclass) with the path of
what is wrong: ``""`` for the body as a whole, a field name, or a query parameter's name.  The
error handlers (:mod:`overhead_service.web.errors`) turn it into a problem document.

- Bodies: :func:`read_json` (415 unless declared JSON, 413 when too large, 400 unless JSON),
  :func:`answer_json` for the hot path (decoded again exactly when a quantity needs it),
  :func:`json_object` for an object with known fields.
- Query parameters: :func:`query_args` checks names and repetitions once; :class:`QueryArgs`
  reads choices, texts, bounded integers and timestamps. A view that reads none is not marked
  :func:`reads_query`, and a query string sent to it is refused (422 at the first parameter)
  before it runs; a query string over :data:`MAX_QUERY_STRING` bytes is 414 everywhere.
- Bodies with a schema (fits, evaluations, activations, rollbacks): :mod:`overhead_service.web.bodies`.
- Tables named in the URL: :func:`table_document` (404 when there is none).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Final, TypeVar, overload

from flask import Flask, current_app, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from overhead_service import jsonio
from overhead_service.calibration.records import parse_timestamp, storable_text
from overhead_service.errors import InexactNumber, InputError, TableNotFound, UnknownTable
from overhead_service.extensions import get_registry
from overhead_service.web.errors import (
    BodyTimeout,
    MalformedBody,
    MalformedJSON,
    QueryTooLong,
    UnsupportedMediaType,
)

T = TypeVar("T")
V = TypeVar("V", bound=Callable[..., Any])

MAX_QUERY_STRING: Final = 60 * 1024
"""The longest query string (414 beyond): the longest the API takes is 100 run ids of 200
characters, each percent-encoded at worst (about 60,000 bytes)."""
_READS_QUERY: Final = "overhead_reads_query"

__all__ = [
    "MAX_QUERY_STRING",
    "QueryArgs",
    "answer_json",
    "decode_json",
    "json_object",
    "init_app",
    "query_args",
    "read_body",
    "reads_query",
    "read_json",
    "read_json_bytes",
    "table_document",
]

# --- bodies ---------------------------------------------------------------------------------------


def read_body() -> bytes:
    """The raw request body; 413 when it is larger than ``MAX_CONTENT_LENGTH``, 400 when it cannot
    be read whole (broken chunked framing, the connection closed early), 408 when it came too slowly.

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
        raw = _read(environ["wsgi.input"], length)
        if len(raw) < length:
            raise MalformedBody(
                "", f"request body ended after {len(raw)} of its {length} bytes (Content-Length)"
            )
        return raw
    if not environ.get("wsgi.input_terminated"):
        return b""  # neither a length nor a server that ends the stream: nothing is safe to read
    raw = _read(environ["wsgi.input"], -1 if limit is None else limit + 1)
    if limit is not None and len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw


def _read(stream: Any, size: int) -> bytes:
    """``stream.read(size)``, a failure of the client's framing as a problem about the body.

    Each WSGI server raises its own exceptions for a body it cannot decode (gunicorn: a bad chunk
    size or extension, a missing CRLF, a bad trailer, end of stream before the last chunk), so
    any exception here is the body's; the connection is not reused after it.
    """
    try:
        raw: bytes = stream.read(size)
    except TimeoutError:
        raise BodyTimeout("", "request body did not arrive in time") from None
    except MemoryError:
        raise
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise MalformedBody("", f"request body could not be read: {reason}"[:500]) from None
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


def json_object(body: Any, allowed: Collection[str], *, what: str = "a JSON object") -> dict[str, Any]:
    """``body`` if it is an object whose fields are all ``allowed``; else 422 at the first bad one.

    ``what`` completes "the request must be ..." (e.g. "a JSON object with an 'items' array").
    """
    if type(body) is not dict:
        raise InputError("", f"the request must be {what}")
    for key in body:
        if key not in allowed:
            raise InputError(key, f"unknown field; allowed: {', '.join(sorted(allowed))}")
    return body


# --- query parameters -----------------------------------------------------------------------------


class QueryArgs:
    """The request's query parameters, names and repetitions already checked (:func:`query_args`)."""

    __slots__ = ("_args",)

    def __init__(self, args: MultiDict[str, str]) -> None:
        self._args = args

    def __contains__(self, name: str) -> bool:
        return name in self._args

    @overload
    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str: ...
    @overload
    def choice(self, name: str, allowed: tuple[str, ...], default: None = None) -> str | None: ...

    def choice(self, name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        """A parameter that must be one of ``allowed``."""
        value = self._args.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise InputError(name, f"must be one of: {', '.join(allowed)}")
        return value

    @overload
    def text(self, name: str, max_length: int, default: str) -> str: ...
    @overload
    def text(self, name: str, max_length: int, default: None = None) -> str | None: ...

    def text(self, name: str, max_length: int, default: str | None = None) -> str | None:
        """A non-empty parameter of at most ``max_length`` characters that the database can store."""
        value = self._args.get(name)
        return default if value is None else _text(name, value, max_length)

    def choices(self, name: str, allowed: tuple[str, ...], max_count: int) -> tuple[str, ...] | None:
        """A repeatable parameter, each one of ``allowed``, at most ``max_count`` times: the values
        given, each once, in the order first given."""
        if name not in self._args:
            return None
        values = self._args.getlist(name)
        for value in values:
            if value not in allowed:
                raise InputError(name, f"must be one of: {', '.join(allowed)}")
        if len(values) > max_count:
            raise InputError(name, f"at most {max_count} values")
        return tuple(dict.fromkeys(values))

    def texts(self, name: str, max_length: int, max_count: int) -> list[str] | None:
        """A repeatable text parameter (each as :meth:`text`), at most ``max_count`` times."""
        if name not in self._args:
            return None
        values = [_text(name, value, max_length) for value in self._args.getlist(name)]
        if len(values) > max_count:
            raise InputError(name, f"at most {max_count} run ids")
        return values

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        """A decimal integer parameter between ``low`` and ``high``."""
        value = self._args.get(name)
        if value is None:
            return default
        digits = len(str(high))
        if not (value.isascii() and value.isdigit() and len(value) <= digits and low <= int(value) <= high):
            raise InputError(name, f"must be an integer between {low} and {high}")
        return int(value)

    def time(self, name: str) -> datetime | None:
        """An RFC 3339 timestamp with a time zone (:func:`parse_timestamp`)."""
        value = self._args.get(name)
        if value is not None and len(value) > 64:
            raise InputError(name, "must be an RFC 3339 date-time such as 2026-11-27T00:00:00Z")
        return None if value is None else parse_timestamp(value, name)

    def raw(self, name: str, max_length: int) -> str | None:
        """A parameter of at most ``max_length`` characters, else as given (the caller checks it,
        e.g. an opaque cursor)."""
        value = self._args.get(name)
        if value is not None and len(value) > max_length:
            raise InputError(name, f"must be at most {max_length} characters")
        return value


def query_args(allowed: Collection[str], repeatable: Collection[str] = ()) -> QueryArgs:
    """The query parameters, after refusing unknown names and repeats of non-repeatable ones."""
    args = request.args
    for name in args:
        if name not in allowed:
            known = f"allowed: {', '.join(allowed)}" if allowed else "this endpoint takes none"
            raise InputError(name[:200], f"unknown query parameter; {known}")
        if name not in repeatable and len(args.getlist(name)) > 1:
            raise InputError(name, "may be given once")
    return QueryArgs(args)


def reads_query(view: V) -> V:
    """Mark a view that checks its query parameters itself (with :func:`query_args`)."""
    setattr(view, _READS_QUERY, True)
    return view


def _check_query() -> None:
    """Before every view: a query string is refused unless the view reads one (cheap when there
    is none, as on the hot path), and bounded everywhere."""
    query = request.environ.get("QUERY_STRING")
    if not query:
        return
    if len(query) > MAX_QUERY_STRING:
        raise QueryTooLong("", f"the query string is longer than {MAX_QUERY_STRING} bytes")
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and not getattr(view, _READS_QUERY, False):
        query_args(())


def init_app(app: Flask) -> None:
    """Check query strings before every view."""
    app.before_request(_check_query)


def _text(name: str, value: str, max_length: int) -> str:
    if not value or len(value) > max_length:
        raise InputError(name, f"must be a non-empty string of at most {max_length} characters")
    if not storable_text(value):
        raise InputError(name, "must not contain NUL characters")
    return value


# --- tables named in the URL ----------------------------------------------------------------------


def table_document(table_id: str) -> dict[str, Any]:
    """The document of the table named in the URL; 404 (:class:`TableNotFound`) when there is none."""
    try:
        return get_registry().document(table_id)
    except UnknownTable as err:
        raise TableNotFound(err.path, err.detail) from None
