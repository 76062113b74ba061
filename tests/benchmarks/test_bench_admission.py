"""The admission benchmark runs end to end, briefly: HTTPS server, both endpoints at 1 and 8
connections, the in-process comparison, a report without errors (timing is not judged here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_admission

pytestmark = pytest.mark.gunicorn


def test_a_short_run_reports_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    status = bench_admission.main(["--seconds", "0.3", "--rounds", "1", "--json", str(out)])
    assert status == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {(row["connections"], row["endpoint"]) for row in report["rows"]}
    assert rows == {
        (connections, endpoint)
        for connections in (1, 8)
        for endpoint in ("GET /healthz", "POST /v1/admission/vmi/headroom")
    }
    assert all(row["answers"] > 0 and row["error_count"] == 0 for row in report["rows"])
    assert set(report["in_process_us"]) == {
        "review shadow",
        "review headroom",
        "jsonpatch.make_patch (library diff)",
        "hand-built patch, encoded",
    }
    assert "target: p99 <= 5.0 ms at 1 connection" in capsys.readouterr().out
