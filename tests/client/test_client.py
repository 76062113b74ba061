"""``overhead_service.client`` against a real gunicorn on loopback, and against small scripted
servers in front of it (down, slow, 5xx, resets, lost answers): the answers, the fallback marking,
what is retried (counted where the requests arrive), the circuit breaker, and typed problems."""

from __future__ import annotations

import copy
import email.utils
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from benchmarks.harness.records import qemu_records, sample
from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN, TOKENS
from overhead_service import OverheadService, TableRegistry, jsonio
from overhead_service.client import (
    LOCAL_FALLBACK,
    SERVICE,
    Backoff,
    BadResponse,
    CircuitBreaker,
    CircuitOpen,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OverheadClient,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)
from overhead_service.model.render import render

pytestmark = pytest.mark.gunicorn

VMI: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}, "devices": {}}},
}
REQUESTS: list[dict[str, Any]] = [
    {"vmi": VMI},
    {"vmi": VMI, "table": "kubevirt-main", "cpuArch": "arm64"},
    {
        "vmi": VMI,
        "kubevirtConfiguration": {
            "additionalGuestMemoryOverheadRatio": "1.5",
            "developerConfiguration": {"featureGates": ["HyperVL1VH"]},
        },
        "table": "mshv-l1vh-provisional",
    },
    # A quantity as a JSON number with an exponent: the service decodes it exactly.
    {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": 1.5e9}}}}}},
]
BAD_CORES = {"vmi": {"spec": {"domain": {"cpu": {"cores": -1}}}}}
FAST = Backoff(base=0.01, cap=0.05, max_retry_after=1.0)


def expected(request: dict[str, Any]) -> dict[str, Any]:
    """The answer computed in this process, from JSON text as the service receives it."""
    return OverheadService(TableRegistry.builtin()).compute(jsonio.loads_exact(jsonio.dumps(request)))


def without_marks(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("source", "fallbackReason", "fallbackNotes")}


def client_for(url: str, token: str | None = None, **options: Any) -> OverheadClient:
    settings: dict[str, Any] = {
        "timeout": (1.0, 5.0),
        "deadline": 10.0,
        "backoff": FAST,
        "rng": random.Random(1),
    }
    settings.update(options)
    return OverheadClient(url, token, **settings)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- a scripted server: each request takes the next action of its path's script, else the default --

Action = Callable[["_Handler", bytes], None]


class Stub:
    """An HTTP/1.1 server on loopback whose answers tests script per path; counts what arrives."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = urlsplit(upstream) if upstream else None
        self.counts: Counter[str] = Counter()
        self.peers: set[tuple[str, int]] = set()  # client addresses: one per TCP connection
        self.scripts: dict[str, deque[Action]] = {}
        self.default: Action = forward
        self.release = threading.Event()  # lets hanging handlers go at the end
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def script(self, path: str, *actions: Action) -> None:
        with self.lock:
            self.scripts.setdefault(path, deque()).extend(actions)

    def next_action(self, path: str, peer: tuple[str, int]) -> Action:
        with self.lock:
            self.counts[path] += 1
            self.peers.add(peer)
            queue = self.scripts.get(path)
            return queue.popleft() if queue else self.default

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's pool expects

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def stub(self) -> Stub:
        return self.server.stub  # type: ignore[attr-defined,no-any-return]

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.stub.next_action(urlsplit(self.path).path, self.client_address)(self, body)

    do_GET = do_POST = _handle

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def status(code: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Action:
    def act(handler: _Handler, _: bytes) -> None:
        handler.answer(code, body, {"Content-Type": "text/plain", **(headers or {})})

    return act


def _upstream(handler: _Handler, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    target = handler.stub.upstream
    assert target is not None and target.hostname is not None
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    try:
        headers = {k: v for k, v in handler.headers.items() if k in ("Content-Type", "Authorization")}
        connection.request(handler.command, handler.path, body=body or None, headers=headers)
        response = connection.getresponse()
        kept = {k: v for k, v in response.getheaders() if k in ("Content-Type", "Location")}
        return response.status, response.read(), kept
    finally:
        connection.close()


def forward(handler: _Handler, body: bytes) -> None:
    handler.answer(*_upstream(handler, body))


def drop_after_forward(handler: _Handler, body: bytes) -> None:
    """The service handles the request; its answer is lost (the connection closes instead)."""
    _upstream(handler, body)
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


def reset(handler: _Handler, _: bytes) -> None:
    """A TCP reset instead of an answer; the service never sees the request."""
    handler.close_connection = True
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()


def hang(handler: _Handler, _: bytes) -> None:
    """No answer until the test ends (far longer than any client timeout here)."""
    handler.stub.release.wait(30)
    handler.close_connection = True


def trickle(handler: _Handler, _: bytes) -> None:
    """A 200 whose body arrives one byte at a time, each well within the read timeout."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _byte in range(1000):
        if handler.stub.release.wait(0.05):
            break
        handler.wfile.write(b" ")
    handler.close_connection = True


def gated(gate: threading.Event) -> Action:
    def act(handler: _Handler, body: bytes) -> None:
        gate.wait(30)
        forward(handler, body)

    return act


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    database = Path(tmp_path_factory.mktemp("client")) / "store.db"
    with GunicornServer(f"sqlite:///{database}", tokens=TOKENS, workers=1, threads=4) as running:
        yield running


@pytest.fixture
def stub(server: GunicornServer) -> Iterator[Stub]:
    with Stub(server.base_url) as running:
        yield running


# -- answers ----------------------------------------------------------------------------------------


def _state(breaker: CircuitBreaker) -> str:
    # A call, not the property: mypy would otherwise narrow the state across calls that change it.
    return breaker.state


def test_service_and_fallback_answers_equal_in_process_computation(server: GunicornServer) -> None:
    with client_for(server.base_url) as live, client_for(closed_port_url(), retries=0) as down:
        for request in REQUESTS:
            answer = live.overhead(request)
            assert answer["source"] == SERVICE and "fallbackReason" not in answer
            assert without_marks(answer) == expected(request)
            local = down.overhead(request)
            assert local["source"] == LOCAL_FALLBACK
            assert local["fallbackReason"].startswith("TransportError: ")
            assert "fallbackNotes" not in local
            assert without_marks(local) == expected(request)

        items = [REQUESTS[0], BAD_CORES, REQUESTS[1]]
        batch = live.overhead_batch(items)
        local_batch = down.overhead_batch(items)
    assert batch["source"] == SERVICE and local_batch["source"] == LOCAL_FALLBACK
    assert batch["items"] == local_batch["items"]
    assert batch["items"][0] == expected(REQUESTS[0]) and batch["items"][2] == expected(REQUESTS[1])
    assert batch["items"][1]["status"] == 422
    assert batch["items"][1]["errors"][0]["path"] == "items[1].vmi.spec.domain.cpu.cores"


RENDER: list[dict[str, Any]] = [
    {"vmi": VMI},
    {
        "vmi": VMI,
        "table": "kubevirt-main",
        "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": 150}},
        "namespace": {"labels": {"alpha.kubevirt.io/auto-memory-limits-ratio": "1.5"}},
    },
    {"vmi": VMI, "namespace": {"resourceQuotaLimitsMemory": True}},
]


