"""The client's public face: the API's calls by name, the local fallback for those on KubeVirt's
VM-start path, and the client's lifecycle.  Sending, retrying and the breaker are
:mod:`overhead_service.client.transport`'s."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from overhead_service.client.breaker import CircuitBreaker
from overhead_service.client.errors import ServiceUnavailable
from overhead_service.client.fallback import LocalFallback
from overhead_service.client.transport import Backoff, Policy, Transport, limits

__all__ = ["LOCAL_FALLBACK", "SERVICE", "OverheadClient"]

log = logging.getLogger("overhead_service.client")

SERVICE: Final = "service"
LOCAL_FALLBACK: Final = "local-fallback"


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
        self.fallback = fallback
        self.local = LocalFallback(default_table=fallback_table, default_arch=fallback_arch)
        self._read = limits(timeout, deadline)
        self._write = limits(write_timeout, write_deadline)
        headers = {
            "Accept": "application/json, application/problem+json",
            "User-Agent": "overhead-service-client/0.1",
        }
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # urllib3 retries nothing itself: every retry decision is made by the transport, by policy.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # stateless API
        self._transport = Transport(
            base_url.rstrip("/"),
            headers,
            session,
            retries=retries,
            backoff=backoff if backoff is not None else Backoff(),
            breaker=None if breaker is False else breaker if breaker is not None else CircuitBreaker(),
            rng=rng if rng is not None else random.Random(),
        )

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def session(self) -> requests.Session:
        return self._transport.session

    @property
    def retries(self) -> int:
        return self._transport.retries

    @property
    def backoff(self) -> Backoff:
        return self._transport.backoff

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._transport.breaker

    # -- the VM-start path: always an answer ------------------------------------------------------

    def overhead(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/overhead``: the overhead of one VMI (a request as in the API)."""
        return self._answer("/v1/overhead", request, lambda: self.local.overhead(request), "overhead")

    def overhead_batch(
        self, items: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]]
    ) -> dict[str, Any]:
        """``POST /v1/overhead/batch``: ``{"items": [answer or problem, ...]}`` in order.

        ``items``: the requests, or the HTTP body itself (``{"items": [request, ...]}``).
        """
        batch = _batch_items(items)

        def local() -> tuple[dict[str, Any], list[str]]:
            answers, notes = self.local.overhead_batch(batch)
            return {"items": answers}, notes

        return self._answer("/v1/overhead/batch", {"items": batch}, local, "overhead batch")

    def render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/render``: the launcher pod's compute-container resources for one VMI."""
        return self._answer("/v1/render", request, lambda: self.local.render(request), "render")

    def _answer(
        self, path: str, body: Any, local: Callable[[], tuple[dict[str, Any], list[str]]], what: str
    ) -> dict[str, Any]:
        """The service's answer to ``POST path``, else (if the client falls back) ``local()``'s."""
        try:
            answer = self._transport.call("POST", path, body, Policy.SAFE, self._read)
        except ServiceUnavailable as err:
            if not self.fallback:
                raise
            answer, notes = local()
            return _fallen_back(answer, err, notes, what)
        answer["source"] = SERVICE
        return answer

    # -- measurements and tables: the service's answer, or an exception ---------------------------

    def upload_measurements(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """``POST /v1/measurements`` (role ``ingest``): ``{"stored", "duplicates", "duplicateKeys"}``.

        Retried like a computation: the service stores each (runId, sampleId) once, so records
        stored by an attempt whose answer was lost come back as ``duplicates`` of the retry.
        """
        body = {"records": list(records)}
        return self._transport.call("POST", "/v1/measurements", body, Policy.SAFE, self._write)

    def tables(self) -> dict[str, Any]:
        """``GET /v1/tables``: every table's summary, the active ones, and the default."""
        return self._transport.call("GET", "/v1/tables", None, Policy.SAFE, self._read)

    def table(self, table_id: str) -> dict[str, Any]:
        """``GET /v1/tables/{id}``: one table document; :class:`NotFound` if there is none."""
        return self._transport.call("GET", f"/v1/tables/{_segment(table_id)}", None, Policy.SAFE, self._read)

    def activations(
        self, *, hypervisor: str | None = None, arch: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /v1/activations``: the active tables and the history, newest first."""
        params = {"hypervisor": hypervisor, "arch": arch, "limit": limit}
        query = {key: str(value) for key, value in params.items() if value is not None}
        return self._transport.call("GET", "/v1/activations", None, Policy.SAFE, self._read, params=query)

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
        return self._transport.call("POST", "/v1/fits", body, Policy.FIT, self._write)

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
        return self._transport.call("POST", path, body, Policy.UNSENT, self._write)

    def rollback(
        self, table_id: str, hypervisor: str, arch: str, *, reason: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/tables/{id}/rollback`` (role ``admin``); retried as :meth:`activate` is."""
        body: dict[str, Any] = {"hypervisor": hypervisor, "arch": arch}
        if reason is not None:
            body["reason"] = reason
        path = f"/v1/tables/{_segment(table_id)}/rollback"
        return self._transport.call("POST", path, body, Policy.UNSENT, self._write)

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
