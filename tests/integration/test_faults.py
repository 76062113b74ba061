"""kill -9 of gunicorn workers in the middle of measurement uploads, on SQLite and on PostgreSQL.

Client threads upload batches (each batch its own ``runId``, so what is stored of it can be
counted) to a real gunicorn with 2 workers. Meanwhile a worker holding a client's connection is
killed with SIGKILL while uploads are in flight, a few times, each time after gunicorn has
respawned the previous one. A client whose answer is lost (connection reset) sends the same batch
again. Then, and again after a full server restart: every acknowledged batch is stored completely
and exactly once, no batch is stored in part, a retry after a lost answer reports as duplicates
what the lost attempt had stored, and re-sending acknowledged batches stores nothing.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from sqlalchemy import func, select

from benchmarks.harness.records import sample
from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import INGEST_TOKEN, TOKENS
from overhead_service.store import Store, metadata

pytestmark = pytest.mark.gunicorn

CLIENTS = 4
BATCH_SIZE = 250
KILLS = 4  # at least; more (up to MAX_KILLS) while no client has lost an answer yet
MAX_KILLS = 8
PHASE_SECONDS = 30  # bound on the killing phase
HEADERS = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}


@dataclass
class Batch:
    """One batch as its client saw it: how many attempts, and the answer that acknowledged it."""

    run_id: str
    attempts: int = 0
    lost: int = 0  # attempts whose answer never came (connection reset or refused)
    answer: dict[str, Any] | None = None


@dataclass
class Client:
    index: int
    batches: list[Batch] = field(default_factory=list)
    in_flight: bool = False
    error: str | None = None


def _records(run_id: str) -> list[dict[str, Any]]:
    return [sample(i, run=run_id) for i in range(BATCH_SIZE)]


def _upload(session: requests.Session, base_url: str, batch: Batch, body: bytes, client: Client) -> None:
    """POST until an answer comes: a reset connection means the worker died, so send again."""
    deadline = time.monotonic() + 60
    while True:
        batch.attempts += 1
        client.in_flight = True
        try:
            response = session.post(f"{base_url}/v1/measurements", data=body, headers=HEADERS, timeout=60)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            # Reset before the answer, or in the middle of it (killed after its headers went out).
            batch.lost += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        finally:
            client.in_flight = False
        if response.status_code != 200:
            raise AssertionError(f"{batch.run_id}: {response.status_code} {response.text[:1000]}")
        batch.answer = response.json()
        return


def _client_loop(base_url: str, client: Client, stop: threading.Event) -> None:
    try:
        with requests.Session() as session:
            while not stop.is_set():
                batch = Batch(run_id=f"fault-{client.index}-{len(client.batches)}")
                client.batches.append(batch)
                _upload(session, base_url, batch, orjson.dumps({"records": _records(batch.run_id)}), client)
    except Exception as exc:  # reported by the test, not lost in a thread
        client.error = repr(exc)


def _connected_workers(server: GunicornServer) -> list[int]:
    """Workers holding an established connection to the server's port: those serving clients."""
    port = f":{server.port:04X}"
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(port) and fields[3] == "01":  # local address, state ESTABLISHED
            established.add(f"socket:[{fields[9]}]")
    busy = []
    for pid in server.worker_pids():
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
            targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in descriptors}
        except FileNotFoundError:  # exited meanwhile
            continue
        if targets & established:
            busy.append(pid)
    return busy


def _wait_for_workers(server: GunicornServer, count: int, exclude: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        workers = set(server.worker_pids())
        if len(workers) == count and not workers & exclude:
            return
        assert time.monotonic() < deadline, f"gunicorn did not respawn: {workers}\n{server.log()}"
        time.sleep(0.05)


def _kill_workers_during_uploads(
    server: GunicornServer, clients: list[Client], rng: random.Random
) -> list[int]:
    """SIGKILL a connected worker while at least two uploads are in flight; wait for its respawn
    (and a little work on the new one) before the next. Returns the killed pids."""
    killed: list[int] = []
    deadline = time.monotonic() + PHASE_SECONDS
    while time.monotonic() < deadline and len(killed) < MAX_KILLS:
        if len(killed) >= KILLS and any(b.lost for c in clients for b in c.batches):
            break
        _wait_for_workers(server, 2, set(killed))
        time.sleep(rng.uniform(0.3, 0.8))  # the respawned worker takes uploads again
        while time.monotonic() < deadline:
            busy = _connected_workers(server) if sum(c.in_flight for c in clients) >= 2 else []
            if busy:
                victim = rng.choice(busy)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                break
            time.sleep(0.005)
    _wait_for_workers(server, 2, set(killed))
    return killed


def _stored_per_run(url: str) -> dict[str, tuple[int, int]]:
    """For every run id: (rows, distinct sample ids)."""
    table = metadata.tables["measurements"]
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(table.c.run_id, func.count(), func.count(table.c.sample_id.distinct())).group_by(
                    table.c.run_id
                )
            ).all()
            samples = {
                (run_id, sample_id)
                for run_id, sample_id in conn.execute(select(table.c.run_id, table.c.sample_id)).all()
            }
    finally:
        store.dispose()
    expected_samples = {f"sample-{i}" for i in range(BATCH_SIZE)}
    for run_id, _ in samples:  # every stored record is one of the batch's own
        assert run_id.startswith("fault-")
    assert {s for _, s in samples} <= expected_samples
    return {run_id: (count, distinct) for run_id, count, distinct in rows}


