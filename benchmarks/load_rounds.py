"""Two rounds of ``benchmarks/bench_load.py`` beyond throughput: slow clients, and a soak.

- :func:`slow_round`: ``connections`` sockets trickle a request a byte a second (half of them the
  head, half the body of a request whose head came whole) while a normal client, on a fresh
  connection each time, asks ``GET /healthz`` and ``POST /v1/overhead`` in turn; its latency is
  measured before (baseline) and during the trickle. Each slow connection is followed until the
  server answers or closes it: how many were answered 408, how many closed, and after how long.
- :func:`soak_round`: for ``seconds``, ``clients`` threads send the hot path back to back
  (overhead, render, batches of 100) while an operator thread uploads 50 new records every 0.5 s,
  scrapes ``/metrics`` every second and fits a table every 15 s; each answer's status and latency
  are counted; then every record an upload acknowledged is looked for in
  ``GET /v1/measurements`` (nothing accepted may be lost), and the workers' memory is compared
  with what it was before.

Loopback only, bounded by their ``seconds`` (plus the server's read deadline for the slow round).
"""

from __future__ import annotations

import itertools
import json
import math
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from http.client import HTTPConnection
from typing import Any

import requests

from benchmarks.harness.rawhttp import read_answer, request_head
from benchmarks.harness.records import qemu_records
from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN

__all__ = ["rounds_ok", "slow_report", "slow_round", "soak_report", "soak_round"]

JSON = {"Content-Type": "application/json"}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}

    def pick(pct: float) -> float:
        return round(ordered[max(math.ceil(pct / 100 * len(ordered)) - 1, 0)] * 1e3, 2)

    return {
        "count": len(ordered),
        "p50_ms": pick(50),
        "p99_ms": pick(99),
        "max_ms": round(ordered[-1] * 1e3, 2),
    }


# --- slow clients ----------------------------------------------------------------------------------


def _fresh_client(port: int, body: bytes, stop: threading.Event, timeout: float) -> dict[str, Any]:
    """Alternate GET /healthz and POST /v1/overhead on fresh connections, 20 a second, until
    ``stop``; latencies of the answers, and the failures (no answer within ``timeout``, or non-2xx)."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    for turn in itertools.count():
        if stop.is_set():
            break
        method, path, payload = ("GET", "/healthz", None) if turn % 2 == 0 else ("POST", "/v1/overhead", body)
        started = time.perf_counter()
        connection = HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request(method, path, body=payload, headers=JSON if payload else {})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures[f"status {response.status}"] += 1
        except OSError as err:
            failures[type(err).__name__] += 1
        finally:
            connection.close()
        stop.wait(0.05)
    return {**_percentiles(latencies), "failures": dict(failures)}


def _measure_fresh(port: int, body: bytes, timeout: float) -> tuple[threading.Event, list[Any]]:
    """:func:`_fresh_client` in a thread: ``(stop, [thread, result once joined])``."""
    stop = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(_fresh_client(port, body, stop, timeout)), daemon=True
    )
    thread.start()
    result.append(thread)
    return stop, result


def _slow_connections(port: int, body: bytes, connections: int) -> dict[socket.socket, bytes]:
    """Open the slow connections; each with what it still has to trickle: half of them the head
    of a request, the other half the body of one whose head went whole."""
    head = request_head("GET", "/healthz", {"X-Slow": "a" * 200})
    body_head = request_head("POST", "/v1/overhead", {**JSON, "Content-Length": str(len(body))})
    pending: dict[socket.socket, bytes] = {}
    for index in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if index % 2:
            pending[sock] = head
        else:
            sock.sendall(body_head)
            pending[sock] = body
    return pending


def slow_round(
    port: int, body: bytes, connections: int, seconds: float, baseline_seconds: float = 3
) -> dict[str, Any]:
    """The slow-client round (module docstring); ``seconds`` bounds how long slow connections are
    followed (the server should cut them at its read deadline well before)."""
    stop, holder = _measure_fresh(port, body, timeout=5)
    time.sleep(baseline_seconds)
    stop.set()
    holder[0].join()
    baseline = holder[1]

    pending = _slow_connections(port, body, connections)
    sockets = list(pending)
    started = time.monotonic()
    ended: dict[socket.socket, tuple[float, int | None]] = {}  # when, and the status answered
    stop, holder = _measure_fresh(port, body, timeout=5)
    try:
        next_byte = started
        while len(ended) < connections and time.monotonic() - started < seconds:
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for sock in sockets:
                    rest = pending[sock]
                    if sock not in ended and rest:
                        try:
                            sock.send(rest[:1])
                            pending[sock] = rest[1:]
                        except OSError:
                            ended[sock] = (time.monotonic() - started, None)
            waiting = [sock for sock in sockets if sock not in ended]
            readable, _, _ = select.select(waiting, [], [], max(next_byte - time.monotonic(), 0.01))
            for sock in readable:
                answer = read_answer(sock, 2)
                ended[sock] = (time.monotonic() - started, answer.status if answer is not None else None)
    finally:
        stop.set()
        holder[0].join()
        for sock in sockets:
            sock.close()
    times = sorted(when for when, _ in ended.values())
    return {
        "connections": connections,
        "followed_seconds": seconds,
        "baseline": baseline,
        "during": holder[1],
        "answered": dict(Counter(str(status) for _, status in ended.values())),
        "still_open": connections - len(ended),
        "closed_after_s": {
            "min": round(times[0], 1) if times else None,
            "median": round(times[len(times) // 2], 1) if times else None,
            "max": round(times[-1], 1) if times else None,
        },
    }


# --- soak ------------------------------------------------------------------------------------------


class _Soak:
    """Shared state of the soak's threads."""

    def __init__(self, base_url: str, bodies: Sequence[bytes], deadline: float) -> None:
        self.base_url = base_url
        self.bodies = bodies
        self.deadline = deadline
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.statuses: dict[str, Counter[str]] = {}
        self.acknowledged: set[tuple[str, str]] = set()
        self.batch = json.dumps({"items": [json.loads(b) for b in bodies[:100]]}).encode()

    def call(self, operation: str, send: Callable[[], requests.Response]) -> requests.Response | None:
        """``send()``, its status and latency counted under ``operation``."""
        started = time.perf_counter()
        try:
            response = send()
        except requests.RequestException as err:
            self._note(operation, type(err).__name__, 0.0)
            return None
        self._note(operation, str(response.status_code), time.perf_counter() - started)
        return response

    def _note(self, operation: str, status: str, seconds: float) -> None:
        with self.lock:
            self.statuses.setdefault(operation, Counter())[status] += 1
            if status.startswith("2"):
                self.latencies.setdefault(operation, []).append(seconds)


