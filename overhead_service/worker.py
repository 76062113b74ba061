"""The gunicorn worker of ``overhead-service serve``: gthread, but each request is read whole by the
worker's event loop before a thread answers it, and the errors gunicorn answers itself are
problem documents.

gunicorn's threaded worker hands a connection to a thread as soon as it is readable; the thread
then blocks until the request has arrived. A client that sends a byte a second holds that thread,
and a handful of them hold every thread (2 workers x 4 threads: 16 such clients made ``/healthz``
time out for everyone). Here the event loop reads the request line, the headers and the body
without blocking, as a buffering proxy would, and only a complete request goes to a thread: a slow
client costs a buffer, never a thread. The measurements behind this choice (gthread with more
threads, the gevent worker) are in the README ("Slow and broken clients").

Bounds, all on the event loop (``REQUEST_READ_SECONDS`` is a setting, :mod:`overhead_service.config`):

- a connection must start a request within ``keepalive`` seconds (else it is closed silently, as
  gunicorn closes an idle kept-alive connection);
- once its first byte has arrived, the whole request (head and body) must arrive within
  ``REQUEST_READ_SECONDS``; else it is answered 408 and closed;
- the request line is at most :data:`MAX_REQUEST_LINE` bytes (414); the head at most that plus
  gunicorn's header limits (431), which gunicorn's parser then checks field by field;
- bodies are held while the worker holds less than :data:`BUFFER_BUDGET` bytes for requests still
  arriving; a request that would take more goes to a thread with what has arrived, and the thread
  reads the rest under the same deadline (:class:`_RequestSource`).

TLS connections are wrapped and their handshakes done on the loop too; only HTTP/1.x is served.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Final

from gunicorn import sock as gsock  # type: ignore[import-untyped]  # gunicorn ships no types
from gunicorn.http import errors as herrors  # type: ignore[import-untyped]
from gunicorn.http import get_parser
from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

from overhead_service.config import resolve as resolve_settings

__all__ = ["BUFFER_BUDGET", "MAX_REQUEST_LINE", "BufferingThreadWorker", "problem_answer"]

MAX_REQUEST_LINE: Final = 64 * 1024
"""The longest request line (method, target with its query string, version): 414 beyond. The
longest query the API takes (100 run ids of 200 characters, percent-encoded) fits."""
BUFFER_BUDGET: Final = 64 * 1024 * 1024
"""Bytes a worker holds at most for requests still arriving, before threads take them over."""

_READ_SIZE: Final = 256 * 1024
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024
_CHUNK_LINE_LIMIT: Final = 8192  # gunicorn refuses a longer chunk-size line (8190)
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_PROBLEM_TYPE: Final = "about:blank"

# gunicorn's own client errors (gunicorn.workers.base.Worker.handle_error), by status.
_CLIENT_ERRORS: Final[tuple[tuple[tuple[type[BaseException], ...], int, str], ...]] = (
    ((herrors.LimitRequestLine,), 414, "URI Too Long"),
    ((herrors.LimitRequestHeaders,), 431, "Request Header Fields Too Large"),
    ((herrors.UnsupportedTransferCoding,), 501, "Not Implemented"),
    ((herrors.ExpectationFailed,), 417, "Expectation Failed"),
    ((herrors.ForbiddenProxyRequest, ssl.SSLError), 403, "Forbidden"),
    ((herrors.ParseException,), 400, "Bad Request"),
)


def problem_answer(status: int, title: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer carrying an RFC 9457 problem document, closing the connection."""
    body = json.dumps(
        {"type": _PROBLEM_TYPE, "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _RequestSource:
    """The socket as the request parser sees it: first the bytes the loop read, then the socket.

    Served a slice at a time rather than put back into gunicorn's read buffer, which copies all it
    holds on every read (a 12 MiB body read that way took 43 ms, 32 MiB 374 ms). Only a request
    handed on before it had fully arrived (over :data:`BUFFER_BUDGET`) reads the socket itself,
    and those reads end at the request's deadline.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.deadline: float | None = None
        self._held = b""
        self._offset = 0

    def hold(self, data: bytes, deadline: float | None) -> None:
        """Serve ``data`` before reading the socket; ``deadline`` bounds reading it afterwards."""
        self._held, self._offset, self.deadline = data, 0, deadline

    def take(self) -> bytes:
        """What is held and was not read (the start of a pipelined request)."""
        rest = self._held[self._offset :]
        self._held, self._offset = b"", 0
        return rest

    def recv(self, size: int) -> bytes:
        if self._offset < len(self._held):
            chunk = self._held[self._offset : self._offset + size]
            self._offset += len(chunk)
            if self._offset == len(self._held):
                self._held, self._offset = b"", 0
            return chunk
        if self.deadline is None:
            data: bytes = self.sock.recv(size)
            return data
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(size)
        finally:
            self.sock.settimeout(None)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@dataclass(eq=False)
class _Reading:
    """A request being read by the loop: its bytes so far and how far they have been examined."""

    deadline: float
    started: bool = False  # a byte of this request has arrived (the read deadline runs)
    handshaking: bool = False
    data: bytearray = field(default_factory=bytearray)
    head_end: int = -1  # offset just past the blank line ending the head
    body_end: int = -1  # offset just past the body (Content-Length), when known
    chunk_at: int = -1  # offset of the next chunk-size line (chunked body)
    scanned: int = 0  # the head was searched up to here
    line_seen: bool = False  # the request line has ended
    lingering: bool = False  # refused: the answer is sent, the rest discarded until closing


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no types
    """``gthread`` whose event loop reads each request whole before a thread answers it."""

    buffer_budget = BUFFER_BUDGET

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_seconds = float(resolve_settings()["REQUEST_READ_SECONDS"])
        self.max_head = MAX_REQUEST_LINE + self.cfg.limit_request_fields * (
            self.cfg.limit_request_field_size + 2
        )
        self.readings: dict[Any, _Reading] = {}
        self.buffered = 0

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if "h2" in cfg.http_protocols or cfg.http2_cleartext != "off":
            raise RuntimeError("overhead_service.worker serves HTTP/1.x only: leave HTTP/2 off")

    # -- every request passes through here: new connections, kept-alive ones, pipelined requests --

    def enqueue_req(self, conn: Any) -> None:
        """Start reading a request on ``conn`` (gthread would hand it to a thread at once)."""
        reading = _Reading(deadline=time.monotonic() + self.cfg.keepalive)
        if conn.parser is not None:  # a kept-alive connection: bytes read ahead stay first
            reading.data += conn.parser.unreader.take_buffered()
        elif self.cfg.is_ssl:
            try:
                conn.sock = gsock.ssl_context(self.cfg).wrap_socket(
                    conn.sock,
                    server_side=True,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=False,
                )
            except (OSError, ValueError):
                self._close(conn)
                return
            reading.handshaking = True
            reading.started = True  # the handshake counts against the read deadline
            reading.deadline = time.monotonic() + self.read_seconds
        conn.sock.setblocking(False)
        self.readings[conn] = reading
        self.buffered += len(reading.data)
        if reading.data:
            reading.started = True
            reading.deadline = time.monotonic() + self.read_seconds
        self._advance(conn, reading)

    def _on_ready(self, conn: Any, _sock: Any) -> None:
        reading = self.readings.get(conn)
        if reading is not None:
            self._unregister(conn)
            if reading.lingering:
                self._linger(conn, reading)
            else:
                self._advance(conn, reading)

    def _advance(self, conn: Any, reading: _Reading) -> None:
        """Read what the socket has; hand the request on when complete, else wait for more."""
        if reading.handshaking and not self._handshake(conn, reading):
            return
        try:
            while True:
                if reading.data and self._complete(conn, reading):
                    return
                chunk = conn.sock.recv(_READ_SIZE)
                if not chunk:  # the client stopped sending: what it sent is all there is
                    if reading.data and not reading.handshaking:
                        self._dispatch(conn, reading)  # the parser or the app says what is missing
                    else:
                        self._close(conn)
                    return
                if not reading.started:
                    reading.started = True
                    reading.deadline = time.monotonic() + self.read_seconds
                reading.data += chunk
                self.buffered += len(chunk)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            self._wait(conn, write=False)
        except ssl.SSLWantWriteError:
            self._wait(conn, write=True)
        except OSError:
            self._close(conn)

    def _handshake(self, conn: Any, reading: _Reading) -> bool:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._wait(conn, write=False)
            return False
        except ssl.SSLWantWriteError:
            self._wait(conn, write=True)
            return False
        except OSError:  # SSLError included: not TLS, bad certificate, reset
            self._close(conn)
            return False
        reading.handshaking = False
        return True

    def _complete(self, conn: Any, reading: _Reading) -> bool:
        """Whether the request is ready for a thread (handed on), or answered here; False: wait."""
        if reading.head_end < 0 and not self._head(conn, reading):
            return reading.head_end == -2  # -2: refused here
        data = reading.data
        if reading.body_end >= 0:
            if len(data) >= reading.body_end:
                return self._dispatch(conn, reading)
            if reading.body_end - len(data) > self.buffer_budget - self.buffered:
                return self._dispatch(conn, reading, partial=True)
            return False
        if reading.chunk_at < 0:  # no body
            return self._dispatch(conn, reading)
        ended = _chunks_end(data, reading)
        if ended or self.buffered >= self.buffer_budget:
            return self._dispatch(conn, reading, partial=not ended)
        return False

    def _head(self, conn: Any, reading: _Reading) -> bool:
        """Find the end of the head, each byte examined once; False: not there yet (or refused)."""
        data = reading.data
        start = 2 if data.startswith(b"\r\n") else 0  # RFC 9112 2.2: one empty line may lead
        if not reading.line_seen:
            line_end = data.find(b"\r\n", max(reading.scanned - 1, start))
            reading.line_seen = line_end >= 0
            if (line_end if line_end >= 0 else len(data)) - start > MAX_REQUEST_LINE:
                reading.head_end = -2
                self._refuse(conn, 414, "URI Too Long", f"the request line is over {MAX_REQUEST_LINE} bytes")
                return False
        end = data.find(b"\r\n\r\n", max(reading.scanned - 3, start))
        if end < 0:
            reading.scanned = len(data)
            if len(data) > self.max_head:
                reading.head_end = -2
                self._refuse(conn, 431, "Request Header Fields Too Large", "the request head is too large")
            return False
        head = bytes(data[start:end])
        length, chunked, expect = _framing(head)
        if expect is not None:
            # The client waits for this before sending its body (curl, Go); gunicorn would send it
            # from the thread, only once the body has arrived. Said here, so the line goes.
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            del data[start + expect[0] : start + expect[1]]
            end -= expect[1] - expect[0]
            self.buffered -= expect[1] - expect[0]
        reading.head_end = end + 4
        if chunked:
            reading.chunk_at = reading.head_end
        elif length is not None:
            reading.body_end = reading.head_end + length
        return True

    def _dispatch(self, conn: Any, reading: _Reading, partial: bool = False) -> bool:
        """Hand the request to a thread, the bytes read so far held for its parser."""
        del self.readings[conn]
        self.buffered -= len(reading.data)
        if conn.parser is None:
            conn.parser = get_parser(self.cfg, _RequestSource(conn.sock), conn.client)
        conn.parser.unreader.sock.hold(bytes(reading.data), reading.deadline if partial else None)
        conn.initialized = True  # parser and TLS set up here: TConn.init() has nothing to do
        conn.data_ready = True
        super().enqueue_req(conn)
        return True

    def finish_request(self, conn: Any, fs: Any) -> None:
        """As gthread's, once bytes read past the request (pipelined) are back in the parser's
        buffer, where gthread looks for them."""
        source = getattr(getattr(conn.parser, "unreader", None), "sock", None)
        if isinstance(source, _RequestSource):
            rest = source.take()
            if rest:
                conn.parser.unreader.unread(rest)
        super().finish_request(conn, fs)

    def _refuse(self, conn: Any, status: int, title: str, detail: str) -> None:
        """Answer a problem document from the loop, then close once the client has had it.

        Closing a socket with unread bytes sends a reset, which can destroy the answer before the
        client reads it; so the sending side is shut first and what still arrives is discarded
        (at most :data:`_LINGER_BYTES`, for :data:`_LINGER_SECONDS`), as gunicorn's
        ``close_graceful`` does in a thread.
        """
        self.log.warning("Invalid request from ip=%s: %s", _ip(conn.client), detail)
        reading = self.readings.get(conn)
        if reading is None:
            self._close(conn)
            return
        self._unregister(conn)
        self.buffered -= len(reading.data)
        reading.data = bytearray()
        reading.lingering = True
        reading.deadline = time.monotonic() + _LINGER_SECONDS
        try:
            conn.sock.send(problem_answer(status, title, detail))
            conn.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close(conn)
            return
        self._wait(conn, write=False)

    def _linger(self, conn: Any, reading: _Reading) -> None:
        try:
            while True:
                discarded = len(conn.sock.recv(_READ_SIZE))
                reading.scanned += discarded
                if not discarded or reading.scanned > _LINGER_BYTES:
                    self._close(conn)
                    return
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._wait(conn, write=False)
        except OSError:
            self._close(conn)

    def _wait(self, conn: Any, *, write: bool) -> None:
        event = 2 if write else 1  # selectors.EVENT_WRITE / EVENT_READ
        self.poller.register(conn.sock, event, lambda fileobj: self._on_ready(conn, fileobj))

    def _unregister(self, conn: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _close(self, conn: Any) -> None:
        reading = self.readings.pop(conn, None)
        if reading is not None:
            self.buffered -= len(reading.data)
            self._unregister(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Called once per loop turn (at least every second): also end requests past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        for conn, reading in [(c, r) for c, r in self.readings.items() if r.deadline <= now]:
            if reading.started and not reading.handshaking and not reading.lingering:
                detail = f"the request did not arrive within {self.read_seconds:g} s"
                self._refuse(conn, 408, "Request Timeout", detail)
            else:
                self._close(conn)

    # -- gunicorn's own error answers ----------------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """As gunicorn's, but the answer is a problem document, not an HTML page."""
        for classes, client_status, client_title in _CLIENT_ERRORS:
            if isinstance(exc, classes) and not isinstance(
                exc, herrors.InvalidResponseHeader | herrors.InvalidResponseHeaderName
            ):
                self.log.warning("Invalid request from ip=%s: %s", _ip(addr), exc)
                status, title, detail = client_status, client_title, str(exc) or client_title
                break
        else:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
            status, title, detail = 500, "Internal Server Error", "the server could not answer"
        try:
            client.setblocking(False)
            client.send(problem_answer(status, title, detail))
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EAGAIN):
                self.log.debug("Failed to send error message: %s", err)


def _ip(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else "unix"


def _framing(head: bytes) -> tuple[int | None, bool, tuple[int, int] | None]:
    """``(Content-Length, chunked, Expect line)`` of a request head, the line as offsets in ``head``
    (with its CRLF before it). No length and not chunked: no body, or framing gunicorn's parser
    refuses (both headers, several lengths, a bad length): it goes to the parser as it is."""
    length: int | None = None
    lengths = 0
    coding = chunked = False
    expect: tuple[int, int] | None = None
    at = head.find(b"\r\n")
    while at >= 0:
        following = head.find(b"\r\n", at + 2)
        line = head[at + 2 : following if following >= 0 else len(head)]
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            lengths += 1
            text = value.strip()
            length = int(text) if text.isdigit() and len(text) < 19 else None
        elif name == b"transfer-encoding":
            coding = True
            chunked = value.strip().lower().endswith(b"chunked")
        elif (
            name == b"expect"
            and value.strip().lower() == b"100-continue"
            and head.endswith(b"/1.1", 0, head.find(b"\r\n"))
        ):
            expect = (at, following if following >= 0 else len(head))
        at = following
    if coding:
        return None, chunked and lengths == 0, expect
    return (length if lengths == 1 else None), False, expect


def _chunks_end(data: bytearray, reading: _Reading) -> bool:
    """Whether a chunked body has ended (or is malformed: the parser will say so); advances
    ``reading.chunk_at`` past the complete chunks, so every byte is examined once."""
    while True:
        at = reading.chunk_at
        eol = data.find(b"\r\n", at, at + _CHUNK_LINE_LIMIT)
        if eol < 0:
            return len(data) - at > _CHUNK_LINE_LIMIT
        size_text = bytes(data[at:eol]).split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.fullmatch(size_text):
            return True
        size = int(size_text, 16)
        if size == 0:  # the last chunk, then trailer fields up to an empty line
            tail = eol + 2
            return data.startswith(b"\r\n", tail) or data.find(b"\r\n\r\n", tail) >= 0
        following = eol + 2 + size + 2
        if len(data) < following:
            return False
        if data[following - 2 : following] != b"\r\n":
            return True
        reading.chunk_at = following