def test_render_from_the_service_and_the_fallback(server: GunicornServer) -> None:
    with client_for(server.base_url) as live, client_for(closed_port_url(), retries=0) as down:
        for request in RENDER:
            wanted = render(
                jsonio.loads_exact(jsonio.dumps(request)), OverheadService(TableRegistry.builtin())
            )
            answer, local = live.render(request), down.render(request)
            assert (answer["source"], local["source"]) == (SERVICE, LOCAL_FALLBACK)
            assert without_marks(answer) == without_marks(local) == wanted
        with pytest.raises(InvalidInput) as served:
            live.render({"vmi": VMI, "namespace": {"labels": 1}})
        with pytest.raises(InvalidInput) as computed:
            down.render({"vmi": VMI, "namespace": {"labels": 1}})
    assert served.value.field == computed.value.field == "namespace.labels"
    assert served.value.document == computed.value.document


def test_fallback_uses_the_default_table_for_a_table_it_does_not_know() -> None:
    with client_for(closed_port_url(), retries=0) as down:
        answer = down.overhead({"vmi": VMI, "table": "fit-kvm-amd64-qemu-0123456789ab"})
        batch = down.overhead_batch([{"vmi": VMI}, {"vmi": VMI, "table": "stored-elsewhere"}])
    assert answer["table"]["id"] == "kubevirt-v1.9.0"
    assert without_marks(answer) == expected({"vmi": VMI})
    assert answer["fallbackNotes"] == [
        "table 'fit-kvm-amd64-qemu-0123456789ab' is not built in; computed with 'kubevirt-v1.9.0'"
    ]
    assert batch["items"] == [expected({"vmi": VMI})] * 2
    assert batch["fallbackNotes"] == [
        "items[1].table 'stored-elsewhere' is not built in; computed with 'kubevirt-v1.9.0'"
    ]