def _hot_path(state: _Soak, index: int) -> None:
    """What virt-controller asks, back to back: per 20 requests 16 overhead, 3 render, 1 batch of 100."""
    plan = ["overhead"] * 16 + ["render"] * 3 + ["batch"]
    url = state.base_url
    with requests.Session() as session:
        for turn in itertools.count(index * 7):
            if time.monotonic() >= state.deadline:
                return
            operation = plan[turn % len(plan)]
            body = state.batch if operation == "batch" else state.bodies[turn % len(state.bodies)]
            path = "/v1/overhead/batch" if operation == "batch" else f"/v1/{operation}"
            state.call(operation, partial(session.post, url + path, data=body, headers=JSON, timeout=60))


def _operator(state: _Soak, upload_every: float, scrape_every: float, fit_every: float) -> None:
    """Everything else, at its own pace: uploads of 50 new records, scrapes, fits (once 300
    records are stored)."""
    ingest = {"Authorization": f"Bearer {INGEST_TOKEN}", **JSON}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", **JSON}
    fit = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "target": 0.99}
    url = state.base_url
    due = dict.fromkeys(("upload", "metrics", "fit"), time.monotonic())
    every = {"upload": upload_every, "metrics": scrape_every, "fit": fit_every}
    with requests.Session() as session:
        for batch in itertools.count():
            operation = min(due, key=due.__getitem__)
            wait = due[operation] - time.monotonic()
            if time.monotonic() + max(wait, 0) >= state.deadline:
                return
            if wait > 0:
                time.sleep(wait)
            due[operation] += every[operation]
            if operation == "metrics":
                state.call("metrics", lambda: session.get(url + "/metrics", timeout=30))
            elif operation == "fit":
                if len(state.acknowledged) < 300:  # too few samples yet: look again in a second
                    due["fit"] += 1.0 - every["fit"]
                else:
                    state.call(
                        "fit", lambda: session.post(url + "/v1/fits", json=fit, headers=admin, timeout=120)
                    )
            else:
                records = qemu_records(50, run=f"soak-{batch}", seed=batch)
                send = partial(
                    session.post,
                    url + "/v1/measurements",
                    json={"records": records},
                    headers=ingest,
                    timeout=60,
                )
                answer = state.call("upload", send)
                if answer is not None and answer.status_code == 200:
                    state.acknowledged.update((r["runId"], r["sampleId"]) for r in records)


def _sample_memory(
    server: GunicornServer,
    state: _Soak,
    memory: Callable[[GunicornServer], dict[str, Any]],
    timeline: list[dict[str, Any]],
) -> None:
    """The workers' RSS six times during the soak: does it level off?"""
    started = time.monotonic()
    step = (state.deadline - started) / 6
    while time.monotonic() + step <= state.deadline + 0.5:
        time.sleep(step)
        sizes = memory(server)["workers"]
        timeline.append({"at_s": round(time.monotonic() - started), "rss_mib": [w["rss"] for w in sizes]})


def stored_keys(base_url: str) -> set[tuple[str, str]]:
    """Every (runId, sampleId) stored, read page by page from GET /v1/measurements."""
    keys: set[tuple[str, str]] = set()
    cursor: str | None = None
    with requests.Session() as session:
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = session.get(f"{base_url}/v1/measurements", params=params, timeout=60)
            page.raise_for_status()
            document = page.json()
            keys.update((item["runId"], item["sampleId"]) for item in document["items"])
            cursor = document["next"]
            if not cursor:
                return keys


