"""Hostile and broken clients against a real gunicorn with the project's settings and worker.

- Broken bodies (bad chunk size, end of stream before the last chunk, a missing CRLF, a bad chunk
  extension or trailer, a body shorter than its Content-Length) are 400 problem documents on every
  route that reads a body, neither logged as errors nor counted as 5xx.
- What gunicorn answers before the application (oversized or malformed heads, bad framing
  headers, an over-long request line) is a problem document, never an HTML page; so are a double
  slash, ``OPTIONS`` and ``HEAD``.
- Slow clients trickling heads or bodies a byte at a time hold no thread: a fresh client is
  answered meanwhile, and each slow one gets a 408 problem and is closed after
  ``REQUEST_READ_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from benchmarks.harness.rawhttp import Answer, exchange, read_answer, read_answers, request_head
from benchmarks.harness.server import ROOT, GunicornServer
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN, TOKENS
from overhead_service.errors import PROBLEM_BASE
from overhead_service.worker import MAX_REQUEST_LINE

pytestmark = pytest.mark.gunicorn

READ_SECONDS = 2
PROBLEM = "application/problem+json"
BODY = json.dumps({"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}}).encode()
INGEST = {"Authorization": f"Bearer {INGEST_TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# Every route that reads a body, with what it needs to get as far as reading it.
BODY_ROUTES = {
    "overhead": ("/v1/overhead", {}),
    "batch": ("/v1/overhead/batch", {}),
    "render": ("/v1/render", {}),
    "measurements": ("/v1/measurements", INGEST),
    "fits": ("/v1/fits", ADMIN),
    "evaluate": ("/v1/tables/kubevirt-v1.9.0/evaluate", {}),
    "activate": ("/v1/tables/kubevirt-v1.9.0/activate", ADMIN),
    "rollback": ("/v1/tables/kubevirt-v1.9.0/rollback", ADMIN),
}
CHUNKED = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
BROKEN_BODIES = {
    "bad-chunk-size": (CHUNKED, b"zz\r\n{}\r\n0\r\n\r\n"),
    "eof-before-last-chunk": (CHUNKED, b'5\r\n{"a":\r\n'),
    "missing-crlf": (CHUNKED, b"2\r\n{}XX0\r\n\r\n"),
    "bad-extension": (CHUNKED, b"2;=x\r\n{}\r\n0\r\n\r\n"),
    "bad-trailer": (CHUNKED, b"2\r\n{}\r\n0\r\nnot a field\r\n\r\n"),
    "shorter-than-content-length": (
        {"Content-Type": "application/json", "Content-Length": "100"},
        b'{"vmi":',
    ),
}


def start(database: Path, **env: str) -> GunicornServer:
    extra = {"OVERHEAD_REQUEST_READ_SECONDS": str(READ_SECONDS), **env}
    return GunicornServer(f"sqlite:///{database}", tokens=TOKENS, workers=1, env=extra).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    gunicorn = start(tmp_path_factory.mktemp("hostile") / "db.sqlite")
    yield gunicorn
    gunicorn.__exit__()


def assert_problem(answer: Answer | None, status: int) -> dict[str, object]:
    assert answer is not None, "the connection closed without an answer"
    assert answer.status == status, answer
    assert answer.headers["content-type"] == PROBLEM, answer
    document = answer.json()
    assert document["status"] == status
    assert isinstance(document["detail"], str) and document["detail"]
    return dict(document)


@pytest.mark.parametrize("kind", BROKEN_BODIES)
@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_broken_body_is_a_400_problem(server: GunicornServer, route: str, kind: str) -> None:
    path, auth = BODY_ROUTES[route]
    headers, body = BROKEN_BODIES[kind]
    answer = exchange(server.port, request_head("POST", path, {**auth, **headers}) + body)
    document = assert_problem(answer, 400)
    assert document["type"] == PROBLEM_BASE + "malformed-body"
    assert document["errors"] == [{"path": "", "message": document["detail"]}]


def test_broken_bodies_are_neither_logged_as_errors_nor_counted_as_5xx(server: GunicornServer) -> None:
    for headers, body in BROKEN_BODIES.values():
        answer = exchange(server.port, request_head("POST", "/v1/overhead", headers) + body)
        assert answer is not None and answer.status == 400
    metrics = requests.get(f"{server.base_url}/metrics", timeout=10).text
    counted = [line for line in metrics.splitlines() if line.startswith("overhead_http_requests_total{")]
    assert any('status="400"' in line for line in counted)
    assert not [line for line in counted if 'status="5' in line]
    lines = [json.loads(line) for line in server.log(tail=None).splitlines() if line.startswith("{")]
    assert lines and not [line for line in lines if line["level"] in ("error", "critical")]


# What gunicorn (or the worker) refuses before the application sees the request.
HEADS = {
    "field-too-large": (request_head("GET", "/healthz", {"X-Big": "a" * 9000}), 431),
    "too-many-fields": (request_head("GET", "/healthz", {f"X-{i}": "1" for i in range(120)}), 431),
    "bad-content-length": (request_head("POST", "/v1/overhead", {"Content-Length": "abc"}), 400),
    "negative-content-length": (request_head("POST", "/v1/overhead", {"Content-Length": "-1"}), 400),
    "two-content-lengths": (
        b"POST /v1/overhead HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
    ),
    "transfer-encoding-and-content-length": (
        request_head("POST", "/v1/overhead", {"Content-Length": "2", "Transfer-Encoding": "chunked"})
        + b"2\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    "unknown-transfer-coding": (request_head("POST", "/v1/overhead", {"Transfer-Encoding": "gzip"}), 400),
    "space-in-field-name": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
    "no-colon-in-field": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n", 400),
    "not-a-request-line": (b"NOT A REQUEST\r\n\r\n", 400),
    "bad-http-version": (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    "request-line-too-long": (request_head("GET", "/healthz?x=" + "a" * MAX_REQUEST_LINE), 414),
}


@pytest.mark.parametrize("case", HEADS)
def test_refused_heads_are_problem_documents(server: GunicornServer, case: str) -> None:
    raw, status = HEADS[case]
    assert_problem(exchange(server.port, raw), status)


def test_a_huge_request_line_is_refused_early(server: GunicornServer) -> None:
    """16 MB of URL: 414 after the first 64 KiB, the rest never read (it used to take 16 s and
    leave the worker 300 MB larger)."""
    (worker,) = server.worker_pids()
    before = _rss_mib(worker)
    target = b"/healthz?x=" + b"a" * (16 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, b"GET " + target + b" HTTP/1.1\r\n\r\n"))
        sender.start()
        answer = read_answer(sock, 30)
        sender.join(30)
    document = assert_problem(answer, 414)
    assert str(MAX_REQUEST_LINE) in str(document["detail"])
    assert _rss_mib(worker) - before < 32


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # refused and closed before it was all sent
        sock.sendall(data)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_double_slash_is_a_404_problem_not_a_redirect(server: GunicornServer) -> None:
    for path in ("/v1//tables", "/v1/tables//kubevirt-v1.9.0", "/healthz//"):
        answer = exchange(server.port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert_problem(answer, 404)
        assert answer is not None and "location" not in answer.headers
    # Leading slashes are one to the WSGI layer (Werkzeug's request path): the resource itself.
    answer = exchange(server.port, b"GET //v1/tables HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert answer is not None and answer.status == 200 and "location" not in answer.headers


def test_options_and_head_are_empty_answers_never_html(server: GunicornServer) -> None:
    options = exchange(server.port, request_head("OPTIONS", "/v1/overhead"))
    assert options is not None and options.status == 204 and options.body == b""
    assert "content-type" not in options.headers
    assert set(options.headers["allow"].split(", ")) == {"POST", "OPTIONS"}

    head = exchange(server.port, request_head("HEAD", "/healthz"), head_only=True)
    assert head is not None and head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "application/json"
    for path, status in (("/v1/tables/nope", 404), ("/v1/overhead", 405), ("/nowhere", 404)):
        answer = exchange(server.port, request_head("HEAD", path), head_only=True)
        assert answer is not None and answer.status == status and answer.body == b""
        assert answer.headers["content-type"] == PROBLEM
    # An unknown method is a 405 problem too; OPTIONS * names no resource: 404.
    assert_problem(exchange(server.port, request_head("FOO", "/healthz")), 405)
    assert_problem(exchange(server.port, request_head("OPTIONS", "*")), 404)


def test_expect_100_continue_is_answered_before_the_body(server: GunicornServer) -> None:
    """Clients that wait for ``100 Continue`` (curl, Go) get it before sending the body, once."""
    head = request_head(
        "POST",
        "/v1/overhead",
        {"Content-Type": "application/json", "Content-Length": str(len(BODY)), "Expect": "100-continue"},
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        answer = read_answer(sock, 10)
    assert answer is not None and answer.status == 200 and answer.interim == []
    assert answer.json()["overhead"]["bytes"] > 0


def test_pipelined_requests_are_answered_in_order(server: GunicornServer) -> None:
    """Requests sent back to back in one write, the first with a body larger than one read of
    the head (so the requests behind it are still held when it has been answered): three answers,
    in order."""
    batch = json.dumps({"items": [json.loads(BODY)] * 400}).encode()
    assert len(batch) > 16 * 1024
    first = request_head("POST", "/v1/overhead/batch", {**JSON_TYPE, "Content-Length": str(len(batch))})
    raw = first + batch + request_head("GET", "/healthz") + request_head("GET", "/v1/tables/nope")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        answers = read_answers(sock, 3, 10)
    assert [a.status for a in answers] == [200, 200, 404]
    assert len(answers[0].json()["items"]) == 400


def test_a_request_over_the_buffer_budget_is_read_by_its_thread(tmp_path: Path) -> None:
    """Beyond the worker's buffer budget a thread reads the rest of the body itself: whole, or
    cut at the read deadline with a 408 problem."""
    server = GunicornServer(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tokens=TOKENS,
        workers=1,
        env={"OVERHEAD_REQUEST_READ_SECONDS": str(READ_SECONDS)},
        worker_class="tests.support.workers.SmallBudgetWorker",
    ).start()
    try:
        batch = json.dumps({"items": [json.loads(BODY)] * 2000}).encode()  # about 170 KiB
        assert len(batch) > 2 * 64 * 1024
        whole = requests.post(
            f"{server.base_url}/v1/overhead/batch", data=batch, headers=JSON_TYPE, timeout=30
        )
        assert whole.status_code == 200 and len(whole.json()["items"]) == 2000

        head = request_head("POST", "/v1/overhead/batch", {**JSON_TYPE, "Content-Length": str(len(batch))})
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + batch[: 100 * 1024])  # then nothing more
            answer = read_answer(sock, READ_SECONDS + 10)
        document = assert_problem(answer, 408)
        assert document["type"] == PROBLEM_BASE + "request-timeout"
    finally:
        server.__exit__()


def test_slow_clients_hold_no_thread_and_are_closed(tmp_path: Path) -> None:
    """64 connections trickling a byte a second (half of them the head, half the body of a
    request whose head came whole) against 2 workers x 4 threads: a fresh client is answered
    meanwhile, and every slow one gets a 408 problem, then the connection closes."""
    server = GunicornServer(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tokens=TOKENS,
        workers=2,
        env={"OVERHEAD_REQUEST_READ_SECONDS": str(READ_SECONDS)},
    ).start()
    try:
        slow = _trickle(server, 64)
    finally:
        server.__exit__()
    assert slow.fresh == [200] * 6
    assert len(slow.answers) == 64
    for answer in slow.answers:
        document = assert_problem(answer, 408)
        assert f"{READ_SECONDS} s" in str(document["detail"])
    assert slow.closed == 64


@dataclass
class Trickled:
    """What the slow-client test saw: the fresh client's statuses, the slow ones' answers."""

    fresh: list[int]
    answers: list[Answer | None]
    closed: int


def _trickle(server: GunicornServer, count: int) -> Trickled:
    head = request_head("GET", "/healthz", {"X-Slow": "a" * 200})
    body_head = request_head(
        "POST", "/v1/overhead", {"Content-Type": "application/json", "Content-Length": str(len(BODY))}
    )
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(count)]
    pending = {sock: (head if i % 2 else BODY) for i, sock in enumerate(sockets)}
    for i, sock in enumerate(sockets):
        if not i % 2:
            sock.sendall(body_head)
    answers: dict[socket.socket, Answer | None] = {}
    fresh: list[int] = []
    closed = 0
    deadline = time.monotonic() + READ_SECONDS + 10
    try:
        while len(answers) < count and time.monotonic() < deadline:
            for sock, rest in list(pending.items()):
                if sock not in answers and rest:
                    _send_quietly(sock, rest[:1])
                    pending[sock] = rest[1:]
            if not fresh:  # the slow ones have started: every thread would be theirs in gthread
                time.sleep(0.5)
                for _ in range(3):
                    fresh.append(requests.get(f"{server.base_url}/healthz", timeout=5).status_code)
                    fresh.append(
                        requests.post(
                            f"{server.base_url}/v1/overhead",
                            data=BODY,
                            headers={"Content-Type": "application/json"},
                            timeout=5,
                        ).status_code
                    )
            waiting = [sock for sock in sockets if sock not in answers]
            readable, _, _ = select.select(waiting, [], [], 1.0)
            for sock in readable:
                answers[sock] = read_answer(sock, 5)
                sock.settimeout(5)
                if sock.recv(1) == b"":
                    closed += 1
    finally:
        for sock in sockets:
            sock.close()
    return Trickled(fresh, list(answers.values()), closed)


# --- TLS: the handshake on the event loop too ------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """gunicorn with a self-signed certificate (openssl); yields its port."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:overhead_service.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--certfile", str(cert), "--keyfile", str(key)]
    env = {"OVERHEAD_DATABASE_URL": f"sqlite:///{directory / 'db.sqlite'}", "PATH": "/usr/bin:/bin"}
    env["OVERHEAD_REQUEST_READ_SECONDS"] = str(READ_SECONDS)
    log = (directory / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [*argv, "overhead_service:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "gunicorn.log").read_text()
            try:
                if requests.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, (directory / "gunicorn.log").read_text()
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_requests_are_read_on_the_loop_too(tls_server: int) -> None:
    base = f"https://127.0.0.1:{tls_server}"
    with requests.Session() as session:  # keep-alive: the second request on the same connection
        for _ in range(2):
            answer = session.post(
                f"{base}/v1/overhead",
                data=BODY,
                headers={"Content-Type": "application/json"},
                verify=False,
                timeout=10,
            )
            assert answer.status_code == 200 and answer.json()["overhead"]["bytes"] > 0
        big = json.dumps({"items": [json.loads(BODY)] * 2000}).encode()  # many TLS records
        answer = session.post(
            f"{base}/v1/overhead/batch",
            data=big,
            headers={"Content-Type": "application/json"},
            verify=False,
            timeout=30,
        )
        assert answer.status_code == 200 and len(answer.json()["items"]) == 2000
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # A head begun inside TLS, then nothing: 408.
    with (
        socket.create_connection(("127.0.0.1", tls_server), timeout=10) as raw,
        context.wrap_socket(raw) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        timed_out = read_answer(sock, READ_SECONDS + 5)
    assert_problem(timed_out, 408)
    with socket.create_connection(("127.0.0.1", tls_server), timeout=10) as stalled:
        stalled.sendall(b"\x16")  # a handshake that never finishes: closed without an answer
        stalled.settimeout(READ_SECONDS + 5)
        assert stalled.recv(100) == b""
