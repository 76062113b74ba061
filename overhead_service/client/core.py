"""The HTTP client: pooled connections, bounded time per call, retries only where safe, a circuit
breaker, and the local fallback for the calls on KubeVirt's VM-start path."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
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
from overhead_service.client.fallback import LocalFallback

__all__ = ["SERVICE", "LOCAL_FALLBACK", "Backoff", "OverheadClient"]

log = logging.getLogger("overhead_service.client")

SERVICE: Final = "service"
LOCAL_FALLBACK: Final = "local-fallback"

# A proxy's endless page must not exhaust memory; the largest real answer (a 10,000-item batch)
# is about 8 MB.
_MAX_ANSWER_BYTES: Final = 256 * 1024 * 1024
_CHUNK: Final = 64 * 1024
_TRANSIENT: Final = frozenset({502, 503, 504})
# An attempt with less time left than this could not get an answer; the call gives up instead.
_MIN_ATTEMPT: Final = 0.01


class _Policy(Enum):
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
class _Limits:
    connect: float
    read: float
    deadline: float


class _DeadlinePassed(Exception):
    """The call's deadline passed while the answer was still arriving."""


@dataclass(slots=True)
class _Failed:
    """One failed attempt: what to raise if it is the last, and whether another may follow."""

    error: ServiceUnavailable | ProblemError
    retryable: bool
    retry_after: float | None = None


