"""The benchmarks whose figures the README quotes run end to end, briefly: the overhead benchmark
(engine, app, gunicorn, batch), ingestion into SQLite and PostgreSQL, and the fit benchmark.
What they report is checked for shape and sense; timing is not judged here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_fit, bench_ingest, bench_overhead


def test_the_fit_benchmark_reports_each_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fit.json"
    assert bench_fit.main(["--sizes", "1000", "3000", "--repeat", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [row["samples"] for row in results] == [1000, 3000]
    for row in results:
        assert row["fitArraysSeconds"] > 0 and row["samplesToColumnsSeconds"] > 0
        assert row["fitSamplesSeconds"] == pytest.approx(
            row["fitArraysSeconds"] + row["samplesToColumnsSeconds"], abs=2e-4
        )
        assert 0.98 <= row["heldOutCoverage"] <= 1 and row["marginBytes"] > 0
    printed = capsys.readouterr().out
    assert "    1,000 |" in printed and "    3,000 |" in printed


@pytest.mark.gunicorn
@pytest.mark.postgresql
def test_the_ingest_benchmark_stores_every_scenario(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # fewer records than one round of the largest batches
        bench_ingest.main(["--records", "1000"])
    out = tmp_path / "ingest.json"
    bench_ingest.main(["--records", "20000", "--workers", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {row["backend"] for row in rows} == {"sqlite", "postgresql"}
    for backend in ("sqlite", "postgresql"):
        kinds = [row["kind"] for row in rows if row["backend"] == backend]
        assert kinds.count("re-sent") == 1 and kinds.count("new") == 4
    assert all(row["records"] == 20000 and row["rate"] > 0 for row in rows)


@pytest.mark.gunicorn
def test_the_overhead_benchmark_reports_every_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "overhead.json"
    arguments = ["--seconds", "0.3", "--levels", "1,2", "--rounds", "1", "--workers", "1", "--json", str(out)]
    assert bench_overhead.main(arguments) == 0
    report = json.loads(out.read_text())
    assert report["engine"]["compute_warm_us"] < report["engine"]["compute_cold_us"]
    levels = report["http"]["levels"]
    assert [row["connections"] for row in levels] == [1, 2]
    assert all(row["ratio"] > 0 for row in levels)
    printed = capsys.readouterr().out
    for section in ("(a) engine in-process", "(a') the app called in-process", "(b) HTTP under gunicorn",
                    "(c) batch of 10,000 VMIs", "target throughput ratio >= 0.8"):  # fmt: skip
        assert section in printed
