"""One call to the service: attempts within a deadline, retries where the policy allows, the
circuit breaker around each attempt, and the reading of an answer into a document or a failure.

:class:`Transport` knows nothing of the API's endpoints; :class:`~overhead_service.client.OverheadClient`
names them and decides which may fall back to the local engine.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import requests
import urllib3
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from overhead_service import jsonio
from overhead_service.client.breaker import CircuitBreaker
from overhead_service.client.errors import (
    BadResponse,
    CircuitOpen,
    ProblemError,
    ServerError,
    ServiceUnavailable,
    TransportError,
    problem_error,
)

__all__ = ["Backoff", "Limits", "Policy", "Transport", "limits"]

# A proxy's endless page must not exhaust memory; the largest real answer (a 10,000-item batch)
# is about 8 MB.
_MAX_ANSWER_BYTES: Final = 256 * 1024 * 1024
_CHUNK: Final = 64 * 1024
_TRANSIENT: Final = frozenset({502, 503, 504})
# An attempt with less time left than this could not get an answer; the call gives up instead.
_MIN_ATTEMPT: Final = 0.01


class Policy(Enum):
    """When a failed attempt may be sent again."""

    SAFE = "safe"  # pure computations, reads, idempotent uploads: any transient failure
    FIT = "fit"  # as SAFE; a retry that races its own first attempt may meet 409 table-exists
    UNSENT = "unsent"  # not idempotent: only when the request certainly never reached the service


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: exponential with full jitter, and the service's ``Retry-After``.

    Before retry *n* (1, 2, ...) the client waits a uniformly random time between 0 and
    ``min(cap, base * 2 ** (n - 1))`` seconds.  A 429 or 503 with ``Retry-After`` waits what the
    service asked instead, unless that is more than ``max_retry_after`` or beyond the call's
    deadline: then the call gives up at once rather than sleep in vain.
    """

    base: float = 0.05
    cap: float = 1.0
    max_retry_after: float = 5.0

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0 and self.max_retry_after >= 0):
            raise ValueError("backoff delays must not be negative")

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** (retry - 1)))


@dataclass(frozen=True, slots=True)
class Limits:
    """Seconds: to connect and between reads in one attempt, and for the whole call."""

    connect: float
    read: float
    deadline: float


def limits(timeout: float | tuple[float, float], deadline: float) -> Limits:
    """The limits of a ``timeout`` (one number or ``(connect, read)``) and a ``deadline``."""
    connect, read = (timeout, timeout) if isinstance(timeout, int | float) else timeout
    if not (connect > 0 and read > 0 and deadline > 0):
        raise ValueError("timeouts and deadlines must be positive")
    return Limits(float(connect), float(read), float(deadline))


class _DeadlinePassed(Exception):
    """The call's deadline passed while the answer was still arriving."""


@dataclass(slots=True)
class _Failed:
    """One failed attempt: what to raise if it is the last, and whether another may follow."""

    error: ServiceUnavailable | ProblemError
    retryable: bool
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    """What every attempt of one call sends, and how its failures are retried."""

    method: str
    url: str
    data: bytes | None
    headers: Mapping[str, str]
    params: Mapping[str, str] | None
    policy: Policy
    limits: Limits

    @property
    def may_resend(self) -> bool:
        """Whether a request that may have reached the service can be sent again."""
        return self.policy is not Policy.UNSENT


# An attempt's outcome: the status and document of a 2xx or 4xx answer, or a failure.
_Outcome = tuple[int, dict[str, Any]] | _Failed


