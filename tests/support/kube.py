"""A fake Kubernetes API server on loopback, for the tests of overhead_service.kube and the benchmarks.

:class:`FakeApiServer` is an ``http.server`` in a thread (optionally TLS, with client certificates
verified against a CA) that authenticates each request as the API server would (a bearer token it
knows, or a client certificate: the user is its CN) and hands the rest to a route function, which
answers with a :class:`Reply`, a :class:`Stream` of watch events (chunked JSON lines, as the API
server streams them) or, for a WebSocket upgrade, an :class:`Exec` (the ``pods/exec`` channel
protocol over a real WebSocket, server side by wsproto). :class:`FakeKubeVirts` is a route for the
KubeVirt CRs: list and watch with resource versions, bookmarks, expiry (410) and injected failures.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request

from benchmarks.harness.tls import KeyPair
from overhead_service.kube import KubeVirtConfig, KubeVirtConfigSource

__all__ = [
    "DROP",
    "TOKEN",
    "Exec",
    "FakeApiServer",
    "FakeKubeVirts",
    "FakeRequest",
    "Reply",
    "Stream",
    "status",
    "wait_for",
]

TOKEN: Final = "kube-token-for-tests"
EXEC_PROTOCOLS: Final = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # the newest the client offers
DROP: Final = object()
"""In a :class:`Stream`: cut the connection there, mid-stream, as a failing proxy would."""


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` (what the API server answers on failure)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(frozen=True, slots=True)
class FakeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: Mapping[str, str]  # names in lower case
    user: str  # "token" for the bearer token, else the client certificate's CN
    upgrade: bool  # a WebSocket upgrade (pods/exec)

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any  # JSON-able, or str/bytes sent as they are
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stream:
    """A watch answer: each event (a dict) is one JSON line; :data:`DROP` cuts the connection."""

    events: Iterable[Any]


@dataclass(frozen=True, slots=True)
class Exec:
    """A ``pods/exec`` session: stdout split in a fragmented message with a ping inside, stderr,
    then the final ``Status`` on channel 3 and a close, as the API server sends them."""

    stdout: bytes
    stderr: bytes
    status: dict[str, Any]
    hold: threading.Event | None = None  # set: the command "runs" (no status) until it is set


Route = Callable[[FakeRequest], Reply | Stream | Exec]


class FakeApiServer:
    """An API server on 127.0.0.1 answering through ``route``; use it as a context manager.

    Requests are logged in ``requests`` (method, path with query) and ``users``; an exception in
    ``route`` answers 500 and is kept in ``errors``, which fails the test on exit.
    """

    def __init__(
        self,
        route: Route,
        *,
        tokens: Iterable[str] = (TOKEN,),
        tls: KeyPair | None = None,
        client_ca: Path | None = None,
    ) -> None:
        self.route = route
        self.tokens = set(tokens)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.users: list[str] = []
        self.errors: list[BaseException] = []
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            if client_ca is not None:  # verify a client certificate when one is presented
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_OPTIONAL
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-apiserver", daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        assert not self.errors, self.errors

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))

    def _authenticate(self, handler: BaseHTTPRequestHandler) -> str | None:
        authorization = handler.headers.get("Authorization") or ""
        if authorization.lower().startswith("bearer ") and authorization[7:].strip() in self.tokens:
            return "token"
        if isinstance(handler.request, ssl.SSLSocket):
            peer: dict[str, Any] = dict(handler.request.getpeercert() or {})
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(10)
                    try:
                        self.request.do_handshake()
                    except (ssl.SSLError, OSError):
                        self.request.close()
                        raise
                    self.request.settimeout(None)
                super().setup()

            def handle(self) -> None:
                # A client that went away or failed the handshake is no error of the server's.
                with contextlib.suppress(ssl.SSLError, ConnectionError, ValueError):
                    super().handle()

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                user = api._authenticate(self)
                with api.lock:
                    api.requests.append((self.command, self.path))
                    api.users.append(user or "")
                if user is None:
                    self._send(Reply(401, status(401, "Unauthorized", "Unauthorized")))
                    return
                request = FakeRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    body=json.loads(raw) if raw else None,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    user=user,
                    upgrade=self.headers.get("Upgrade", "").lower() == "websocket",
                )
                try:
                    answer = api.route(request)
                except Exception as exc:  # an unexpected request: the test fails at exit
                    api.errors.append(exc)
                    answer = Reply(500, repr(exc), "text/plain")
                if isinstance(answer, Stream):
                    self._stream(answer)
                elif isinstance(answer, Exec):
                    self._websocket(answer)
                else:
                    self._send(answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def _send(self, reply: Reply) -> None:
                body = reply.body
                if isinstance(body, str):
                    payload = body.encode()
                elif isinstance(body, bytes):
                    payload = body
                else:
                    payload = json.dumps(body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, stream: Stream) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                try:
                    for event in stream.events:
                        if event is DROP:
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        line = json.dumps(event).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the client went away (a stopped watch)
                    self.close_connection = True

            def _websocket(self, session: Exec) -> None:
                ws = WSConnection(ConnectionType.SERVER)
                head = [self.requestline, *(f"{k}: {v}" for k, v in self.headers.items())]
                ws.receive_data(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                upgrade = next(e for e in ws.events() if isinstance(e, Request))
                protocol = next((p for p in EXEC_PROTOCOLS if p in upgrade.subprotocols), None)
                half = len(session.stdout) // 2
                running = [
                    AcceptConnection(subprotocol=protocol),
                    BytesMessage(b"\x01"),  # the server opens each channel with an empty message
                    BytesMessage(b"\x02"),
                    BytesMessage(b"\x01" + session.stdout[:half], message_finished=False),
                    Ping(b"ping"),  # a control frame between the fragments, as RFC 6455 allows
                    BytesMessage(session.stdout[half:]),
                    BytesMessage(b"\x02" + session.stderr),
                ]
                ended = [
                    BytesMessage(b"\x03" + json.dumps(session.status).encode()),
                    CloseConnection(code=1000),
                ]
                for messages in (running, ended):
                    self.wfile.write(b"".join(ws.send(message) for message in messages))
                    self.wfile.flush()
                    if session.hold is not None and messages is running:
                        session.hold.wait(10)
                self.close_connection = True
                # Wait for the client's close (or its end), as a server closing cleanly does.
                self.connection.settimeout(5)
                try:
                    while chunk := self.connection.recv(65536):
                        ws.receive_data(chunk)
                        if any(isinstance(e, CloseConnection) for e in ws.events()):
                            break
                except OSError:
                    pass

        return Handler


# --- KubeVirt CRs -------------------------------------------------------------------------------

KUBEVIRTS_ALL: Final = "/apis/kubevirt.io/v1/kubevirts"


def kubevirt(
    name: str = "kubevirt",
    namespace: str = "kubevirt",
    configuration: Mapping[str, Any] | None = None,
    *,
    phase: str = "Deployed",
    created: str = "2026-01-01T00:00:00Z",
    generation: int = 1,
) -> dict[str, Any]:
    """A KubeVirt CR as virt-operator leaves it."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": created,
            "generation": generation,
            "uid": f"uid-{namespace}-{name}",
        },
        "spec": {"configuration": dict(configuration or {})},
        "status": {"phase": phase} if phase else {},
    }


