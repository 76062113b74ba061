"""Ingestion rate of ``POST /v1/measurements`` over HTTP into gunicorn, on SQLite and on PostgreSQL.

For each database: a fresh database (PostgreSQL: a throwaway local cluster, as the tests start
one), gunicorn with the project's settings (2 workers by default, loopback), and client processes
that upload distinct records in batches of 500 and of 5000 (new records: every one is stored), then
one round re-sending batches already stored (every record a duplicate: what a retry costs). The
bodies are encoded before the clock starts; the rate is records over the wall time from the first
request to the last answer, clients all started together. Bounded: about a minute.

    python -m benchmarks.bench_ingest [--records 40000] [--workers 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy

from benchmarks.harness.pg import PostgresCluster
from benchmarks.harness.records import sample
from benchmarks.harness.server import GunicornServer, UploadReport, upload_batches
from benchmarks.harness.tokens import INGEST_TOKEN, TOKENS

SCENARIOS = [(500, 1), (500, 4), (5000, 1), (5000, 4)]  # (batch size, clients)


def _bodies(run: str, first: int, count: int, batch: int) -> list[bytes]:
    records = [sample(i, run=run) for i in range(first, first + count)]
    return [orjson.dumps({"records": records[i : i + batch]}) for i in range(0, count, batch)]


def _client(base_url: str, bodies: list[bytes], barrier: Any, results: Any) -> None:
    barrier.wait(timeout=120)
    try:
        results.put(upload_batches(base_url, INGEST_TOKEN, bodies))
    except Exception as exc:
        results.put(repr(exc))


def _round(base_url: str, plans: list[list[bytes]]) -> tuple[list[UploadReport], float]:
    """Upload each client's bodies from its own process, all starting together."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(plans))
    results = context.Queue()
    processes = [context.Process(target=_client, args=(base_url, plan, barrier, results)) for plan in plans]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    failures = [outcome for outcome in outcomes if not isinstance(outcome, UploadReport)]
    if failures:
        raise RuntimeError(f"uploads failed: {failures}")
    reports = [outcome for outcome in outcomes if isinstance(outcome, UploadReport)]
    return reports, max(r.finished for r in reports) - min(r.started for r in reports)


def bench_backend(name: str, url: str, records: int, workers: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with GunicornServer(url, tokens=TOKENS, workers=workers) as server:
        for index, (batch, clients) in enumerate(SCENARIOS):
            per_client = records // clients // batch * batch
            plans = [_bodies(f"bench-{index}-{c}", 0, per_client, batch) for c in range(clients)]
            reports, seconds = _round(server.base_url, plans)
            stored = sum(int(a["stored"]) for r in reports for a in r.answers)  # type: ignore[call-overload]
            if stored != per_client * clients:
                raise RuntimeError(f"{name}: stored {stored} of {per_client * clients} new records")
            latencies = [lat for r in reports for lat in r.latencies]
            rows.append(
                {
                    "backend": name,
                    "batch": batch,
                    "clients": clients,
                    "kind": "new",
                    "records": stored,
                    "seconds": seconds,
                    "rate": stored / seconds,
                    "p50_ms": statistics.median(latencies) * 1000,
                }
            )
            if (batch, clients) == (500, 4):  # the same bodies again: all duplicates
                reports, seconds = _round(server.base_url, plans)
                duplicates = sum(int(a["duplicates"]) for r in reports for a in r.answers)  # type: ignore[call-overload]
                if duplicates != per_client * clients or any(a["stored"] for r in reports for a in r.answers):
                    raise RuntimeError(f"{name}: a re-sent batch stored something")
                latencies = [lat for r in reports for lat in r.latencies]
                rows.append(
                    {
                        "backend": name,
                        "batch": batch,
                        "clients": clients,
                        "kind": "re-sent",
                        "records": duplicates,
                        "seconds": seconds,
                        "rate": duplicates / seconds,
                        "p50_ms": statistics.median(latencies) * 1000,
                    }
                )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000, help="records per scenario (default 40000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    smallest = max(batch * clients for batch, clients in SCENARIOS)
    if args.records < smallest:
        parser.error(f"--records must be at least {smallest}: every client sends whole batches")

    print(
        f"ingestion over HTTP: gunicorn {args.workers} workers (the project's worker class, 4 threads), "
        "loopback, "
        f"{os.cpu_count()} CPUs shared with the clients; Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}; {args.records} records per scenario",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        rows += bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.records, args.workers)
    with PostgresCluster() as cluster:
        rows += bench_backend("postgresql", cluster.create_database("bench"), args.records, args.workers)

    print(f"\n{'database':<11}| {'batch':>5} | {'clients':>7} | {'records':<8}| {'count':>6} | "
          f"{'seconds':>7} | {'records/s':>9} | {'p50 ms/request':>14}")  # fmt: skip
    for row in rows:
        print(
            f"{row['backend']:<11}| {row['batch']:>5} | {row['clients']:>7} | {row['kind']:<8}| "
            f"{row['records']:>6} | {row['seconds']:>7.2f} | {row['rate']:>9.0f} | {row['p50_ms']:>14.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
