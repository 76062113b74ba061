"""Metrics and logs under a real gunicorn with two workers (the project's gunicorn settings).

Every scrape, whichever worker answers it, reports the exact totals of all workers; after a worker
is killed (-9) and respawned the totals stay exact and the live gauges are not doubled; every line
gunicorn and the application write is JSON, one access line per request.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import TOKENS
from overhead_service import cli, multiproc

pytestmark = pytest.mark.gunicorn

VMI = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}}}
FALLBACK = {
    "vmi": VMI,
    "kubevirtConfiguration": {"developerConfiguration": {"featureGates": ["HyperVL1VH"]}},
    "node": {"mshvAvailable": False},
}
BAD = {"vmi": {"spec": {"domain": {"cpu": {"cores": "two"}}}}}
ACCESS = "overhead_service.access"


def children(pid: int) -> set[int]:
    """The processes ``pid`` started (its gunicorn workers), from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Client:
    """Requests on fresh connections (so both workers get some), each with its own request id."""

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.sent = 0

    def post(self, body: dict[str, Any], request_id: str) -> int:
        response = requests.post(
            f"{self.server.base_url}/v1/overhead",
            json=body,
            headers={"X-Request-ID": request_id, "Connection": "close"},
            timeout=30,
        )
        assert response.headers["X-Request-ID"] == request_id
        return response.status_code

    def scrape(self, request_id: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = requests.get(
            f"{self.server.base_url}/metrics",
            headers={"X-Request-ID": request_id, "Connection": "close"},
            timeout=30,
        )
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.server.log(None).splitlines() if line.strip()]

    def pids_by_request(self) -> dict[str, int]:
        return {line["request_id"]: line["pid"] for line in self.lines() if line["logger"] == ACCESS}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _check_totals(samples: dict[Any, float], ok: int, fallbacks: int, bad: int) -> None:
    route = {"route": "/v1/overhead", "method": "POST"}
    assert _value(samples, "overhead_http_requests_total", **route, status="200") == ok + fallbacks
    assert _value(samples, "overhead_http_requests_total", **route, status="422") == bad
    assert (
        _value(samples, "overhead_http_request_duration_seconds_count", **route, status="200")
        == ok + fallbacks
    )
    assert _value(samples, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == ok + fallbacks
    assert _value(samples, "kubevirt_l1vh_fallback_total", reason="mshv-device-unavailable") == fallbacks
    assert (
        _value(samples, "overhead_answers_total", table="kubevirt-v1.9.0", hypervisor="kvm") == ok + fallbacks
    )
    # One series per label set (no pid label), and 1, not 1 per worker: livemax.
    info = {"hypervisor": "kvm", "arch": "*", "table": "kubevirt-v1.9.0", "provisional": "false"}
    assert _value(samples, "overhead_active_table_info", **info) == 1
    assert not any(dict(labels).get("pid") for _, labels in samples)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GunicornServer, Path]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by the previous run")
    env = {multiproc.ENV: str(metrics_dir)}
    with GunicornServer(f"sqlite:///{tmp_path / 'store.db'}", tokens=TOKENS, workers=2, env=env) as running:
        yield running, metrics_dir


def _spread(client: Client, bodies: list[tuple[str, dict[str, Any]]], workers: set[int]) -> dict[str, int]:
    """Send ``bodies`` (id, body) concurrently, then more plain ones until every worker answered
    some; the status per request id."""
    statuses: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=6) as pool:
        for request_id, status in zip(
            [rid for rid, _ in bodies],
            pool.map(lambda item: client.post(item[1], item[0]), bodies),
            strict=True,
        ):
            statuses[request_id] = status
        extra = 0
        while not workers <= set(client.pids_by_request().values()):
            assert extra < 400, "the requests never reached both workers"
            ids = [f"extra-{extra + i}" for i in range(6)]
            for request_id, status in zip(
                ids, pool.map(lambda rid: client.post({"vmi": VMI}, rid), ids), strict=True
            ):
                statuses[request_id] = status
            extra += 6
    return statuses


def _scrapes_from_every_worker(client: Client, workers: set[int], prefix: str) -> list[dict[Any, float]]:
    """Scrapes until each worker answered at least two; all of them, in order."""
    results: list[dict[Any, float]] = []
    ids: list[str] = []
    while True:
        request_id = f"{prefix}-{len(ids)}"
        results.append(client.scrape(request_id))
        ids.append(request_id)
        answered = client.pids_by_request()
        by_worker = {pid: sum(answered.get(i) == pid for i in ids) for pid in workers}
        if min(by_worker.values()) >= 2:
            return results
        assert len(ids) < 200, f"scrapes never reached every worker: {by_worker}"