def test_overhead_batch_takes_the_http_body_too(server: GunicornServer) -> None:
    items = [{"vmi": VMI}, BAD_CORES]
    with client_for(server.base_url) as live, client_for(closed_port_url(), retries=0) as down:
        for client in (live, down):
            as_list = client.overhead_batch(items)
            as_body = client.overhead_batch({"items": items})
            assert as_body["items"] == as_list["items"]
            assert as_body["items"][0] == expected({"vmi": VMI})
            for wrong in ({"requests": items}, {"items": items, "table": "x"}, "items", 42):
                with pytest.raises(TypeError, match="overhead_batch takes"):
                    client.overhead_batch(wrong)  # type: ignore[arg-type]


def test_fallback_answers_are_the_callers_own() -> None:
    with client_for(closed_port_url(), retries=0) as down:
        first = down.overhead({"vmi": VMI})
        first["table"]["id"] = "changed by the caller"
        first["components"].clear()
        assert without_marks(down.overhead({"vmi": VMI})) == expected({"vmi": VMI})


def test_reads(server: GunicornServer) -> None:
    with client_for(server.base_url) as client:
        listing = client.tables()
        assert listing["default"] == "kubevirt-v1.9.0"
        assert {t["id"] for t in listing["tables"]} >= set(TableRegistry.BUILTIN)
        assert client.table("kubevirt-main")["id"] == "kubevirt-main"
        with pytest.raises(NotFound) as missing:
            client.table("no such table")  # quoted into one path segment
        assert missing.value.status == 404 and missing.value.field == "table"
        assert "'no such table'" in missing.value.detail
        assert set(client.activations(hypervisor="kvm")) == {"active", "history"}
        with pytest.raises(InvalidInput) as bad:
            client.activations(limit=0)
        assert bad.value.field == "limit"


# -- problems: typed, with the field path, never retried, never masked --------------------------------


def test_422_is_a_typed_problem_with_the_field_path_and_is_not_retried(stub: Stub) -> None:
    with client_for(stub.url, retries=3) as client:
        with pytest.raises(InvalidInput) as raised:
            client.overhead(BAD_CORES)
        with pytest.raises(InvalidInput) as batch:
            client.overhead_batch([{}] * (OverheadService.MAX_BATCH + 1))
    error = raised.value
    assert error.status == 422 and error.field == "vmi.spec.domain.cpu.cores"
    assert error.type == "urn:overhead-service:problem:invalid-input"
    assert error.errors == [{"path": error.field, "message": "must be an integer between 0 and 4294967295"}]
    assert stub.counts["/v1/overhead"] == 1
    assert batch.value.field == "items" and stub.counts["/v1/overhead/batch"] == 1


def test_bad_input_is_not_masked_by_the_fallback() -> None:
    with client_for(closed_port_url(), retries=0) as down:
        with pytest.raises(InvalidInput) as raised:
            down.overhead(BAD_CORES)
        with pytest.raises(InvalidInput) as unknown:
            down.overhead({"vmi": VMI, "table": "kubevirt-main", "cpuArch": 7})
        with pytest.raises(InvalidInput) as too_many:
            down.overhead_batch([{}] * (OverheadService.MAX_BATCH + 1))
    assert raised.value.field == "vmi.spec.domain.cpu.cores"
    assert unknown.value.field == "cpuArch" and too_many.value.field == "items"