def soak_round(
    server: GunicornServer,
    bodies: Sequence[bytes],
    seconds: float,
    clients: int,
    memory: Callable[[GunicornServer], dict[str, Any]],
    *,
    upload_every: float = 0.5,
    scrape_every: float = 1.0,
    fit_every: float = 15.0,
) -> dict[str, Any]:
    """The soak (module docstring); the operator's pace in seconds between its requests."""
    workers_before = sorted(server.worker_pids())
    memory_before = memory(server)
    state = _Soak(server.base_url, bodies, time.monotonic() + seconds)
    threads = [threading.Thread(target=_hot_path, args=(state, i), daemon=True) for i in range(clients)]
    operator = (state, upload_every, scrape_every, fit_every)
    threads.append(threading.Thread(target=_operator, args=operator, daemon=True))
    timeline: list[dict[str, Any]] = []
    threads.append(
        threading.Thread(target=_sample_memory, args=(server, state, memory, timeline), daemon=True)
    )
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    memory_after = memory(server)
    stored = stored_keys(server.base_url)
    lost = state.acknowledged - stored
    operations = {
        name: {"statuses": dict(state.statuses[name]), **_percentiles(state.latencies.get(name, []))}
        for name in sorted(state.statuses)
    }
    return {
        "seconds": round(elapsed, 1),
        "clients": clients,
        "operations": operations,
        "answers": sum(sum(c.values()) for c in state.statuses.values()),
        "errors": sum(
            n for c in state.statuses.values() for status, n in c.items() if not status.startswith("2")
        ),
        "acknowledged_records": len(state.acknowledged),
        "lost_records": len(lost),
        "workers_restarted": sorted(server.worker_pids()) != workers_before,
        "memory_before": memory_before,
        "memory_after": memory_after,
        "memory_timeline": timeline,
    }


# --- reports ---------------------------------------------------------------------------------------


def slow_report(slow: dict[str, Any]) -> str:
    base, during, closed = slow["baseline"], slow["during"], slow["closed_after_s"]
    return "\n".join(
        [
            f"# slow clients: {slow['connections']} connections trickling a byte a second (half the head, "
            "half the body); a fresh client alternates GET /healthz and POST /v1/overhead",
            "fresh client   | answers | p50 ms | p99 ms | max ms | failures",
            f"alone          | {base['count']:7d} | {base['p50_ms']:6.2f} | {base['p99_ms']:6.2f} | "
            f"{base['max_ms']:6.1f} | {base['failures'] or 0}",
            f"with slow ones | {during['count']:7d} | {during['p50_ms']:6.2f} | {during['p99_ms']:6.2f} | "
            f"{during['max_ms']:6.1f} | {during['failures'] or 0}",
            f"slow connections: answered {slow['answered']}, still open after "
            f"{slow['followed_seconds']:g} s: {slow['still_open']}; ended after {closed['min']}-"
            f"{closed['max']} s (median {closed['median']})",
        ]
    )


def soak_report(soak: dict[str, Any]) -> str:
    lines = [
        f"# soak: {soak['seconds']} s, {soak['clients']} hot-path clients and an operator "
        "(uploads, scrapes, fits)",
        "operation | answers | non-2xx | p50 ms | p99 ms | max ms",
    ]
    for name, figures in soak["operations"].items():
        non_2xx = sum(n for status, n in figures["statuses"].items() if not status.startswith("2"))
        answers = sum(figures["statuses"].values())
        lines.append(
            f"{name:<9} | {answers:7d} | {non_2xx:7d} | {figures['p50_ms']:6.2f} | "
            f"{figures['p99_ms']:6.2f} | {figures['max_ms']:6.1f}"
        )
    before, after = soak["memory_before"], soak["memory_after"]
    lines.append(
        f"records acknowledged {soak['acknowledged_records']}, lost {soak['lost_records']}; errors "
        f"{soak['errors']}; workers restarted: {'yes' if soak['workers_restarted'] else 'no'}"
    )
    lines.append(
        "worker RSS MiB during: "
        + "; ".join(
            f"{m['at_s']} s {'/'.join(str(r) for r in m['rss_mib'])}" for m in soak["memory_timeline"]
        )
    )
    lines.append(
        "worker memory RSS/PSS MiB before: "
        + ", ".join(f"{w['rss']}/{w['pss']}" for w in before["workers"])
        + "; after: "
        + ", ".join(f"{w['rss']}/{w['pss']}" for w in after["workers"])
    )
    return "\n".join(lines)


def rounds_ok(slow: dict[str, Any] | None, soak: dict[str, Any] | None) -> bool:
    """The slow round left no fresh request unanswered and no slow connection open; the soak had
    no error and lost no record."""
    if slow is not None and (slow["during"]["failures"] or slow["still_open"]):
        return False
    return soak is None or (soak["errors"] == 0 and soak["lost_records"] == 0)
