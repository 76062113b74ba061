"""Raw HTTP/1.1 over a socket: what no well-behaved client library will send (broken framing, slow
trickles, oversized heads), and the answers read back byte for byte.

Loopback only: every function takes a port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "exchange", "parse_answer", "read_answer", "read_answers", "request_head"]


@dataclass
class Answer:
    """One HTTP answer: status, headers (lower-case names), body; 1xx interim answers before it."""

    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    """A request line and headers (``Host`` first), ending with the empty line."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_answer(data: bytes, *, head_only: bool = False) -> tuple[Answer, bytes] | None:
    """The first whole answer in ``data`` and what follows it; None while it is incomplete.
    ``head_only``: the answer to a HEAD request (a Content-Length but no body)."""
    interim: list[int] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = data[end + 4 :]
        if 100 <= status < 200:
            interim.append(status)
            data = rest
            continue
        length = 0 if head_only or status in (204, 304) else int(headers.get("content-length", "0"))
        if len(rest) < length:
            return None
        return Answer(status, headers, rest[:length], interim), rest[length:]


def read_answer(sock: socket.socket, timeout: float, *, head_only: bool = False) -> Answer | None:
    """Read one answer from ``sock``; None when the server closes without a whole answer."""
    answers = read_answers(sock, 1, timeout, head_only=head_only)
    return answers[0] if answers else None


def read_answers(sock: socket.socket, count: int, timeout: float, *, head_only: bool = False) -> list[Answer]:
    """Read up to ``count`` answers in a row from ``sock`` (pipelined requests), fewer when the
    server closes first or ``timeout`` passes."""
    answers: list[Answer] = []
    data = b""
    deadline = time.monotonic() + timeout
    while len(answers) < count:
        parsed = parse_answer(data, head_only=head_only)
        if parsed is not None:
            answers.append(parsed[0])
            data = parsed[1]
            continue
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return answers


def exchange(
    port: int, raw: bytes, *, half_close: bool = True, timeout: float = 10, head_only: bool = False
) -> Answer | None:
    """Send ``raw`` on a new connection (then end the sending side unless ``half_close`` is
    False) and read one answer; None when the server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused before it had all of it: the answer may still be there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        if half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        return read_answer(sock, timeout, head_only=head_only)
