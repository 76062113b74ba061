"""The load generators of the load benchmark (:mod:`benchmarks.bench_load`), and their result.

``wrk`` (a Lua script, ``--latency``) when installed, else a built-in client: one thread driving
raw HTTP/1.1 keep-alive sockets through epoll, so that a Python client costs as little CPU as it
can. Every :class:`Result` names the client that produced it.
"""

from __future__ import annotations

import math
import selectors
import socket
import subprocess
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Result", "http_request", "median_round", "parse_wrk", "percentile", "python_load", "wrk_load"]

# Answers still in flight when a level's time is up may finish within this grace period.
DRAIN_SECONDS = 10.0


@dataclass
class Result:
    """One endpoint loaded at one concurrency level, by one client."""

    endpoint: str
    connections: int
    client: str  # "wrk" or "python": which load generator produced these figures
    seconds: float  # from the first request to the last answer counted
    answers: int  # every complete HTTP answer, whatever its status
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int  # connect/read/write failures and timeouts: no answer at all
    statuses: dict[str, int] = field(default_factory=dict)  # python client: per status code


# --- the built-in client -------------------------------------------------------------------------


def http_request(method: str, path: str, port: int, body: bytes | None = None) -> bytes:
    """One HTTP/1.1 keep-alive request, encoded once so that the load loop only copies bytes."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class _Connection:
    """A client socket and the state of its one outstanding request (no pipelining)."""

    __slots__ = (
        "sock", "events", "pending", "sent_at", "buffer", "header_end", "body_length", "status", "close"
    )  # fmt: skip

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.events = 0  # what the selector waits for on this socket
        self.pending = memoryview(b"")
        self.sent_at = 0.0
        self.buffer = bytearray()
        self.header_end = -1
        self.body_length = -1  # -1: unknown yet; -2: chunked
        self.status = 0
        self.close = False

    def start(self, request: bytes) -> None:
        self.pending = memoryview(request)
        self.buffer.clear()
        self.header_end = -1
        self.body_length = -1
        self.sent_at = time.perf_counter()

    def complete(self) -> bool:
        """Whether ``buffer`` holds a whole answer (parses the head the first time it is there)."""
        if self.header_end < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            self.header_end = end + 4
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            self.close = b"\r\nconnection: close" in head
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                self.body_length = int(head[marker + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.body_length = -2
            else:
                raise RuntimeError("an answer with neither Content-Length nor chunked encoding")
        if self.body_length == -2:
            return self.buffer.endswith(b"\r\n0\r\n\r\n")
        return len(self.buffer) >= self.header_end + self.body_length


def python_load(port: int, requests: Sequence[bytes], connections: int, seconds: float) -> Result:
    """Keep ``connections`` sockets busy for ``seconds``, cycling through ``requests``.

    One thread and epoll: the client spends its CPU on the bytes, not on thread switches. A
    connection the server drops counts as a socket error and is opened again.
    """
    load = _EpollLoad(port, requests, seconds)
    try:
        load.run(connections)
    finally:
        load.close()
    return load.result(connections)


class _EpollLoad:
    """The state of one :func:`python_load` run: the sockets, the answers and their latencies."""

    def __init__(self, port: int, requests: Sequence[bytes], seconds: float) -> None:
        self.port = port
        self.requests = requests
        self.selector = selectors.DefaultSelector()
        self.latencies = array("d")
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.turn = 0
        self.open_count = 0
        self.start = time.perf_counter()
        self.last_answer = self.start
        self.stop_at = time.monotonic() + seconds

    def run(self, connections: int) -> None:
        for _ in range(connections):
            self._open()
        while self.open_count:
            if time.monotonic() > self.stop_at + DRAIN_SECONDS:
                self.errors += self.open_count  # answers that never came: timeouts
                return
            for key, events in self.selector.select(timeout=0.5):
                self._on_ready(key.data, events)

    def _open(self) -> None:
        conn = _Connection(self.port)
        conn.events = selectors.EVENT_WRITE
        self.selector.register(conn.sock, conn.events, conn)
        self.open_count += 1
        self._begin(conn)

    def _begin(self, conn: _Connection) -> None:
        conn.start(self.requests[self.turn % len(self.requests)])
        self.turn += 1
        self._send(conn)

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            sent = 0
        conn.pending = conn.pending[sent:]
        wanted = selectors.EVENT_WRITE if conn.pending else selectors.EVENT_READ
        if wanted != conn.events:  # an epoll_ctl only when it changes (rarely: requests fit a buffer)
            self.selector.modify(conn.sock, wanted, conn)
            conn.events = wanted

    def _drop(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.open_count -= 1

    def _replace(self, conn: _Connection) -> None:
        """Close ``conn``; open another in its place while there is time left."""
        self._drop(conn)
        if time.monotonic() < self.stop_at:
            self._open()

    def _on_ready(self, conn: _Connection, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self._send(conn)
                return
            data = conn.sock.recv(262144)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            conn.buffer += data
            if not conn.complete():
                return
        except OSError:
            self.errors += 1
            self._replace(conn)
            return
        finished = time.perf_counter()
        self.latencies.append(finished - conn.sent_at)
        self.statuses[conn.status] += 1
        self.last_answer = finished
        if conn.close:
            self._replace(conn)
        elif time.monotonic() < self.stop_at:
            self._begin(conn)
        else:
            self._drop(conn)

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

    def result(self, connections: int) -> Result:
        ordered = sorted(self.latencies)
        elapsed = max(self.last_answer - self.start, 1e-9)
        return Result(
            endpoint="",
            connections=connections,
            client="python",
            seconds=elapsed,
            answers=len(ordered),
            rps=len(ordered) / elapsed,
            p50_ms=percentile(ordered, 50) * 1e3,
            p90_ms=percentile(ordered, 90) * 1e3,
            p99_ms=percentile(ordered, 99) * 1e3,
            max_ms=(ordered[-1] if ordered else math.nan) * 1e3,
            non_2xx=sum(n for status, n in self.statuses.items() if not 200 <= status < 300),
            socket_errors=self.errors,
            statuses={str(status): n for status, n in sorted(self.statuses.items())},
        )


def median_round(rounds: Sequence[Result]) -> Result:
    """The round with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values (nan when there are none)."""
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(pct / 100 * len(ordered)) - 1, 0)]


# --- wrk -----------------------------------------------------------------------------------------

# done() runs once after the run, in wrk's main Lua state: the figures come out as one line, in
# microseconds, rather than parsed from wrk's rounded human-readable report. "status" is wrk's
# count of answers with a status above 399 (what wrk's "Non-2xx or 3xx responses" line shows; these
# endpoints never answer 1xx or 3xx, so that is every non-2xx answer).
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK-RESULT %d %d %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""

# Several distinct bodies: wrk builds each request once per thread (wrk.format), and request()
# hands them out in turn, each thread from its own offset.
_WRK_MIX = """
local threads = 0
setup = function(thread)
  thread:set("offset", threads * 101)
  threads = threads + 1
