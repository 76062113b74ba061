"""Every exception the client raises, in one place.

::

    ClientError                       base class of the client's exceptions
    ├── ProblemError                  the service (or the local fallback) refused the request:
    │   │                             an RFC 9457 problem; .status .type .title .detail .field .errors
    │   ├── BadRequest                400 body is not JSON
    │   ├── Unauthorized              401 missing or unknown bearer token
    │   ├── Forbidden                 403 token of the wrong role, or writes disabled
    │   ├── NotFound                  404 no such table (or route)
    │   ├── Conflict                  409 refused by the current state (activation bar, rollback)
    │   ├── PayloadTooLarge           413 body larger than the service accepts
    │   ├── UnsupportedMediaType      415 body not declared JSON
    │   └── InvalidInput              422 a field is wrong; .field is its JSON path
    └── ServiceUnavailable            no usable answer within the call's deadline; .attempts .cause
        ├── TransportError            connection refused or reset, timeout, response cut short
        ├── ServerError               5xx, or 429 still refused after the retries; .status
        ├── BadResponse               a 2xx that is not the JSON the API promises
        └── CircuitOpen               not attempted: the circuit breaker is open

A :class:`ProblemError` is never retried and never answered from the local fallback: the input is
wrong and would be wrong again.  A :class:`ServiceUnavailable` is what ``overhead``,
``overhead_batch`` and ``render`` answer from the local fallback instead of raising (unless the
client was built with ``fallback=False``); the other methods raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BadRequest",
    "BadResponse",
    "CircuitOpen",
    "ClientError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "ProblemError",
    "ServerError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
    "problem_error",
]


class ClientError(Exception):
    """Base class of the client's exceptions."""


class ProblemError(ClientError):
    """A problem document: the request itself is wrong (any 4xx but 429).

    ``field`` is the JSON path of the first problem (``errors[0].path``; ``""`` for the body as a
    whole, ``None`` when the document names none); ``errors`` holds every ``{"path", "message"}``.
    """

    def __init__(self, document: Mapping[str, Any], status: int) -> None:
        self.status = status
        self.document = dict(document)
        self.type = _text(document.get("type"), "about:blank")
        self.title = _text(document.get("title"), f"HTTP {status}")
        self.detail = _text(document.get("detail"), self.title)
        raw = document.get("errors")
        self.errors: list[dict[str, str]] = [
            {"path": _text(e.get("path"), ""), "message": _text(e.get("message"), "")}
            for e in (raw if isinstance(raw, list) else ())
            if isinstance(e, dict)
        ]
        self.field: str | None = self.errors[0]["path"] if self.errors else None
        super().__init__(f"{status} {self.title}: {self.detail}")


class BadRequest(ProblemError):
    """400: the body is not JSON."""


class Unauthorized(ProblemError):
    """401: a write without a valid bearer token."""


class Forbidden(ProblemError):
    """403: the token's role may not do this, or the service has writes disabled."""


class NotFound(ProblemError):
    """404: no such table."""


class Conflict(ProblemError):
    """409: the request conflicts with the current state (activation refused, nothing to roll back)."""


class PayloadTooLarge(ProblemError):
    """413: the body is larger than the service's ``MAX_CONTENT_LENGTH``."""


class UnsupportedMediaType(ProblemError):
    """415: the body was not declared as JSON."""


class InvalidInput(ProblemError):
    """422: a field of the request is invalid; ``field`` is its JSON path."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
}


def problem_error(document: Mapping[str, Any], status: int) -> ProblemError:
    """The :class:`ProblemError` subclass for ``status`` carrying ``document``."""
    return _BY_STATUS.get(status, ProblemError)(document, status)


class ServiceUnavailable(ClientError):
    """The service gave no usable answer within the call's deadline and retries.

    ``attempts`` is how many requests were sent (0: none, e.g. the circuit was open), ``cause``
    the last failure's underlying exception, if any.
    """

    def __init__(self, message: str, *, attempts: int = 0, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.cause = cause


class TransportError(ServiceUnavailable):
    """The connection failed: refused, reset, timed out, or the response was cut short."""


class ServerError(ServiceUnavailable):
    """The service answered 5xx (or kept answering 429); ``status`` is the last status."""

    def __init__(self, message: str, *, status: int, attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status


class BadResponse(ServiceUnavailable):
    """A 2xx answer that is not the JSON object the API promises (a proxy's page, a cut body)."""


class CircuitOpen(ServiceUnavailable):
    """Not attempted: the circuit breaker is open after consecutive failures."""


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default
