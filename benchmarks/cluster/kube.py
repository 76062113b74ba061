"""A small Kubernetes API client: ``requests`` for REST, the standard library for ``pods/exec``.

Credentials come from, in order: an explicit ``--api-server`` (with ``--token-file``, e.g. a
token from ``kubectl create token``), the pod's service account
(``/var/run/secrets/kubernetes.io/serviceaccount``: ``token``, ``ca.crt``, ``namespace``), or a
kubeconfig's current context with a bearer ``token``/``tokenFile`` and its cluster's CA. Client
certificates and exec plugins are deliberately not supported: mint a token instead.

``pods/exec`` is a WebSocket upgrade (subprotocol ``v4.channel.k8s.io``), which ``requests``
cannot perform, so :meth:`KubeClient.exec` speaks the few parts of RFC 6455 it needs over a
plain (TLS) socket: one upgrade request, then server frames whose first payload byte is the
channel (1 stdout, 2 stderr, 3 the final ``Status``). It sends nothing but a pong or a close.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import requests
import yaml

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ApiError",
    "Credentials",
    "ExecError",
    "ExecResult",
    "KubeClient",
    "load_credentials",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF: Final = 30.0
MAX_EXEC_OUTPUT: Final = 16 * 1024 * 1024
_WS_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_EXEC_PROTOCOL: Final = "v4.channel.k8s.io"


class ApiError(Exception):
    """The API server answered with an error (after retries), or could not be reached."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".rstrip(": "))
        self.status = status  # 0: no answer (connection failure)
        self.reason = reason  # Kubernetes Status reason (NotFound, AlreadyExists, Forbidden…)
        self.message = message


class ExecError(Exception):
    """A ``pods/exec`` command could not run, or ended with a failure status."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: str
    stderr: str
    status: dict[str, Any]  # the Kubernetes Status sent on channel 3

    @property
    def ok(self) -> bool:
        return self.status.get("status") == "Success"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the API server is and how to authenticate to it."""

    server: str  # scheme://host:port, no trailing slash
    token: str = ""
    token_file: str = ""  # re-read on every request: bound service-account tokens rotate
    ca_file: str = ""  # "" = the system's CAs
    insecure: bool = False

    def bearer(self) -> str:
        if self.token_file:
            return Path(self.token_file).read_text(encoding="utf-8").strip()
        return self.token

    @property
    def verify(self) -> bool | str:
        if self.insecure:
            return False
        return self.ca_file or True