def test_a_4xx_without_a_problem_document_is_still_a_typed_error(stub: Stub) -> None:
    stub.script("/v1/overhead", status(404, b"<html>no route</html>", headers={"Content-Type": "text/html"}))
    with client_for(stub.url) as client, pytest.raises(NotFound) as raised:
        client.overhead({"vmi": VMI})
    assert raised.value.field is None and "no route" in raised.value.detail
    assert stub.counts["/v1/overhead"] == 1


# -- the service down, slow, failing, resetting ------------------------------------------------------


def test_down_service() -> None:
    url = closed_port_url()
    with client_for(url, retries=2, breaker=False) as client:
        assert client.overhead({"vmi": VMI})["source"] == LOCAL_FALLBACK
        with pytest.raises(TransportError) as tables:
            client.tables()
        with pytest.raises(TransportError):
            client.upload_measurements([sample(0)])
    assert tables.value.attempts == 3  # connection refused is retried: nothing was sent
    with client_for(url, fallback=False) as strict, pytest.raises(TransportError):
        strict.overhead({"vmi": VMI})


def test_slow_service_is_bounded_by_the_deadline(stub: Stub) -> None:
    stub.default = hang
    with client_for(stub.url, timeout=(0.5, 0.2), deadline=0.5, retries=10) as client:
        answer = client.overhead({"vmi": VMI})
        with pytest.raises(TransportError) as raised:
            client.tables()
    assert answer["source"] == LOCAL_FALLBACK and "ReadTimeout" in answer["fallbackReason"]
    assert without_marks(answer) == expected({"vmi": VMI})
    # Each attempt waits its whole read timeout (0.2 s, or what is left of the 0.5 s deadline),
    # so at most three fit, however many retries are allowed.
    assert 1 <= stub.counts["/v1/overhead"] <= 3
    assert 1 <= stub.counts["/v1/tables"] <= 3 and raised.value.attempts == stub.counts["/v1/tables"]


def test_a_trickling_answer_is_cut_at_the_deadline(stub: Stub) -> None:
    stub.default = trickle
    with client_for(stub.url, timeout=(0.5, 0.3), deadline=0.5, retries=5) as client:
        answer = client.overhead({"vmi": VMI})
    assert answer["source"] == LOCAL_FALLBACK and "deadline passed" in answer["fallbackReason"]
    assert stub.counts["/v1/overhead"] == 1  # no time left for another attempt


def test_connections_are_pooled(stub: Stub) -> None:
    with client_for(stub.url) as client:
        for _ in range(10):
            assert client.overhead({"vmi": VMI})["source"] == SERVICE
        client.tables()
    assert stub.counts["/v1/overhead"] == 10 and len(stub.peers) == 1  # kept alive, reused


def test_transient_5xx_are_retried_until_the_service_recovers(stub: Stub) -> None:
    stub.script("/v1/overhead", status(503, headers={"Retry-After": "0"}), status(502), status(429))
    with client_for(stub.url, retries=3) as client:
        answer = client.overhead({"vmi": VMI})
    assert answer["source"] == SERVICE and without_marks(answer) == expected({"vmi": VMI})
    assert stub.counts["/v1/overhead"] == 4


def test_5xx_beyond_the_retries_falls_back(stub: Stub) -> None:
    stub.default = status(503)
    with client_for(stub.url, retries=2, breaker=False) as client:
        answer = client.overhead({"vmi": VMI})
        with pytest.raises(ServerError) as raised:
            client.tables()
    assert answer["source"] == LOCAL_FALLBACK and "503" in answer["fallbackReason"]
    assert stub.counts["/v1/overhead"] == 3
    assert raised.value.status == 503 and raised.value.attempts == 3


