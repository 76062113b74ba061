"""8 client processes upload overlapping batches to a real gunicorn (2 workers) on each database:
exactly the distinct records are stored, none lost, none doubled, and each counted once as stored."""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import orjson
import pytest

from benchmarks.harness.records import sample
from benchmarks.harness.server import GunicornServer, UploadReport, upload_batches
from benchmarks.harness.tokens import INGEST_TOKEN, TOKENS
from overhead_service.store import Store

pytestmark = pytest.mark.gunicorn

CLIENTS = 8
BATCHES_PER_CLIENT = 20
BATCH_SIZE = 50
DISTINCT = 2000
OWN_BATCHES = DISTINCT // CLIENTS // BATCH_SIZE  # 5: together, the clients' own slices cover everything


def _pool() -> list[dict[str, Any]]:
    return [sample(i, run=f"run-{i % 7}") for i in range(DISTINCT)]


def _plan(client: int, pool: list[dict[str, Any]]) -> list[bytes]:
    """Client ``client``'s batches: its own slice of the pool, and random batches from all of it,
    shuffled: heavy overlap between clients, and every record sent at least once."""
    rng = random.Random(client)
    own = pool[client * OWN_BATCHES * BATCH_SIZE : (client + 1) * OWN_BATCHES * BATCH_SIZE]
    batches = [own[i : i + BATCH_SIZE] for i in range(0, len(own), BATCH_SIZE)]
    batches += [rng.sample(pool, BATCH_SIZE) for _ in range(BATCHES_PER_CLIENT - OWN_BATCHES)]
    rng.shuffle(batches)
    return [orjson.dumps({"records": batch}) for batch in batches]


def _client(base_url: str, client: int, barrier: Any, results: Any) -> None:
    bodies = _plan(client, _pool())
    barrier.wait(timeout=60)  # every client ready: the uploads really overlap
    try:
        results.put((client, upload_batches(base_url, INGEST_TOKEN, bodies)))
    except Exception as exc:
        results.put((client, repr(exc)))


def test_overlapping_concurrent_uploads_store_each_record_exactly_once(database_url: str) -> None:
    pool = _pool()
    started = time.monotonic()
    with GunicornServer(database_url, tokens=TOKENS, workers=2) as server:
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(CLIENTS)
        results = context.Queue()
        processes = [
            context.Process(target=_client, args=(server.base_url, c, barrier, results))
            for c in range(CLIENTS)
        ]
        for process in processes:
            process.start()
        outcomes = dict(results.get(timeout=120) for _ in processes)
        for process in processes:
            process.join(timeout=30)
        log = server.log()
    elapsed = time.monotonic() - started

    failed = {c: outcome for c, outcome in outcomes.items() if not isinstance(outcome, UploadReport)}
    assert failed == {}, f"clients failed: {failed}\n{log}"
    reports: list[UploadReport] = list(outcomes.values())
    assert max(r.started for r in reports) < min(r.finished for r in reports)  # all 8 at once
    answers = [answer for report in reports for answer in report.answers]
    assert len(answers) == CLIENTS * BATCHES_PER_CLIENT
    stored = sum(int(a["stored"]) for a in answers)  # type: ignore[call-overload]
    duplicates = sum(int(a["duplicates"]) for a in answers)  # type: ignore[call-overload]
    assert stored + duplicates == CLIENTS * BATCHES_PER_CLIENT * BATCH_SIZE  # every record accounted for
    retries = sum(report.retries for report in reports)
    if retries == 0:
        assert stored == DISTINCT  # no answer lost: each record was reported stored exactly once
    else:  # an answer lost to a connection error makes its retry report duplicates
        assert stored <= DISTINCT

    store = Store(database_url)
    try:
        assert store.count_measurements() == DISTINCT
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            items, cursor = store.list_measurements(limit=1000, cursor=cursor)
            rows += items
            if cursor is None:
                break
    finally:
        store.dispose()
    by_key = {(r["runId"], r["sampleId"]): r for r in pool}
    assert len(rows) == DISTINCT
    assert {(r["runId"], r["sampleId"]) for r in rows} == set(by_key)  # none lost, none doubled
    for row in rows:  # and each stored as sent
        sent = by_key[(row["runId"], row["sampleId"])]
        assert {k: v for k, v in row.items() if k not in ("id", "ingestedAt", "ingestedBy")} == sent
    assert "Traceback" not in log and "database is locked" not in log
    assert elapsed < 60, f"took {elapsed:.1f} s"
