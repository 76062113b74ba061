"""The libvirt path's upload (``python -m benchmarks.measure libvirt --url``): points reach the service
whole or not at all, whatever fails — the service going away mid-run, a request it refuses — and
what was not stored can be sent later with ``python -m benchmarks.measure upload``, storing each
record once.  The points are a fake runner's (no QEMU); the service is the real one (werkzeug, on a
loopback port), or a fake one where its answers are the subject."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from benchmarks.harness.tokens import INGEST_TOKEN
from benchmarks.measure import libvirt_cli
from benchmarks.measure import records as records_module
from benchmarks.measure.cli import main
from benchmarks.measure.config import BenchConfig, Point, expand
from benchmarks.measure.libvirt_runner import LibvirtMeasurement
from benchmarks.measure.upload import PendingUpload, Uploader, read_jsonl
from tests.benchmarks.test_measure import _FakeService
from tests.benchmarks.test_measure_libvirt import HOST, _measurement
from tests.conftest import AppFactory

RUN = "libvirt-upload-test"


class _Runner:
    """Measures nothing: each point is the canned two-domain measurement, with the point's shape
    (four records: two QEMUs, the daemon, virtlogd); ``before`` runs first, for a point index."""

    accelerator = "kvm"

    def __init__(self, before: Callable[[int], None] = lambda index: None) -> None:
        self.base = _measurement(domains=2)
        self.install = self.base.install
        self.before = before
        self.calls = 0

    def measure(self, point: Point, repetition: int, bound: float) -> LibvirtMeasurement:
        self.before(self.calls)
        self.calls += 1
        return dataclasses.replace(self.base, point=point, repetition=repetition)


def _config(points: int) -> BenchConfig:
    return expand(
        {
            "name": "up",
            "points": [{"vcpus": v, "memoryMiB": 1024, "domains": 2} for v in range(1, points + 1)],
        }
    )


def _run(
    runner: _Runner, url: str, out: Path, *, points: int = 4, batch_size: int = 5, attempts: int = 6
) -> tuple[int, dict[str, Any], str]:
    """``_measure_all`` as the CLI calls it, uploading to ``url`` (retries without waiting)."""
    config = _config(points)
    args = argparse.Namespace(out=out, max_seconds=None)
    out.write_text("")
    stdout, stderr = io.StringIO(), io.StringIO()
    with Uploader(url, INGEST_TOKEN, attempts=attempts, sleep=lambda seconds: None) as uploader:
        upload = PendingUpload(uploader, batch_size, stderr)
        status = libvirt_cli._measure_all(
            args,
            config,
            config.schedule(),
            runner,  # type: ignore[arg-type]
            HOST,
            RUN,
            upload,
            stdout,
            stderr,
        )
    return status, json.loads(stdout.getvalue().splitlines()[-1]), stderr.getvalue()


def _points(records: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Each point's scopes and domains among ``records`` (by the point part of the sample id)."""
    found: dict[str, set[str]] = {}
    for record in records:
        point, _, member = record["sampleId"].rpartition("-")
        found.setdefault(point, set()).add(member)
    return found


WHOLE = {"qemu0", "qemu1", "virtqemud", "virtlogd"}


