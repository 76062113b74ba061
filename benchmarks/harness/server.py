"""A real gunicorn serving the app (the project's gunicorn settings, loopback), and an upload client.

Used by the concurrency test and by ``benchmarks/bench_ingest.py``. The schema is created by the
settings' ``on_starting`` hook in gunicorn's master, as in production.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from benchmarks.harness.tls import TlsFiles

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["GunicornServer", "UploadReport", "upload_batches"]


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Resolved now, in the parent: the child between fork and exec should do as little as it can.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (gunicorn's graceful stop) when the thread that started
    it ends, so a test or benchmark killed with SIGKILL leaves no server behind."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GunicornServer:
    """``gunicorn -c python:overhead_service.gunicorn_conf`` on a free loopback port; a context manager."""

    def __init__(
        self,
        database_url: str,
        *,
        tokens: str,
        workers: int = 2,
        threads: int | None = None,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        worker_class: str | None = None,
    ) -> None:
        """``env``: more environment variables for gunicorn (e.g. ``PROMETHEUS_MULTIPROC_DIR``);
        ``tls``: serve HTTPS with that certificate (the readiness check verifies it with the CA);
        ``worker_class``: another gunicorn worker than the project's (benchmarks compare them)."""
        self.database_url = database_url
        self.tls = tls
        self.env = dict(env or {})
        self.tokens = tokens
        self.workers = workers
        self.threads = threads
        self.worker_class = worker_class
        self.port = 0
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        descriptor, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
        os.close(descriptor)
        self._log = Path(name)

    def start(self, timeout: float = 60) -> GunicornServer:
        self.port = _free_port()
        self.base_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "gunicorn", "--config", "python:overhead_service.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.tls is not None:
            argv += ["--certfile", str(self.tls.cert), "--keyfile", str(self.tls.key)]
        if self.worker_class is not None:
            argv += ["--worker-class", self.worker_class]
        argv.append("overhead_service:create_app()")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
        env.update({"OVERHEAD_DATABASE_URL": self.database_url, "OVERHEAD_TOKENS": self.tokens})
        env.update(self.env)
        with self._log.open("wb") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self._process.returncode}:\n{self.log()}")
            try:
                verify: str | bool = str(self.tls.ca) if self.tls is not None else True
                if requests.get(f"{self.base_url}/readyz", timeout=2, verify=verify).status_code == 200:
                    return self
            # A timeout too: on a busy machine the first request can wait for a worker to boot.
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                self.stop()  # `with` calls no __exit__ when __enter__ fails: do not leave it running
                raise RuntimeError(f"gunicorn not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM (graceful), then wait; returns gunicorn's exit status."""
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    @property
    def pid(self) -> int:
        """The gunicorn master's process id (0 before start)."""
        return self._process.pid if self._process is not None else 0

    def worker_pids(self) -> list[int]:
        """The master's children: its workers (read from /proc, Linux only)."""
        if self._process is None:
            return []
        children = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:  # the master has exited
            return []

    def log(self, tail: int | None = 5000) -> str:
        """The end of gunicorn's output (its last ``tail`` characters; None: all of it)."""
        text = self._log.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)


@dataclass
class UploadReport:
    """What one client saw: the answers to its batches, in order, and how often it retried."""

    answers: list[dict[str, object]] = field(default_factory=list)
    retries: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds per answered request
    started: float = 0.0  # time.time() when the first request went out
    finished: float = 0.0


def upload_batches(base_url: str, token: str, bodies: list[bytes], attempts: int = 5) -> UploadReport:
    """POST each pre-encoded body to ``/v1/measurements``, retrying connection errors (a retried
    batch may report as duplicates what the lost answer had stored). Any other answer than 200
    raises."""
    report = UploadReport()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    report.started = time.time()
    with requests.Session() as session:
        for body in bodies:
            for attempt in range(attempts):
                sent = time.perf_counter()
                try:
                    response = session.post(
                        f"{base_url}/v1/measurements", data=body, headers=headers, timeout=60
                    )
                    break
                except requests.ConnectionError:
                    if attempt == attempts - 1:
                        raise
                    report.retries += 1
                    time.sleep(0.05 * 2**attempt)
            if response.status_code != 200:
                raise RuntimeError(f"upload answered {response.status_code}: {response.text[:2000]}")
            report.latencies.append(time.perf_counter() - sent)
            report.answers.append(response.json())
    report.finished = time.time()
    return report