class OverheadClient:
    """A client of overhead-service that never blocks VM start.

    ``overhead``, ``overhead_batch`` and ``render`` always answer: from the service
    (``"source": "service"``) or, when it gives no usable answer within ``deadline`` seconds or
    the circuit is open, from the same engine and built-in tables computed in-process
    (``"source": "local-fallback"``, with ``"fallbackReason"`` and, when the fallback had to
    compute with another table than asked, ``"fallbackNotes"``; see
    :mod:`overhead_service.client.fallback` for which table it uses).  Input errors are never
    masked: a 4xx problem from the service, or bad input found locally, raises
    :class:`~overhead_service.client.errors.ProblemError` with the field path.

    Arguments:
        base_url: ``http://host:port`` of the service.
        token: bearer token, needed for uploads (role ``ingest``) and table changes (``admin``).
        timeout: ``(connect, read)`` seconds for one attempt of a read or computation (a single
            number is both); ``deadline`` bounds the whole call, retries and waits included.
        write_timeout, write_deadline: the same for uploads, fits, activations and rollbacks, which
            may legitimately take seconds (a fit over 10⁶ samples).
        retries: at most this many attempts after the first, only where safe: computations, reads,
            uploads (idempotent by design) and fits (named by their content) on connection errors,
            timeouts, 502/503/504 and 429; activations and rollbacks only when the request
            certainly never reached the service (connection refused, connect timeout, 429).
            4xx problems are never retried; nor is a 500 (a bug would fail again), though like
            every failure it counts for the breaker and is answered by the fallback.
        backoff: the delays between attempts (:class:`Backoff`).
        breaker: the :class:`CircuitBreaker` (one per client by default: 5 consecutive failed
            attempts open it for 30 s), or ``False`` for none.
        fallback: answer ``overhead``/``overhead_batch``/``render`` locally when the service fails;
            with ``False`` they raise :class:`~overhead_service.client.errors.ServiceUnavailable`.
        session: a ``requests.Session`` to use as it is (the caller closes it); by default the
            client makes one with a connection pool of ``pool_size`` connections per host, enough
            for that many threads sharing the client.
        fallback_table, fallback_arch: the service's ``DEFAULT_TABLE`` and ``DEFAULT_ARCH``, for
            the local fallback.
        rng: the random source of the jitter (tests pass a seeded one).

    Thread-safe: share one client between threads.  A deadline bounds connecting, waiting and
    reading; name resolution (none for an IP address) is outside it.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | tuple[float, float] = (0.5, 2.0),
        deadline: float = 3.0,
        write_timeout: float | tuple[float, float] = (1.0, 60.0),
        write_deadline: float = 120.0,
        retries: int = 2,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | Literal[False] | None = None,
        fallback: bool = True,
        session: requests.Session | None = None,
        pool_size: int = 16,
        fallback_table: str = "kubevirt-v1.9.0",
        fallback_arch: str = "amd64",
        rng: random.Random | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff if backoff is not None else Backoff()
        self.breaker: CircuitBreaker | None = (
            None if breaker is False else breaker if breaker is not None else CircuitBreaker()
        )
        self.fallback = fallback
        self.local = LocalFallback(default_table=fallback_table, default_arch=fallback_arch)
        self._read = _limits(timeout, deadline)
        self._write = _limits(write_timeout, write_deadline)
        self._rng = rng if rng is not None else random.Random()
        self._headers = {
            "Accept": "application/json, application/problem+json",
            "User-Agent": "overhead-service-client/0.1",
        }
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # urllib3 retries nothing itself: every retry decision is made here, by policy.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # stateless API
        self.session = session

    # -- the VM-start path: always an answer ------------------------------------------------------

    def overhead(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/overhead``: the overhead of one VMI (a request as in the API)."""
        try:
            answer = self._call("POST", "/v1/overhead", request, _Policy.SAFE, self._read)
        except ServiceUnavailable as err:
            if not self.fallback:
                raise
            answer, notes = self.local.overhead(request)
            return _fallen_back(answer, err, notes, "overhead")
        answer["source"] = SERVICE
        return answer

    def overhead_batch(
        self, items: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]]
    ) -> dict[str, Any]:
        """``POST /v1/overhead/batch``: ``{"items": [answer or problem, ...]}`` in order.

        ``items``: the requests, or the HTTP body itself (``{"items": [request, ...]}``).
        """
        items = _batch_items(items)
        try:
            answer = self._call("POST", "/v1/overhead/batch", {"items": items}, _Policy.SAFE, self._read)
        except ServiceUnavailable as err:
            if not self.fallback:
                raise
            answers, notes = self.local.overhead_batch(items)
            return _fallen_back({"items": answers}, err, notes, "overhead batch")
        answer["source"] = SERVICE
        return answer

    def render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/render``: the launcher pod's compute-container resources for one VMI."""
        try:
            answer = self._call("POST", "/v1/render", request, _Policy.SAFE, self._read)
        except ServiceUnavailable as err:
            if not self.fallback:
                raise
            answer, notes = self.local.render(request)
            return _fallen_back(answer, err, notes, "render")
        answer["source"] = SERVICE
        return answer

    # -- measurements and tables: the service's answer, or an exception ---------------------------

    def upload_measurements(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """``POST /v1/measurements`` (role ``ingest``): ``{"stored", "duplicates", "duplicateKeys"}``.

        Retried like a computation: the service stores each (runId, sampleId) once, so records
        stored by an attempt whose answer was lost come back as ``duplicates`` of the retry.
        """
        body = {"records": list(records)}
        return self._call("POST", "/v1/measurements", body, _Policy.SAFE, self._write)

    def tables(self) -> dict[str, Any]:
        """``GET /v1/tables``: every table's summary, the active ones, and the default."""
        return self._call("GET", "/v1/tables", None, _Policy.SAFE, self._read)

    def table(self, table_id: str) -> dict[str, Any]:
        """``GET /v1/tables/{id}``: one table document; :class:`NotFound` if there is none."""
        return self._call("GET", f"/v1/tables/{_segment(table_id)}", None, _Policy.SAFE, self._read)

    def activations(
        self, *, hypervisor: str | None = None, arch: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /v1/activations``: the active tables and the history, newest first."""
        params = {"hypervisor": hypervisor, "arch": arch, "limit": limit}
        query = {key: str(value) for key, value in params.items() if value is not None}
        return self._call("GET", "/v1/activations", None, _Policy.SAFE, self._read, params=query)

    def fit(
        self,
        hypervisor: str,
        arch: str,
        scope: str,
        *,
        parent: str | None = None,
        runs: Sequence[str] | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        target: float | None = None,
        folds: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/fits`` (role ``admin``): ``{"table": summary, "report": fit report}``.

        Retried like a computation: a fitted table is named by its inputs, so asking again returns
        the table the lost attempt stored.
        """
        fields: dict[str, Any] = {
            "parent": parent,
            "runs": None if runs is None else list(runs),
            "since": _timestamp(since),
            "until": _timestamp(until),
            "target": target,
            "folds": folds,
            "seed": seed,
        }
        body = {"hypervisor": hypervisor, "arch": arch, "scope": scope}
        body.update({key: value for key, value in fields.items() if value is not None})
        return self._call("POST", "/v1/fits", body, _Policy.FIT, self._write)

    def activate(
        self, table_id: str, hypervisor: str, arch: str, *, force: bool = False, reason: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/tables/{id}/activate`` (role ``admin``).

        Not idempotent (each activation is recorded and rollback walks them back one by one), so
        it is sent again only when it certainly never reached the service; a lost answer raises
        :class:`TransportError`: read ``activations()`` to see whether it happened.
        """
        body: dict[str, Any] = {"hypervisor": hypervisor, "arch": arch, "force": force}
        if reason is not None:
            body["reason"] = reason
        path = f"/v1/tables/{_segment(table_id)}/activate"
        return self._call("POST", path, body, _Policy.UNSENT, self._write)

    def rollback(
        self, table_id: str, hypervisor: str, arch: str, *, reason: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/tables/{id}/rollback`` (role ``admin``); retried as :meth:`activate` is."""
        body: dict[str, Any] = {"hypervisor": hypervisor, "arch": arch}
        if reason is not None:
            body["reason"] = reason
        path = f"/v1/tables/{_segment(table_id)}/rollback"
        return self._call("POST", path, body, _Policy.UNSENT, self._write)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections (of the client's own session only)."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> OverheadClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # -- one call: attempts, retries, breaker -----------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        policy: _Policy,
        limits: _Limits,
        *,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The decoded JSON answer of ``method path``; raises ProblemError or ServiceUnavailable."""
        data = None if body is None else jsonio.dumps_bytes(body)  # a TypeError here is the caller's
        headers = self._headers if data is None else {**self._headers, "Content-Type": "application/json"}
        url = self.base_url + path
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
            permit = self.breaker.acquire() if self.breaker is not None else None
            if self.breaker is not None and permit is None:
                if failed is not None:
                    break  # opened by this call's own failures: report the last of them
                wait = self.breaker.retry_in()
                raise CircuitOpen(f"circuit open after repeated failures (next probe in {wait:.1f} s)")
            attempts += 1
            ok = False
            try:
                outcome = self._attempt(method, url, data, headers, params, limits, remaining, end, policy)
                ok = not isinstance(outcome, _Failed)
            finally:
                if self.breaker is not None and permit is not None:
                    if ok:
                        self.breaker.success(permit)
                    else:  # a failed attempt, or anything unexpected on the way
                        self.breaker.failure(permit)
            if isinstance(outcome, _Failed):
                failed = outcome
                continue
            status, document = outcome
            if status < 400:
                return document
            problem = problem_error(document, status)
            if policy is _Policy.FIT and retry > 0 and status == 409 and _is_table_exists(document):
                # A retry raced its own first attempt (still running on the service) to store the
                # same content-named table; that table is stored now, and asking again returns it.
                failed = _Failed(problem, retryable=True, retry_after=0.0)
                continue
            raise problem
        if failed is None:  # a deadline too short for even one attempt
            raise TransportError(f"{method} {url}: deadline of {limits.deadline} s too short to try")
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
            wait = self.backoff.delay(retry, self._rng)
        return None if time.monotonic() + wait >= end else wait

    def _attempt(
        self,
        method: str,
        url: str,
        data: bytes | None,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        limits: _Limits,
        remaining: float,
        end: float,
        policy: _Policy,
    ) -> tuple[int, dict[str, Any]] | _Failed:
        """One request: ``(status, decoded body)`` for 2xx and 4xx answers, else a :class:`_Failed`."""
        try:
            response = self.session.request(
                method,
                url,
                data=data,
                headers=headers,
                params=params,
                timeout=(min(limits.connect, remaining), min(limits.read, remaining)),
                stream=True,  # read below in chunks, against the deadline
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            unsent = _never_sent(exc)
            return _Failed(
                TransportError(f"{method} {url}: {_describe(exc)}", cause=exc),
                retryable=unsent or policy is not _Policy.UNSENT,
            )
        with response:
            status = response.status_code
            try:
                raw = _read(response, end)
            except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeout, reset, cut short
                error = TransportError(
                    f"{method} {url}: answer {status} cut short: {_describe(exc)}", cause=exc
                )
                return _Failed(error, retryable=policy is not _Policy.UNSENT)
            except _DeadlinePassed as exc:
                error = TransportError(f"{method} {url}: deadline passed reading the answer", cause=exc)
                return _Failed(error, retryable=False)
            except BadResponse as exc:
                return _Failed(exc, retryable=False)
            retry_after = _retry_after(response.headers.get("Retry-After"))
        if status == 429:  # rate limited: the request was not processed
            return _Failed(
                ServerError(f"{method} {url}: 429 Too Many Requests", status=429),
                retryable=True,
                retry_after=retry_after,
            )
        if status >= 500:
            return _Failed(
                ServerError(f"{method} {url}: {status} {_snippet(raw)}", status=status),
                retryable=status in _TRANSIENT and policy is not _Policy.UNSENT,
                retry_after=retry_after if status == 503 else None,
            )
        document = _decode(raw)
        if 400 <= status < 500:
            if document is None:  # not a problem document (a proxy's page): keep what it said
                document = {"title": response.reason or f"HTTP {status}", "detail": _snippet(raw)}
            return status, document
        if 200 <= status < 300 and document is not None:
            return status, document
        return _Failed(
            BadResponse(f"{method} {url}: {status} answer is not a JSON object: {_snippet(raw)}"),
            retryable=False,
        )


def _limits(timeout: float | tuple[float, float], deadline: float) -> _Limits:
    connect, read = (timeout, timeout) if isinstance(timeout, int | float) else timeout
    if not (connect > 0 and read > 0 and deadline > 0):
        raise ValueError("timeouts and deadlines must be positive")
    return _Limits(float(connect), float(read), float(deadline))


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


def _batch_items(items: Any) -> list[Mapping[str, Any]]:
    """The requests of a batch, given as an iterable of them or as the HTTP body."""
    if isinstance(items, Mapping):
        if set(items) != {"items"}:
            keys = ", ".join(repr(key) for key in items) or "none"
            raise TypeError(
                "overhead_batch takes the requests, or the HTTP body {'items': [request, ...]}; "
                f"got a mapping with keys {keys}"
            )
        items = items["items"]
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise TypeError(f"overhead_batch takes an iterable of requests, got {type(items).__name__}")
    return list(items)


def _fallen_back(
    answer: dict[str, Any], error: ServiceUnavailable, notes: list[str], what: str
) -> dict[str, Any]:
    reason = f"{type(error).__name__}: {error}"
    log.warning("%s answered by the local fallback: %s", what, reason)
    answer["source"] = LOCAL_FALLBACK
    answer["fallbackReason"] = reason
    if notes:
        answer["fallbackNotes"] = notes
    return answer


def _segment(value: str) -> str:
    return quote(value, safe="")


def _timestamp(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _describe(exc: BaseException) -> str:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _snippet(raw: bytes) -> str:
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"