end
local prepared = {}
local turn = 0
init = function(args)
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format("POST", PATH, {["Content-Type"] = "application/json"}, body)
  end
  turn = offset or 0
end
request = function()
  turn = turn % #prepared + 1
  return prepared[turn]
end
"""


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal (JSON from json.dumps is ASCII: only \\ and " to escape)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def wrk_script(path: str, bodies: Sequence[str] | None) -> str:
    """The Lua script: done() always; for POST the bodies, cycled. A GET stays a static request
    (no request() function), which is wrk's fastest path."""
    if bodies is None:
        return _WRK_DONE
    table = ",\n".join(lua_string(body) for body in bodies)
    return f"PATH = {lua_string(path)}\nbodies = {{\n{table}\n}}\n{_WRK_MIX}{_WRK_DONE}"


def parse_wrk(output: str, connections: int) -> Result:
    """The figures of the WRK-RESULT line that the script's done() printed."""
    for line in output.splitlines():
        if line.startswith("WRK-RESULT "):
            values = [int(v) for v in line.split()[1:]]
            break
    else:
        raise RuntimeError(f"wrk printed no result line:\n{output}")
    answers, duration_us, p50, p90, p99, maximum, status, connect, read, write, timeout = values
    seconds = duration_us / 1e6
    return Result(
        endpoint="",
        connections=connections,
        client="wrk",
        seconds=seconds,
        answers=answers,
        rps=answers / seconds if seconds else math.nan,
        p50_ms=p50 / 1e3,
        p90_ms=p90 / 1e3,
        p99_ms=p99 / 1e3,
        max_ms=maximum / 1e3,
        non_2xx=status,
        socket_errors=connect + read + write + timeout,
    )


def wrk_load(port: int, path: str, bodies: Sequence[str] | None, connections: int, seconds: float) -> Result:
    """Run wrk (two threads at most: the machine's CPUs belong to the server too)."""
    with tempfile.TemporaryDirectory(prefix="bench-load-wrk-") as tmp:
        script = Path(tmp) / "load.lua"
        script.write_text(wrk_script(path, bodies))
        command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += ["--timeout", "10s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=seconds + 30)
        finally:
            if process.poll() is None:  # interrupted or hung: wrk must not outlive the benchmark
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{output}")
    return parse_wrk(output, connections)