def _check_stored(url: str, batches: list[Batch]) -> int:
    stored = _stored_per_run(url)
    assert set(stored) <= {b.run_id for b in batches}
    for run_id, (count, distinct) in stored.items():
        assert count == distinct == BATCH_SIZE, f"{run_id}: {count} rows, {distinct} distinct"  # no part
    for batch in batches:
        if batch.answer is not None:  # acknowledged: all there, once
            assert stored.get(batch.run_id) == (BATCH_SIZE, BATCH_SIZE), batch
    return sum(count for count, _ in stored.values())


def test_kill_9_workers_during_uploads_loses_and_doubles_nothing(database_url: str) -> None:
    rng = random.Random(20261126)
    clients = [Client(index) for index in range(CLIENTS)]
    stop = threading.Event()
    with GunicornServer(database_url, tokens=TOKENS, workers=2) as server:
        threads = [
            threading.Thread(target=_client_loop, args=(server.base_url, c, stop), daemon=True)
            for c in clients
        ]
        for thread in threads:
            thread.start()
        try:
            killed = _kill_workers_during_uploads(server, clients, rng)
            time.sleep(0.5)  # uploads on the respawned workers
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=90)
        assert server.stop() == 0, server.log()  # a clean shutdown after the kills
        log = server.log(tail=None)

    assert [c.error for c in clients] == [None] * CLIENTS, log[-5000:]
    batches = [b for c in clients for b in c.batches]
    assert all(b.answer is not None for b in batches)  # every client got every batch answered at last
    assert len(killed) >= KILLS
    for pid in killed:
        assert f"Worker (pid:{pid}) was sent SIGKILL" in log
    lost = [b for b in batches if b.lost]
    assert lost, "no upload lost its answer: the kills hit nothing in flight"

    for batch in batches:
        answer = batch.answer
        assert answer is not None
        assert answer["stored"] + answer["duplicates"] == BATCH_SIZE
        if not batch.lost:  # answered the first time: all new
            assert (answer["stored"], answer["duplicates"]) == (BATCH_SIZE, 0), batch
        else:  # the lost attempt committed all or nothing, and the retry says which
            assert answer["stored"] in (0, BATCH_SIZE), batch
            expected_keys = [] if answer["stored"] else [
                {"runId": batch.run_id, "sampleId": f"sample-{i}"} for i in range(BATCH_SIZE)
            ]  # fmt: skip
            assert answer["duplicateKeys"] == expected_keys

    total = _check_stored(database_url, batches)
    assert total == len(batches) * BATCH_SIZE

    # A full restart: the same database, fresh processes. Nothing changed, and every acknowledged
    # batch sent again is reported as duplicates, record by record, and stored nothing.
    with GunicornServer(database_url, tokens=TOKENS, workers=2) as server:
        assert _check_stored(database_url, batches) == total
        with requests.Session() as session:
            for batch in batches:
                body = orjson.dumps({"records": _records(batch.run_id)})
                response = session.post(f"{server.base_url}/v1/measurements", data=body, headers=HEADERS)
                assert response.status_code == 200, response.text[:1000]
                answer = response.json()
                assert (answer["stored"], answer["duplicates"]) == (0, BATCH_SIZE)
                assert answer["duplicateKeys"] == [
                    {"runId": batch.run_id, "sampleId": f"sample-{i}"} for i in range(BATCH_SIZE)
                ]
        restarted_log = server.log(tail=None)
    assert _check_stored(database_url, batches) == total
    for text in (log, restarted_log):
        assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]