class FakeKubeVirts:
    """The ``kubevirts.kubevirt.io`` API: list and watch, all namespaces or one.

    Changes (:meth:`put`, :meth:`delete`, :meth:`bookmark`) get increasing resource versions and
    reach open watches at once. A watch from a version below ``expired_before`` gets the API
    server's ERROR event (410 Expired); :meth:`compact` brings that about. ``fail`` holds statuses
    to answer first, per ``"list"`` and ``"watch"``; ``drop_after`` cuts the next watch after that
    many events. ``lists`` records the namespace of each list, ``watches`` the resource version
    each watch started from.
    """

    def __init__(self, server_closing: threading.Event | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[tuple[int, dict[str, Any]]] = []  # (resource version, event)
        self.version = 100
        self.expired_before = 0
        self.fail: dict[str, list[int]] = {"list": [], "watch": []}
        self.drop_after: int | None = None
        self.lists: list[str] = []  # namespace ("" = all) of each list
        self.watches: list[str] = []  # resourceVersion of each watch
        self.changed = threading.Condition(threading.RLock())
        self.closing = server_closing or threading.Event()
        self.epoch = 0  # bumped to end the open watches

    def end_watches(self) -> None:
        """End the open watches normally (as the server does when their timeoutSeconds are up)."""
        with self.changed:
            self.epoch += 1
            self.changed.notify_all()

    def compact(self, obj: dict[str, Any] | None = None) -> None:
        """End the open watches and forget the history up to now (etcd compaction while the
        watchers were away), after one last change ``obj`` that only a new list shows."""
        with self.changed:
            if obj is not None:
                self.put(obj)
            self.expired_before = self.version
            self.epoch += 1
            self.changed.notify_all()

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        with self.changed:  # reentrant: compact() records under it
            self.version += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.version)
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if kind == "DELETED":
                self.objects.pop(key, None)
            elif kind != "BOOKMARK":
                self.objects[key] = obj
            self.log.append((self.version, {"type": kind, "object": obj}))
            self.changed.notify_all()

    def put(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._record("MODIFIED" if key in self.objects else "ADDED", obj)

    def delete(self, namespace: str, name: str) -> None:
        self._record("DELETED", self.objects[(namespace, name)])

    def bookmark(self) -> None:
        self._record("BOOKMARK", {"kind": "KubeVirt", "metadata": {"namespace": "", "name": ""}})

    def route(self, request: FakeRequest) -> Reply | Stream:
        path = request.path
        namespace = ""
        if path.startswith("/apis/kubevirt.io/v1/namespaces/") and path.endswith("/kubevirts"):
            namespace = path.split("/")[5]
        elif path != KUBEVIRTS_ALL:
            return Reply(404, status(404, "NotFound", f"{request.method} {path} not found"))
        watching = request.arg("watch") in ("true", "1")
        with self.changed:
            failures = self.fail["watch" if watching else "list"]
            failure = failures.pop(0) if failures else None
        if failure:
            return Reply(failure, status(failure, "InternalError", "etcd is not answering"))
        if not watching:
            with self.changed:
                self.lists.append(namespace)
                items = [o for (ns, _), o in sorted(self.objects.items()) if not namespace or ns == namespace]
                return Reply(
                    200,
                    {
                        "apiVersion": "kubevirt.io/v1",
                        "kind": "KubeVirtList",
                        "metadata": {"resourceVersion": str(self.version)},
                        "items": items,
                    },
                )
        since = int(request.arg("resourceVersion", "0") or 0)
        with self.changed:
            self.watches.append(request.arg("resourceVersion"))
            drop, self.drop_after = self.drop_after, None
        seconds = float(request.arg("timeoutSeconds", "30"))
        return Stream(self._events(namespace, since, seconds, drop))

    def _events(self, namespace: str, since: int, seconds: float, drop: int | None) -> Iterator[Any]:
        with self.changed:  # one look at both: a compaction between them would leak its change
            expired, epoch = since < self.expired_before, self.epoch
        if expired:
            message = f"too old resource version: {since} ({self.expired_before})"
            yield {"type": "ERROR", "object": status(410, "Expired", message)}
            return
        deadline = time.monotonic() + seconds
        sent = 0
        while not self.closing.is_set():
            with self.changed:
                if self.epoch != epoch:
                    return
                pending = [
                    event
                    for version, event in self.log
                    if version > since
                    and (not namespace or event["object"]["metadata"]["namespace"] in (namespace, ""))
                ]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.changed.wait(min(remaining, 0.05))
                    continue
            for event in pending:
                if drop is not None and sent >= drop:
                    yield DROP
                    return
                since = int(event["object"]["metadata"]["resourceVersion"])
                sent += 1
                yield event


def wait_for(source: KubeVirtConfigSource, what: Callable[[KubeVirtConfig], bool]) -> KubeVirtConfig:
    """The first snapshot of ``source`` that satisfies ``what`` (polled; AssertionError after 10 s)."""
    pause = threading.Event()
    snapshot = source.current()
    for _ in range(1000):
        snapshot = source.current()
        if what(snapshot):
            return snapshot
        pause.wait(0.01)
    raise AssertionError(f"never reached: last snapshot {snapshot}")
