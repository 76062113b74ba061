"""benchmarks/bench_load.py: a brief run with the built-in client gives a well-formed report in which
every answer was 2xx, the slow-client round saw every slow connection answered 408 and closed while
a fresh client was answered, the soak lost no acknowledged record, and the server is gone
afterwards, also when the run is interrupted; the built-in client counts every answer by status.
No timing is asserted: these check structure."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load_clients import http_request, python_load
from tests.support import ROOT

pytestmark = pytest.mark.gunicorn

BENCH = [sys.executable, "-m", "benchmarks.bench_load"]


def _environment() -> dict[str, str]:
    # Run from a scratch directory: the checkout goes on the module path, as `make` has it as cwd.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _assert_server_gone(report: dict[str, Any]) -> None:
    """Nothing listens on the benchmark's port, and the gunicorn master has exited."""
    pid = report["meta"]["server_pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    port = report["meta"]["server_port"]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_brief_run_reports_every_level_and_endpoint_all_2xx(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--client", "python", "--levels", "1,3", "--duration", "1", "--warmup", "0", "--rounds", "2"]
    argv += ["--bodies", "40", "--workers", "2", "--json", str(out)]
    argv += ["--slow-connections", "8", "--slow-seconds", "8", "--read-seconds", "2"]
    argv += ["--soak-seconds", "4", "--soak-clients", "1"]
    result = subprocess.run(
        [*BENCH, *argv], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=_environment()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())

    assert report["meta"]["client"] == "python"
    assert report["meta"]["bodies"] == 40 and 1 < report["meta"]["shapes"] <= 40  # a mix of shapes
    assert report["stopped"] is None and report["skipped_levels"] == []
    assert [level["connections"] for level in report["levels"]] == [1, 3]
    total = 0
    for level in report["levels"]:
        for name, endpoint in (("healthz", "GET /healthz"), ("overhead", "POST /v1/overhead")):
            rounds = level["rounds"][name]
            assert len(rounds) == 2
            # The row is the lower-middle round by throughput: of two, the slower.
            assert level[name] == min(rounds, key=lambda r: r["rps"])
            for run in rounds:
                assert run["endpoint"] == endpoint and run["client"] == "python"
                assert run["connections"] == level["connections"]
                assert run["answers"] > 0
                assert run["statuses"] == {"200": run["answers"]}  # every answer 2xx, all counted
                assert run["non_2xx"] == 0 and run["socket_errors"] == 0
                assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["max_ms"]
                assert run["rps"] == pytest.approx(run["answers"] / run["seconds"])
                total += run["answers"]
        assert level["ratio"] == pytest.approx(level["overhead"]["rps"] / level["healthz"]["rps"])
    assert report["totals"] == {
        "answers": total,
        "non_2xx": 0,
        "socket_errors": 0,
        "seconds": report["totals"]["seconds"],
    }
    memory = report["memory"]  # every process measured: the master and both workers
    assert len(memory["workers"]) == 2
    for process in [memory["master"], *memory["workers"]]:
        assert process["rss"] >= process["pss"] > 0
    assert memory["total_pss_mib"] == pytest.approx(
        memory["master"]["pss"] + sum(w["pss"] for w in memory["workers"]), abs=0.2
    )
    slow = report["slow"]
    assert slow["connections"] == 8 and slow["answered"] == {"408": 8} and slow["still_open"] == 0
    assert slow["during"]["count"] > 0 and slow["during"]["failures"] == {}
    assert slow["baseline"]["count"] > 0 and slow["baseline"]["failures"] == {}
    soak = report["soak"]
    assert soak["errors"] == 0 and soak["lost_records"] == 0 and soak["acknowledged_records"] > 0
    assert {"overhead", "render", "batch", "upload", "metrics"} <= set(soak["operations"])
    assert len(soak["memory_before"]["workers"]) == len(soak["memory_after"]["workers"]) == 2
    assert soak["workers_restarted"] is False and report["rounds_ok"] is True
    assert report["skipped_rounds"] == []
    # The printed table: one row per endpoint and level, each naming its client.
    rows = [line for line in result.stdout.splitlines() if line.startswith("python |")]
    assert len(rows) == 4
    assert [row.split("|")[2].strip() for row in rows] == ["GET /healthz", "POST /v1/overhead"] * 2
    _assert_server_gone(report)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_stops_the_server_and_reports(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "load.json"
    argv = ["--client", "python", "--levels", "2", "--duration", "60", "--warmup", "0", "--bodies", "20"]
    argv += [
        "--rounds",
        "1",
        "--workers",
        "1",
        "--json",
        str(out),
        "--slow-connections",
        "0",
        "--soak-seconds",
        "0",
    ]
    # Started as a background job of a non-interactive shell is (as CI may start it): SIGINT
    # ignored on entry, which Python leaves as it is. The benchmark must still stop on it.
    process = subprocess.Popen(
        [*BENCH, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=_environment(), preexec_fn=_ignore_sigint,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the table header: the load is about to start
            if line.startswith("client |"):
                break
        process.send_signal(signum)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()  # else a failure here leaks the pipe into a later test
    assert process.returncode == 130, output
    assert "INTERRUPTED" in output
    report = json.loads(out.read_text())
    assert report["stopped"] == "interrupted"
    assert report["levels"] == []  # the level under way is not reported half done
    _assert_server_gone(report)


# --- the built-in client, against a minimal keep-alive server --------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """POST body ``ok`` answers 200, anything else 422; path /close also closes the connection."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = b'{"status": "ok"}'
        self.send_response(200 if body == b"ok" else 422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tiny_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("path", ["/keep", "/close"])
def test_python_client_counts_every_answer_by_status(tiny_server: int, path: str) -> None:
    # Requests are handed out in turn: ok, bad, bad, ok, ... so one in three answers is a 200.
    requests = [http_request("POST", path, tiny_server, body) for body in (b"ok", b"bad", b"bad")]
    result = python_load(tiny_server, requests, connections=3, seconds=0.3)
    n = result.answers
    assert n > 3
    assert result.statuses == {"200": math.ceil(n / 3), "422": n - math.ceil(n / 3)}
    assert result.non_2xx == n - math.ceil(n / 3)
    assert result.socket_errors == 0  # a server closing after its answer is not an error
    assert result.client == "python" and result.connections == 3