def test_totals_are_exact_on_every_worker_and_survive_a_killed_worker(
    server: tuple[GunicornServer, Path],
) -> None:
    gunicorn, metrics_dir = server
    assert not (metrics_dir / "counter_999999.db").exists()  # the master wiped the old files
    client = Client(gunicorn)
    # Ready when one worker answers; on a busy machine the master may fork the second a moment later.
    wait_for(lambda: len(children(gunicorn.pid)) == 2, "both workers forked")
    workers = children(gunicorn.pid)

    bodies: list[tuple[str, dict[str, Any]]] = [(f"ok-{i}", {"vmi": VMI}) for i in range(20)]
    bodies += [(f"fallback-{i}", FALLBACK) for i in range(7)]
    bodies += [(f"bad-{i}", BAD) for i in range(5)]
    statuses = _spread(client, bodies, workers)
    ok = sum(1 for rid, status in statuses.items() if status == 200 and not rid.startswith("fallback"))
    assert ok >= 20
    assert sorted(rid for rid, status in statuses.items() if status != 200) == sorted(
        f"bad-{i}" for i in range(5)
    )
    for samples in _scrapes_from_every_worker(client, workers, "scrape-a"):
        _check_totals(samples, ok=ok, fallbacks=7, bad=5)

    # kill -9 one worker: the master respawns it and drops its live gauges (child_exit).
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in children(gunicorn.pid) and len(children(gunicorn.pid)) == 2, "a new worker"
    )
    wait_for(
        lambda: not list(metrics_dir.glob(f"gauge_live*_{victim}.db")), "the dead worker's gauges dropped"
    )
    assert list(metrics_dir.glob(f"counter_{victim}.db"))  # its counts stay: they still count
    workers = children(gunicorn.pid)
    replacement = (workers - {victim}).pop() if victim not in workers else None
    assert replacement is not None
    wait_for(
        lambda: list(metrics_dir.glob(f"gauge_livemax_{replacement}.db")) != [], "the new worker's gauges"
    )

    for samples in _scrapes_from_every_worker(client, workers, "scrape-b"):
        _check_totals(samples, ok=ok, fallbacks=7, bad=5)
    more = _spread(client, [(f"after-{i}", {"vmi": VMI}) for i in range(6)], workers)
    ok += sum(1 for status in more.values() if status == 200)
    for samples in _scrapes_from_every_worker(client, workers, "scrape-c"):
        _check_totals(samples, ok=ok, fallbacks=7, bad=5)

    # Logs: every line JSON (gunicorn's own included), one access line per request.
    lines = client.lines()
    access = [line["request_id"] for line in lines if line["logger"] == ACCESS]
    sent = {*statuses, *more}
    assert sorted(rid for rid in access if not rid.startswith("scrape-") and rid in sent) == sorted(sent)
    assert len(access) == len(set(access))
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    fallback_lines = [line for line in lines if line.get("request_id", "").startswith("fallback-")]
    assert len(fallback_lines) == 7
    assert all(
        line["level"] == "warning" and "devices.kubevirt.io/mshv" in line["remediation"]
        for line in fallback_lines
    )


def test_a_bare_gunicorn_run_gets_a_private_metrics_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR the settings make one on tmpfs (set before any worker imports
    prometheus_client, so the workers still share their counts), and remove it at exit."""
    _unset(monkeypatch, multiproc.ENV)
    with GunicornServer(f"sqlite:///{tmp_path / 'store.db'}", tokens=TOKENS, workers=2) as gunicorn:
        client = Client(gunicorn)
        workers = children(gunicorn.pid)
        statuses = _spread(client, [(f"p-{i}", {"vmi": VMI}) for i in range(8)], workers)
        for samples in _scrapes_from_every_worker(client, workers, "scrape"):
            _check_totals(samples, ok=len(statuses), fallbacks=0, bad=0)
        worker = min(workers)
        made = [path.parent for path in Path("/dev/shm").glob(f"overhead-metrics-*/*_{worker}.db")]
        assert len(set(made)) == 1
    assert not made[0].exists()


def _unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for the test, and again after it (serve exports them into os.environ)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_serve_exports_a_private_directory_before_gunicorn_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    _unset(monkeypatch, multiproc.ENV, multiproc.PRIVATE_ENV)
    started: list[tuple[str, list[str], str | None]] = []

    def execv(path: str, argv: list[str]) -> None:
        started.append((path, argv, os.environ.get(multiproc.ENV)))

    monkeypatch.setattr(os, "execv", execv)
    result = CliRunner().invoke(cli.main, ["serve", "--bind", "127.0.0.1:0", "--workers", "2"])
    assert result.exit_code == 0, result.output
    directory = started[0][2]
    try:
        assert directory is not None and Path(directory).is_dir()
        assert os.environ[multiproc.PRIVATE_ENV] == directory
        assert started[0][1][-1] == "overhead_service:create_app()"
    finally:
        multiproc.remove_private_dir()
    assert not Path(directory).exists()


def test_serve_keeps_the_operators_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mounted = tmp_path / "emptydir"
    monkeypatch.setenv(multiproc.ENV, str(mounted))
    _unset(monkeypatch, multiproc.PRIVATE_ENV)
    monkeypatch.setattr(os, "execv", lambda path, argv: None)
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    assert os.environ[multiproc.ENV] == str(mounted) and mounted.is_dir()
    assert multiproc.PRIVATE_ENV not in os.environ
    multiproc.remove_private_dir()
    assert mounted.is_dir()  # not ours to delete


def test_the_master_refuses_metrics_it_cannot_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client already imported (here: by the tests) and no directory: the workers would
    count in memory, each for itself, so gunicorn does not start."""
    from overhead_service import gunicorn_conf

    _unset(monkeypatch, multiproc.ENV)
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR was set"):
        gunicorn_conf.on_starting(None)
    assert multiproc.ENV not in os.environ