class Transport:
    """Sends the calls of one client: ``base_url``, its headers, session, retries and breaker."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        session: requests.Session,
        *,
        retries: int,
        backoff: Backoff,
        breaker: CircuitBreaker | None,
        rng: random.Random,
    ) -> None:
        self.base_url = base_url
        self.headers = dict(headers)
        self.session = session
        self.retries = retries
        self.backoff = backoff
        self.breaker = breaker
        self.rng = rng

    def call(
        self,
        method: str,
        path: str,
        body: Any,
        policy: Policy,
        limits: Limits,
        *,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The decoded JSON answer of ``method path``; raises ProblemError or ServiceUnavailable."""
        data = None if body is None else jsonio.dumps_bytes(body)  # a TypeError here is the caller's
        headers = self.headers if data is None else {**self.headers, "Content-Type": "application/json"}
        request = _Request(method, self.base_url + path, data, headers, params, policy, limits)
        end = time.monotonic() + limits.deadline
        attempts = 0
        failed: _Failed | None = None
        for retry in range(self.retries + 1):
            if failed is not None:
                if not failed.retryable:
                    break
                wait = self._wait(failed, retry, end)
                if wait is None:
                    break
                time.sleep(wait)
            remaining = end - time.monotonic()
            if remaining < _MIN_ATTEMPT:
                break
            outcome = self._attempt_past_breaker(request, remaining, end, failed)
            if outcome is None:
                break  # the breaker opened on this call's own failures: report the last of them
            attempts += 1
            if isinstance(outcome, _Failed):
                failed = outcome
                continue
            status, document = outcome
            if status < 400:
                return document
            problem = problem_error(document, status)
            if policy is Policy.FIT and retry > 0 and status == 409 and _is_table_exists(document):
                # A retry raced its own first attempt (still running on the service) to store the
                # same content-named table; that table is stored now, and asking again returns it.
                failed = _Failed(problem, retryable=True, retry_after=0.0)
                continue
            raise problem
        if failed is None:  # a deadline too short for even one attempt
            raise TransportError(f"{method} {request.url}: deadline of {limits.deadline} s too short to try")
        if isinstance(failed.error, ServiceUnavailable):
            failed.error.attempts = attempts
        raise failed.error

    def _wait(self, failed: _Failed, retry: int, end: float) -> float | None:
        """Seconds to sleep before retry number ``retry``, or None to give up."""
        if failed.retry_after is not None:
            if failed.retry_after > self.backoff.max_retry_after:
                return None
            wait = failed.retry_after
        else:
            wait = self.backoff.delay(retry, self.rng)
        return None if time.monotonic() + wait >= end else wait

    def _attempt_past_breaker(
        self, request: _Request, remaining: float, end: float, failed: _Failed | None
    ) -> _Outcome | None:
        """One attempt if the breaker lets it through, its outcome told to the breaker.

        None when the breaker is open after this call's own failures (``failed``); an open breaker
        before any of them raises :class:`CircuitOpen`.
        """
        breaker = self.breaker
        if breaker is None:
            return self._attempt(request, remaining, end)
        permit = breaker.acquire()
        if permit is None:
            if failed is not None:
                return None
            raise CircuitOpen(
                f"circuit open after repeated failures (next probe in {breaker.retry_in():.1f} s)"
            )
        ok = False
        try:
            outcome = self._attempt(request, remaining, end)
            ok = not isinstance(outcome, _Failed)
        finally:
            if ok:
                breaker.success(permit)
            else:  # a failed attempt, or anything unexpected on the way
                breaker.failure(permit)
        return outcome

    def _attempt(self, request: _Request, remaining: float, end: float) -> _Outcome:
        """One request: ``(status, decoded body)`` for 2xx and 4xx answers, else a :class:`_Failed`."""
        method, url = request.method, request.url
        try:
            response = self.session.request(
                method,
                url,
                data=request.data,
                headers=request.headers,
                params=request.params,
                timeout=(min(request.limits.connect, remaining), min(request.limits.read, remaining)),
                stream=True,  # read below in chunks, against the deadline
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            unsent = _never_sent(exc)
            return _Failed(
                TransportError(f"{method} {url}: {_describe(exc)}", cause=exc),
                retryable=unsent or request.may_resend,
            )
        with response:
            status = response.status_code
            raw = _read_answer(response, end, request)
            if isinstance(raw, _Failed):
                return raw
            retry_after = _retry_after(response.headers.get("Retry-After"))
        return _outcome(request, status, response.reason, raw, retry_after)


def _read_answer(response: requests.Response, end: float, request: _Request) -> bytes | _Failed:
    """The body of ``response``, or the failure that cut it short."""
    label = f"{request.method} {request.url}"
    try:
        return _read(response, end)
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeout, reset, cut short
        error = TransportError(
            f"{label}: answer {response.status_code} cut short: {_describe(exc)}", cause=exc
        )
        return _Failed(error, retryable=request.may_resend)
    except _DeadlinePassed as exc:
        error = TransportError(f"{label}: deadline passed reading the answer", cause=exc)
        return _Failed(error, retryable=False)
    except BadResponse as exc:
        return _Failed(exc, retryable=False)


def _outcome(
    request: _Request, status: int, reason: str | None, raw: bytes, retry_after: float | None
) -> _Outcome:
    """What a whole answer means: a document to return or raise, or a failure to retry or report."""
    label = f"{request.method} {request.url}"
    if status == 429:  # rate limited: the request was not processed
        return _Failed(
            ServerError(f"{label}: 429 Too Many Requests", status=429),
            retryable=True,
            retry_after=retry_after,
        )
    if status >= 500:
        return _Failed(
            ServerError(f"{label}: {status} {_snippet(raw)}", status=status),
            retryable=status in _TRANSIENT and request.may_resend,
            retry_after=retry_after if status == 503 else None,
        )
    document = _decode(raw)
    if 400 <= status < 500:
        if document is None:  # not a problem document (a proxy's page): keep what it said
            document = {"title": reason or f"HTTP {status}", "detail": _snippet(raw)}
        return status, document
    if 200 <= status < 300 and document is not None:
        return status, document
    return _Failed(
        BadResponse(f"{label}: {status} answer is not a JSON object: {_snippet(raw)}"),
        retryable=False,
    )


def _read(response: requests.Response, end: float) -> bytes:
    """The whole body, checking the deadline between reads.

    ``read1`` returns whatever has arrived (``iter_content`` would wait for a whole chunk), and
    each read waits at most the read timeout: a body trickling in costs at most the deadline plus
    one read timeout.  At the end of the body urllib3 puts the connection back in the pool.
    """
    raw = response.raw
    chunks: list[bytes] = []
    size = 0
    while chunk := raw.read1(_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise BadResponse(f"answer larger than {_MAX_ANSWER_BYTES} bytes")
        if time.monotonic() > end:
            raise _DeadlinePassed
    return b"".join(chunks)


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        document = jsonio.loads(raw)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether the request certainly never reached the service (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # NewConnectionError (refused, unreachable) and NameResolutionError subclass ConnectTimeoutError.
    return isinstance(reason, ConnectTimeoutError)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _is_table_exists(document: Mapping[str, Any]) -> bool:
    kind = document.get("type")
    return isinstance(kind, str) and kind.endswith(":table-exists")


def _describe(exc: BaseException) -> str:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _snippet(raw: bytes) -> str:
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"
