"""Every error the API answers is an RFC 9457 ``application/problem+json`` document.

- :class:`~overhead_service.errors.InputError` -> :func:`overhead_service.errors.problem` with the
  error's status. An unknown table named in a request body (the error has a path, ``table``) is
  422 like any other bad field; only ``GET /v1/tables/<id>`` answers 404 for it.
- A body that cannot be read (400: broken chunked framing, shorter than its ``Content-Length``;
  408: not arrived in time), is not JSON (400), not declared JSON (415) or too large (413) is a
  problem about the whole body, so those use the same shape with the path ``""``.
- Any other HTTP error (404, 405 …) keeps Werkzeug's response, headers included (``Allow`` on
  405), with a problem body of type ``about:blank``.
- A database error is 503 when the database has no schema (``schema-missing``, naming
  ``overhead-service init-db``) or cannot be reached (``database-unavailable``); any other is
  unexpected.
- Anything unexpected is logged and answers a 500 problem.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge
from werkzeug.wrappers import Response as WerkzeugResponse

from overhead_service import jsonio
from overhead_service.errors import PROBLEM_BASE, InputError, http_status, problem
from overhead_service.extensions import get_store

__all__ = [
    "INIT_DB_HINT",
    "PROBLEM_JSON",
    "BodyTimeout",
    "MalformedBody",
    "MalformedJSON",
    "PayloadTooLarge",
    "QueryTooLong",
    "UnsupportedMediaType",
    "http_problem",
    "init_app",
    "problem_response",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
INIT_DB_HINT = (
    "the database has no schema (or an older one): run `overhead-service init-db` with the same "
    "DATABASE_URL (`overhead-service serve` runs it before its workers start)"
)


class MalformedJSON(InputError):
    """The request body is not a JSON document."""

    status = 400
    kind = "malformed-json"
    title = "Malformed JSON"


class MalformedBody(InputError):
    """The request body could not be read: broken chunked framing, or shorter than announced."""

    status = 400
    kind = "malformed-body"
    title = "Malformed body"


class BodyTimeout(InputError):
    """The request body did not arrive in time (the server's read deadline)."""

    status = 408
    kind = "request-timeout"
    title = "Request timeout"


class QueryTooLong(InputError):
    """The query string is longer than the API takes."""

    status = 414
    kind = "uri-too-long"
    title = "URI too long"


class UnsupportedMediaType(InputError):
    """The request body is not declared as JSON."""

    status = 415
    kind = "unsupported-media-type"
    title = "Unsupported media type"


class PayloadTooLarge(InputError):
    """The request body is larger than ``MAX_CONTENT_LENGTH``."""

    status = 413
    kind = "payload-too-large"
    title = "Payload too large"


def http_problem(status: int, title: str, detail: str) -> dict[str, Any]:
    """A problem document for an HTTP-level error that has no input path."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def problem_response(error: InputError, status: int | None = None) -> Response:
    """The problem response for ``error`` (status: ``status``, else its own, :func:`http_status`)."""
    status = http_status(error) if status is None else status
    body = jsonio.dumps(problem(error, status=status))
    return current_app.response_class(body, status=status, mimetype=PROBLEM_JSON)


def _on_input_error(error: InputError) -> Response:
    return problem_response(error)


def _on_too_large(error: RequestEntityTooLarge) -> Response:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return problem_response(PayloadTooLarge("", f"request body is larger than {limit} bytes"))


def _on_http_exception(error: HTTPException) -> WerkzeugResponse:
    # Keep Werkzeug's response (and its headers, e.g. Allow on 405); replace only the body.
    response = error.get_response()
    status = error.code or 500
    response.set_data(jsonio.dumps(http_problem(status, error.name, error.description or error.name)))
    response.mimetype = PROBLEM_JSON
    return response


def _on_database_error(error: SQLAlchemyError) -> WerkzeugResponse:
    # Checked only now that a query failed: the schema is created outside the workers, and a
    # process started without it (a bare gunicorn on the factory) answers until it exists.
    store = get_store()
    if store.ping() and not store.schema_ready():
        kind, title, detail = "schema-missing", "Schema missing", INIT_DB_HINT
    elif isinstance(error, OperationalError):
        kind, title = "database-unavailable", "Database unavailable"
        detail = "the database cannot be reached; /readyz says what fails"
    else:
        return _on_unexpected(error)
    log.warning("database error answered 503 %s: %s", kind, error.__class__.__name__)
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": 503, "detail": detail}
    return current_app.response_class(jsonio.dumps(body), status=503, mimetype=PROBLEM_JSON)


def _on_unexpected(error: Exception) -> WerkzeugResponse:
    log.exception("unexpected error while answering a request", exc_info=error)
    return _on_http_exception(InternalServerError())


def init_app(app: Flask) -> None:
    """Register the problem+json error handlers."""
    app.register_error_handler(InputError, _on_input_error)
    app.register_error_handler(RequestEntityTooLarge, _on_too_large)
    app.register_error_handler(HTTPException, _on_http_exception)
    app.register_error_handler(SQLAlchemyError, _on_database_error)
    app.register_error_handler(Exception, _on_unexpected)