def load_credentials(
    *,
    api_server: str = "",
    token_file: str = "",
    kubeconfig: str = "",
    context: str = "",
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Credentials:
    """Credentials from the first source that applies (see the module docstring)."""
    env = os.environ if environ is None else environ
    if api_server:
        return Credentials(server=api_server.rstrip("/"), token_file=token_file)
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    token = service_account_dir / "token"
    if host and token.exists() and not kubeconfig:
        if ":" in host:  # IPv6
            host = f"[{host}]"
        ca = service_account_dir / "ca.crt"
        return Credentials(
            server=f"https://{host}:{port}", token_file=str(token), ca_file=str(ca) if ca.exists() else ""
        )
    path = kubeconfig or env.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    return _from_kubeconfig(Path(path), context)


def _from_kubeconfig(path: Path, context_name: str) -> Credentials:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ApiError("kubeconfig", str(path), 0, "Unreadable", str(exc)) from None

    def named(kind: str, name: str) -> dict[str, Any]:
        for item in config.get(kind) or []:
            if item.get("name") == name:
                return dict(item.get(kind[:-1]) or {})
        raise ApiError("kubeconfig", str(path), 0, "Invalid", f"no {kind[:-1]} named {name!r}")

    context = named("contexts", context_name or config.get("current-context", ""))
    cluster = named("clusters", context.get("cluster", ""))
    user = named("users", context.get("user", ""))
    server = str(cluster.get("server", "")).rstrip("/")
    if not server:
        raise ApiError("kubeconfig", str(path), 0, "Invalid", "the cluster has no server")
    token, token_file = str(user.get("token", "")), str(user.get("tokenFile", ""))
    if not token and not token_file:
        raise ApiError(
            "kubeconfig",
            str(path),
            0,
            "Unsupported",
            "the user has no bearer token (client certificates and exec plugins are not supported: "
            "use --api-server with --token-file, e.g. a token from `kubectl create token`)",
        )
    ca_file = str(cluster.get("certificate-authority", ""))
    if cluster.get("certificate-authority-data"):
        handle = tempfile.NamedTemporaryFile("wb", prefix="kube-ca-", suffix=".crt", delete=False)  # noqa: SIM115
        with handle:
            handle.write(base64.b64decode(cluster["certificate-authority-data"]))
        ca_file = handle.name
    return Credentials(
        server=server,
        token=token,
        token_file=token_file,
        ca_file=ca_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


class KubeClient:
    """REST calls with bounded retries (connection errors, 429 and 5xx), and ``pods/exec``."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.credentials = credentials
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "overhead-service-cluster-benchmark/1"

    def close(self) -> None:
        self._session.close()

    # --- REST ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        accept: str = "application/json",
    ) -> requests.Response:
        """The answer to ``method path``: 2xx, else :class:`ApiError` (after retrying transient ones)."""
        url = self.credentials.server + path
        for attempt in range(self.retries + 1):
            headers = {"Accept": accept}
            token = self.credentials.bearer()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=self.timeout_seconds,
                    verify=self.credentials.verify,
                )
            except requests.RequestException as exc:
                if attempt == self.retries:
                    raise ApiError(method, path, 0, "Unreachable", str(exc)) from None
                delay = self._backoff(attempt)
                log.warning("%s %s failed (%s); retrying in %.1f s", method, path, exc, delay)
                self._sleep(delay)
                continue
            if response.status_code < 300:
                return response
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                delay = self._backoff(attempt, response.headers.get("Retry-After"))
                log.warning("%s %s: %d; retrying in %.1f s", method, path, response.status_code, delay)
                self._sleep(delay)
                continue
            raise _api_error(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return _json_object(self.request("GET", path, params=params), path)

    def get_text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        return self.request("GET", path, params=params, accept="text/plain, */*").text

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _json_object(self.request("POST", path, body=body), path)

    def delete(self, path: str) -> bool:
        """Delete ``path``; False if it was already gone (404)."""
        try:
            self.request("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1"})
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None and retry_after.isdigit():
            return min(float(retry_after), MAX_BACKOFF)
        base = min(self.backoff_seconds * 2.0**attempt, MAX_BACKOFF)
        return float(base * (0.5 + random.random() / 2))  # jitter, so retrying clients do not align

    # --- pods/exec -------------------------------------------------------------------------------

    def exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        timeout_seconds: float | None = None,
    ) -> ExecResult:
        """Run ``command`` in ``container`` (no stdin, no TTY) and collect its output.

        Transient failures (no connection, 429/5xx before the upgrade) are retried like REST calls;
        a command that runs and fails is not (see :attr:`ExecResult.ok`).
        """
        query = [("container", container), ("stdout", "true"), ("stderr", "true")]
        query += [("command", part) for part in command]
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?{urlencode(query)}"
        for attempt in range(self.retries + 1):
            try:
                return self._exec_once(path, timeout_seconds or self.timeout_seconds)
            except _TransientExec as exc:
                if attempt == self.retries:
                    raise ExecError(f"exec {' '.join(command)} in {namespace}/{pod}: {exc}") from None
                delay = self._backoff(attempt)
                log.warning("exec in %s/%s failed (%s); retrying in %.1f s", namespace, pod, exc, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _exec_once(self, path: str, timeout: float) -> ExecResult:
        parts = urlsplit(self.credentials.server)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise _TransientExec(str(exc)) from None
        sock: socket.socket = raw
        try:
            if secure:
                context = ssl.create_default_context(cafile=self.credentials.ca_file or None)
                if self.credentials.insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(raw, server_hostname=host)
            return _exec_session(sock, parts.netloc, path, self.credentials.bearer(), timeout)
        except (OSError, ssl.SSLError) as exc:
            raise _TransientExec(str(exc)) from None
        finally:
            sock.close()


class _TransientExec(Exception):
    pass


def _exec_session(sock: socket.socket, netloc: str, path: str, token: str, timeout: float) -> ExecResult:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {_EXEC_PROTOCOL}",
        "User-Agent: overhead-service-cluster-benchmark/1",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    deadline = time.monotonic() + timeout
    reader = _Reader(sock, deadline)
    status_line, headers = reader.http_head()
    code = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    if code != 101:
        body = reader.rest(int(headers.get("content-length", "0") or 0))
        message = _status_message(body) or status_line
        if code in RETRY_STATUSES:
            raise _TransientExec(f"{code}: {message}")
        raise ExecError(f"exec refused: {code}: {message}")
    expected = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise ExecError("exec: the server's WebSocket handshake is invalid")
    channels: dict[int, bytearray] = {1: bytearray(), 2: bytearray(), 3: bytearray()}
    pending = bytearray()
    total = 0
    while True:
        fin, opcode, payload = reader.frame()
        if opcode == 0x8:  # close
            _send_frame(sock, 0x8, payload[:2])
            break
        if opcode == 0x9:  # ping
            _send_frame(sock, 0xA, payload)
            continue
        if opcode == 0xA:
            continue
        pending += payload
        total += len(payload)
        if total > MAX_EXEC_OUTPUT:
            raise ExecError(f"exec output larger than {MAX_EXEC_OUTPUT} bytes")
        if not fin:
            continue
        if pending:
            channel = pending[0]
            if channel in channels:
                channels[channel] += pending[1:]
        pending = bytearray()
        if channels[3]:  # the final status: nothing follows it
            break
    status: dict[str, Any] = {"status": "Unknown"}
    if channels[3]:
        try:
            status = json.loads(bytes(channels[3]))
        except ValueError:
            status = {"status": "Failure", "message": bytes(channels[3]).decode(errors="replace")}
    return ExecResult(
        stdout=bytes(channels[1]).decode(errors="replace"),
        stderr=bytes(channels[2]).decode(errors="replace"),
        status=status,
    )


def _send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """One masked frame (a client must mask what it sends)."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 1 << 16:
        header += bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with contextlib.suppress(OSError):  # the server may have closed: the output is complete anyway
        sock.sendall(header + mask + masked)


class _Reader:
    """Buffered reads from the socket, bounded by one deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ExecError("exec: timed out")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise ExecError("exec: timed out") from None
        self.buffer += chunk
        return bool(chunk)

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise ExecError("exec: the connection closed in the middle of a frame")
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def http_head(self) -> tuple[str, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 65536 or not self._fill():
                raise _TransientExec("no HTTP answer to the exec upgrade")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        first, *fields = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in fields:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return first, headers

    def rest(self, length: int) -> bytes:
        try:
            while len(self.buffer) < length and self._fill():
                pass
        except ExecError:
            pass
        return bytes(self.buffer)

    def frame(self) -> tuple[bool, int, bytes]:
        if not self.buffer and not self._fill():
            return True, 0x8, b""  # EOF between frames: as good as a close
        first, second = self.exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.exactly(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.exactly(8))[0]
        if length > MAX_EXEC_OUTPUT:
            raise ExecError(f"exec: a frame of {length} bytes")
        mask = self.exactly(4) if second & 0x80 else b""
        payload = self.exactly(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload


def _api_error(method: str, path: str, response: requests.Response) -> ApiError:
    reason, message = response.reason or "", response.text[:500]
    try:
        status = response.json()
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        reason = str(status.get("reason") or reason)
        message = str(status.get("message") or message)
    return ApiError(method, path, response.status_code, reason, message)


def _status_message(body: bytes) -> str:
    try:
        status = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _json_object(response: requests.Response, path: str) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        raise ApiError("GET", path, response.status_code, "BadResponse", "not JSON") from None
    if not isinstance(value, dict):
        raise ApiError("GET", path, response.status_code, "BadResponse", "not a JSON object")
    return value
