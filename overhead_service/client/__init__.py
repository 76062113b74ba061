"""A Python client of overhead-service that never blocks VM start (built on requests).

::

    from overhead_service.client import OverheadClient, InvalidInput

    with OverheadClient("http://overhead-service:8080") as client:
        answer = client.overhead({"vmi": vmi})
        answer["overhead"]["bytes"], answer["source"]   # "service" or "local-fallback"

:class:`OverheadClient` pools connections, bounds every call by a deadline, retries only where it
is safe, and stops calling a failing service for a while (:class:`CircuitBreaker`).
``overhead``, ``overhead_batch`` and ``render`` then answer from the same engine and built-in
tables computed in-process (:class:`LocalFallback`, which documents the table it uses), marked
``"source": "local-fallback"``.  Its exceptions, all in :mod:`overhead_service.client.errors`::

    ClientError
    ├── ProblemError        a 4xx problem document (.status .type .title .detail .field .errors):
    │                       BadRequest 400, Unauthorized 401, Forbidden 403, NotFound 404,
    │                       Conflict 409, PayloadTooLarge 413, UnsupportedMediaType 415,
    │                       InvalidInput 422; never retried, never answered by the fallback
    └── ServiceUnavailable  no usable answer in time (.attempts .cause):
                            TransportError, ServerError (.status), BadResponse, CircuitOpen

This module is imported explicitly (``import overhead_service`` does not load requests).
"""

from __future__ import annotations

from overhead_service.client.breaker import CircuitBreaker, Permit
from overhead_service.client.core import LOCAL_FALLBACK, SERVICE, OverheadClient
from overhead_service.client.errors import (
    BadRequest,
    BadResponse,
    CircuitOpen,
    ClientError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    UnsupportedMediaType,
)
from overhead_service.client.fallback import LocalFallback
from overhead_service.client.transport import Backoff

__all__ = [
    "LOCAL_FALLBACK",
    "SERVICE",
    "Backoff",
    "BadRequest",
    "BadResponse",
    "CircuitBreaker",
    "CircuitOpen",
    "ClientError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "LocalFallback",
    "NotFound",
    "OverheadClient",
    "PayloadTooLarge",
    "Permit",
    "ProblemError",
    "ServerError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
]