def test_retry_after_as_an_http_date(stub: Stub) -> None:
    past = email.utils.formatdate(0, usegmt=True)
    future = email.utils.formatdate(time.time() + 3600, usegmt=True)
    stub.script("/v1/overhead", status(503, headers={"Retry-After": past}))
    stub.script("/v1/tables", status(503, headers={"Retry-After": future}))
    with client_for(stub.url, retries=2) as client:
        assert client.overhead({"vmi": VMI})["source"] == SERVICE  # a moment passed: retried at once
        with pytest.raises(ServerError):
            client.tables()  # an hour away: beyond max_retry_after, so given up at once
    assert stub.counts["/v1/overhead"] == 2 and stub.counts["/v1/tables"] == 1


def test_500_and_long_retry_after_are_not_retried(stub: Stub) -> None:
    stub.script("/v1/overhead", status(500, b"boom"), status(503, headers={"Retry-After": "30"}))
    with client_for(stub.url, retries=3) as client:
        first = client.overhead({"vmi": VMI})
        assert stub.counts["/v1/overhead"] == 1  # a server bug would fail again
        second = client.overhead({"vmi": VMI})
    # Retry-After beyond max_retry_after (and the deadline): give up at once instead of sleeping.
    assert stub.counts["/v1/overhead"] == 2
    assert first["source"] == second["source"] == LOCAL_FALLBACK
    assert "500 boom" in first["fallbackReason"] and "503" in second["fallbackReason"]


def test_reset_connection_is_retried_and_garbage_falls_back(stub: Stub) -> None:
    stub.script("/v1/overhead", reset, reset)
    with client_for(stub.url, retries=2) as client:
        answer = client.overhead({"vmi": VMI})
        assert answer["source"] == SERVICE and stub.counts["/v1/overhead"] == 3
        stub.script("/v1/overhead", status(200, b"<html>portal</html>"))
        garbage = client.overhead({"vmi": VMI})
        with pytest.raises(BadResponse):
            stub.script("/v1/tables", status(200, b"[1, 2]", headers={"Content-Type": "application/json"}))
            client.tables()
    assert garbage["source"] == LOCAL_FALLBACK and garbage["fallbackReason"].startswith("BadResponse")
    assert stub.counts["/v1/overhead"] == 4 and stub.counts["/v1/tables"] == 1


# -- writes: idempotent ones retried, the others only when never sent --------------------------------


def _stored(server: GunicornServer, run: str) -> list[tuple[str, str]]:
    items = requests.get(
        f"{server.base_url}/v1/measurements", params={"runId": run, "limit": "1000"}, timeout=10
    )
    return [(r["runId"], r["sampleId"]) for r in items.json()["items"]]


def test_upload_retried_after_a_lost_answer_stores_each_record_once(
    server: GunicornServer, stub: Stub
) -> None:
    records = [sample(i, run="client-upload") for i in range(30)]
    stub.script("/v1/measurements", drop_after_forward)
    with client_for(stub.url, INGEST_TOKEN) as client:
        answer = client.upload_measurements(records)
    assert stub.counts["/v1/measurements"] == 2
    # The lost first answer stored everything; the retry finds each record already there.
    assert answer["stored"] == 0 and answer["duplicates"] == 30
    stored = _stored(server, "client-upload")
    assert len(stored) == 30 and set(stored) == {(r["runId"], r["sampleId"]) for r in records}


def test_write_errors_are_typed(server: GunicornServer) -> None:
    with client_for(server.base_url) as anonymous, pytest.raises(Unauthorized) as no_token:
        anonymous.upload_measurements([sample(0, run="client-auth")])
    with client_for(server.base_url, INGEST_TOKEN) as ingest, pytest.raises(Forbidden):
        ingest.activate("kubevirt-main", "kvm", "amd64", force=True, reason="no")
    with client_for(server.base_url, ADMIN_TOKEN) as admin:
        with pytest.raises(NotFound):
            admin.activate("no-such-table", "kvm", "amd64")
        with pytest.raises(Conflict) as conflict:
            admin.rollback("kubevirt-main", "kvm", "amd64")
        with pytest.raises(InvalidInput) as bad:
            admin.upload_measurements([sample(0, run="client-auth", vm={"vcpus": -1})])
    assert no_token.value.status == 401
    assert conflict.value.field == "hypervisor"
    assert bad.value.field == "records[0].vm.vcpus"