def _stored(url: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/v1/measurements", params={"runId": RUN, "limit": "1000"}, timeout=30)
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


class _Service:
    """The real service on a loopback port; stop() takes it away, start() brings it back on the same
    database."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server: BaseWSGIServer | None = None
        self.url = ""
        self.start()

    def start(self) -> None:
        port = 0 if not self.url else int(self.url.rsplit(":", 1)[1])
        self.server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def service(app_factory: AppFactory) -> Iterator[_Service]:
    live = _Service(app_factory())
    yield live
    live.stop()


def test_every_point_is_stored_whole_once(service: _Service, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    status, summary, stderr = _run(_Runner(), service.url, out)
    assert status == 0, stderr
    assert summary["upload"] == {"stored": 16, "duplicates": 0, "requests": 4, "retries": 0, "error": None}
    stored = _stored(service.url)
    assert len(stored) == 16 and all(members == WHOLE for members in _points(stored).values())
    assert sorted(r["sampleId"] for r in stored) == sorted(r["sampleId"] for r in read_jsonl(out))
    # Sent again (as after a crash): every record is a duplicate, none is stored twice.
    err = io.StringIO()
    assert main(["upload", str(out), "--url", service.url, "--token", INGEST_TOKEN], io.StringIO(), err) == 0
    assert len(_stored(service.url)) == 16


def test_the_service_going_away_leaves_whole_points_and_the_rest_is_sent_later(
    service: _Service, tmp_path: Path
) -> None:
    def away_before_the_third(index: int) -> None:
        if index == 2:
            service.stop()

    out = tmp_path / "run.jsonl"
    status, summary, stderr = _run(_Runner(away_before_the_third), service.url, out, attempts=2)
    assert status == 3, stderr  # the upload failed
    # A point waits until the next one fills the request: the first was sent, the second was not.
    assert summary["measured"] == 4 and summary["upload"]["stored"] == 4
    assert "failed after 2 attempts" in summary["upload"]["error"]
    assert f"send them later with: python -m benchmarks.measure upload {out}" in stderr
    assert len(read_jsonl(out)) == 16  # every point measured is in the file

    service.start()
    stored = _stored(service.url)
    assert len(stored) == 4 and all(members == WHOLE for members in _points(stored).values())
    later = io.StringIO()
    assert (
        main(["upload", str(out), "--url", service.url, "--token", INGEST_TOKEN], later, io.StringIO()) == 0
    )
    assert json.loads(later.getvalue()) | {"requests": 1} == {
        "records": 16, "stored": 12, "duplicates": 4, "requests": 1, "retries": 0
    }  # fmt: skip
    stored = _stored(service.url)
    assert len(stored) == 16 and all(members == WHOLE for members in _points(stored).values())


def test_a_refused_request_stores_none_of_its_points(
    service: _Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the service refuses (422: a record it finds wrong) stores nothing; nothing more is
    sent; the points before it are stored whole."""
    build = records_module.build_libvirt_records

    def second_point_corrupted(*arguments: Any) -> list[dict[str, Any]]:
        records = build(*arguments)
        if arguments[0].point.vcpus == 2:  # what the run's own check let through, the service refuses
            records = copy.deepcopy(records)
            records[2]["vm"]["vcpus"] = 0
        return records

    monkeypatch.setattr(libvirt_cli, "build_libvirt_records", second_point_corrupted)
    out = tmp_path / "run.jsonl"
    status, summary, stderr = _run(_Runner(), service.url, out, batch_size=8)
    assert status == 3, stderr
    assert summary["upload"]["stored"] == 0 and summary["upload"]["requests"] == 1
    assert "records[6].vm.vcpus" in summary["upload"]["error"]  # the 2nd point's virtqemud record
    assert _stored(service.url) == []  # the first point shared the request: not stored either
    assert len(read_jsonl(out)) == 16


def test_requests_hold_whole_points(tmp_path: Path) -> None:
    """Batches of 5 records with points of 4: one point per request (never 4 + 1); a larger batch
    takes as many whole points as fit; a rejected request stops the uploads."""
    with _FakeService([]) as fake:
        status, summary, _ = _run(_Runner(), fake.url, tmp_path / "a.jsonl", points=5, batch_size=5)
    assert status == 0 and [len(body["records"]) for body in fake.bodies] == [4, 4, 4, 4, 4]
    with _FakeService([]) as fake:
        _run(_Runner(), fake.url, tmp_path / "b.jsonl", points=5, batch_size=9)
    assert [len(body["records"]) for body in fake.bodies] == [8, 8, 4]
    for body in fake.bodies:
        assert all(members == WHOLE for members in _points(body["records"]).values())
    with _FakeService([200, 422]) as fake:
        status, summary, stderr = _run(_Runner(), fake.url, tmp_path / "c.jsonl", points=5, batch_size=4)
    assert status == 3 and len(fake.bodies) == 2  # nothing sent after the refusal
    assert summary["upload"]["stored"] == 4 and "upload rejected with 422" in stderr


def test_cli_options_for_the_upload(tmp_path: Path) -> None:
    config = str(Path(libvirt_cli.__file__).parent / "libvirt-smoke.yaml")
    for bad in (["--url", "http://x"], ["--batch-size", "0", "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit):
            main(["libvirt", "--config", config, *bad], io.StringIO(), io.StringIO())
    with pytest.raises(SystemExit):  # neither --out nor --url
        main(["libvirt", "--config", config], io.StringIO(), io.StringIO())