def test_fit_activate_rollback(server: GunicornServer, stub: Stub) -> None:
    with client_for(server.base_url, INGEST_TOKEN) as ingest:
        assert ingest.upload_measurements(qemu_records(300, run="client-fit"))["stored"] == 300
    with client_for(stub.url, ADMIN_TOKEN) as admin, client_for(closed_port_url(), retries=0) as down:
        # A fit whose answer is lost is asked again: the same inputs name the same stored table.
        stub.script("/v1/fits", drop_after_forward)
        fitted = admin.fit("kvm", "amd64", "qemu", parent="kubevirt-v1.9.0", runs=["client-fit"])
        table_id = fitted["table"]["id"]
        assert stub.counts["/v1/fits"] == 2 and table_id.startswith("fit-kvm-amd64-qemu-")
        assert fitted["report"]["samples"] == 300
        # A retry that raced its own first attempt meets 409 table-exists, and asks once more.
        exists = jsonio.dumps_bytes(
            {"type": "urn:overhead-service:problem:table-exists", "title": "Table exists", "status": 409}
        )
        stub.script(
            "/v1/fits", reset, status(409, exists, headers={"Content-Type": "application/problem+json"})
        )
        assert admin.fit("kvm", "amd64", "qemu", runs=["client-fit"])["table"]["id"] == table_id
        assert stub.counts["/v1/fits"] == 5

        # An activation whose answer is lost is not sent again: it happened once.
        stub.script("/v1/tables/" + table_id + "/activate", drop_after_forward)
        with pytest.raises(TransportError) as lost:
            admin.activate(table_id, "kvm", "amd64", force=True, reason="client test")
        assert lost.value.attempts == 1 and stub.counts[f"/v1/tables/{table_id}/activate"] == 1
        history = admin.activations(hypervisor="kvm", arch="amd64")["history"]
        assert [h["tableId"] for h in history if h["action"] == "activate"] == [table_id]
        try:
            # The service answers with the activated table; the fallback cannot know it.
            assert admin.overhead({"vmi": VMI})["table"]["id"] == table_id
            assert down.overhead({"vmi": VMI})["table"]["id"] == "kubevirt-v1.9.0"
        finally:
            back = admin.rollback(table_id, "kvm", "amd64", reason="client test done")
        assert back["activation"]["action"] == "rollback" and back["active"] == []

        # 503 may come after the service acted: not retried.  429 says it did not act: retried.
        path = f"/v1/tables/{table_id}/activate"
        stub.script(path, status(503))
        with pytest.raises(ServerError):
            admin.activate(table_id, "kvm", "amd64", force=True, reason="client test")
        assert stub.counts[path] == 2
        stub.script(path, status(429, headers={"Retry-After": "0"}))
        activated = admin.activate(table_id, "kvm", "amd64", force=True, reason="client test")
        assert stub.counts[path] == 4 and activated["activation"]["tableId"] == table_id
        admin.rollback(table_id, "kvm", "amd64")
        history = admin.activations(hypervisor="kvm", arch="amd64")["history"]
        assert [h["action"] for h in history] == ["rollback", "activate", "rollback", "activate"]


# -- the circuit breaker -----------------------------------------------------------------------------


def test_breaker_states() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, open_seconds=10, clock=clock)
    early = breaker.acquire()
    first = breaker.acquire()
    assert early is not None and first is not None and _state(breaker) == "closed"
    breaker.failure(first)
    again = breaker.acquire()
    assert again is not None
    breaker.success(again)  # resets the count
    breaker.failure(first)
    assert _state(breaker) == "closed"
    breaker.failure(first)
    assert _state(breaker) == "open" and breaker.acquire() is None and breaker.retry_in() == 10
    breaker.success(early)  # admitted before it opened: does not close it
    assert _state(breaker) == "open"
    clock.now += 10
    assert _state(breaker) == "half-open"
    probe = breaker.acquire()
    assert probe is not None and probe.probe
    assert breaker.acquire() is None  # one probe at a time
    breaker.failure(probe)
    assert _state(breaker) == "open"
    clock.now += 10
    probe = breaker.acquire()
    assert probe is not None
    breaker.success(probe)
    assert _state(breaker) == "closed"
    breaker.failure(first)  # from before the last opening: stale
    assert breaker.acquire() is not None and _state(breaker) == "closed"


def test_breaker_opens_answers_locally_and_closes_after_a_probe(stub: Stub) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, open_seconds=30, clock=clock)
    stub.default = status(503)
    with client_for(stub.url, retries=0, breaker=breaker) as client:
        for _ in range(2):
            assert client.overhead({"vmi": VMI})["source"] == LOCAL_FALLBACK
        assert _state(breaker) == "open" and stub.counts["/v1/overhead"] == 2
        answer = client.overhead({"vmi": VMI})
        assert answer["fallbackReason"].startswith("CircuitOpen: ")
        assert without_marks(answer) == expected({"vmi": VMI})
        with pytest.raises(CircuitOpen) as refused:
            client.tables()
        assert refused.value.attempts == 0 and sum(stub.counts.values()) == 2  # nothing sent while open

        clock.now += 30  # half-open: a failing probe opens it again
        assert client.overhead({"vmi": VMI})["source"] == LOCAL_FALLBACK
        assert stub.counts["/v1/overhead"] == 3 and _state(breaker) == "open"
        client.overhead({"vmi": VMI})
        assert stub.counts["/v1/overhead"] == 3

        clock.now += 30
        stub.default = forward  # the service is back: the probe succeeds and closes the circuit
        assert client.overhead({"vmi": VMI})["source"] == SERVICE
        assert _state(breaker) == "closed" and stub.counts["/v1/overhead"] == 4


def test_half_open_lets_exactly_one_probe_through(stub: Stub) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, open_seconds=5, clock=clock)
    gate = threading.Event()
    stub.script("/v1/overhead", status(502), gated(gate))
    results: dict[str, dict[str, Any]] = {}
    with client_for(stub.url, retries=0, breaker=breaker) as client:
        client.overhead({"vmi": VMI})
        assert _state(breaker) == "open"
        clock.now += 5
        probe = threading.Thread(target=lambda: results.update(probe=client.overhead({"vmi": VMI})))
        probe.start()
        while stub.counts["/v1/overhead"] < 2 and probe.is_alive():  # until the probe has arrived
            time.sleep(0.01)
        others = [client.overhead({"vmi": VMI}) for _ in range(5)]
        gate.set()
        probe.join(timeout=30)
    assert [o["source"] for o in others] == [LOCAL_FALLBACK] * 5
    assert all(o["fallbackReason"].startswith("CircuitOpen") for o in others)
    assert results["probe"]["source"] == SERVICE and stub.counts["/v1/overhead"] == 2
    assert _state(breaker) == "closed"


# -- threads ------------------------------------------------------------------------------------------


def test_threads_share_one_client(server: GunicornServer) -> None:
    wanted = [expected(r) for r in REQUESTS]
    failures: list[str] = []

    def work(client: OverheadClient, index: int, source: str) -> None:
        for n in range(20):
            which = (index + n) % len(REQUESTS)
            try:
                answer = client.overhead(copy.deepcopy(REQUESTS[which]))
                if answer["source"] != source or without_marks(answer) != wanted[which]:
                    failures.append(f"thread {index}: {answer}")
            except ServiceUnavailable as exc:  # pragma: no cover - reported below
                failures.append(f"thread {index}: {exc!r}")

    with client_for(server.base_url, pool_size=8) as live, client_for(closed_port_url(), retries=0) as down:
        threads = [threading.Thread(target=work, args=(live, i, SERVICE)) for i in range(8)]
        threads += [threading.Thread(target=work, args=(down, i, LOCAL_FALLBACK)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert live.breaker is not None and live.breaker.state == "closed"
    assert failures == []
    assert "Traceback" not in server.log()
