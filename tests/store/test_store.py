"""The store, on SQLite and on PostgreSQL: schema, measurements, tables, activations, state version."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from benchmarks.harness.records import record, sample
from overhead_service.errors import InputError, NothingToRollBack, TableExists
from overhead_service.store import FIT_COLUMNS, SCHEMA_VERSION, Store, content_sha256
from overhead_service.store import schema as schema_module

TABLES = {"schema_version", "state", "measurements", "calibration_tables", "activations"}


@pytest.fixture
def bare(database_url: str) -> Iterator[Store]:
    """A store on an empty database (no schema)."""
    store = Store(database_url)
    yield store
    store.dispose()


@pytest.fixture
def store(bare: Store) -> Store:
    bare.create_schema()
    return bare


def _keys(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(item["runId"], item["sampleId"]) for item in items]


def _all(store: Store, **filters: Any) -> list[dict[str, Any]]:
    items, cursor = store.list_measurements(limit=1000, **filters)
    assert cursor is None
    return items


# --- schema ------------------------------------------------------------------------------------------


def test_no_schema_until_created(bare: Store) -> None:
    assert bare.ping()
    assert bare.schema_version() is None
    assert not bare.schema_ready()


def test_create_schema_is_idempotent_and_keeps_data(bare: Store) -> None:
    bare.create_schema()
    assert set(inspect(bare.engine).get_table_names()) >= TABLES
    assert bare.schema_version() == SCHEMA_VERSION == 2
    assert bare.schema_ready()
    assert bare.state_version() == 0
    bare.add_measurements([record()])
    bare.add_table({"id": "t1"}, kind="draft", created_by=None, parent_id=None)
    bare.create_schema()
    bare.create_schema()
    assert bare.count_measurements() == 1
    assert bare.state_version() == 1
    with bare.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM state")).scalar_one() == 1


def test_concurrent_create_schema_calls_agree(bare: Store, database_url: str) -> None:
    """Several processes' init-db at once (replicas starting together): one creates, none fails."""
    errors: list[BaseException] = []
    stores = [Store(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def create(store: Store) -> None:
        try:
            barrier.wait()
            store.create_schema()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in stores:
        other.dispose()
    assert errors == []
    assert bare.schema_version() == SCHEMA_VERSION and bare.state_version() == 0


def test_upgrade_hook_runs_later_versions_in_order(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []

    def to_next(conn: Any) -> None:
        ran.append(SCHEMA_VERSION + 1)
        conn.execute(text("ALTER TABLE measurements ADD COLUMN notes TEXT"))

    def to_after(conn: Any) -> None:
        ran.append(SCHEMA_VERSION + 2)
        conn.execute(text("UPDATE measurements SET notes = 'migrated'"))

    store.add_measurements([record()])
    steps = {SCHEMA_VERSION + 2: to_after, SCHEMA_VERSION + 1: to_next}
    monkeypatch.setattr(schema_module, "MIGRATIONS", steps)
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    assert not store.schema_ready()  # the code expects a later version now
    store.create_schema()
    assert ran == [SCHEMA_VERSION + 1, SCHEMA_VERSION + 2]
    assert store.schema_version() == SCHEMA_VERSION + 2 and store.schema_ready()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT notes FROM measurements")).scalar_one() == "migrated"
    store.create_schema()
    assert ran == [SCHEMA_VERSION + 1, SCHEMA_VERSION + 2]  # nothing left to run


def test_a_failed_upgrade_changes_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def to_next(conn: Any) -> None:
        conn.execute(text("ALTER TABLE measurements ADD COLUMN notes TEXT"))
        raise RuntimeError("step 2 failed")

    monkeypatch.setattr(schema_module, "MIGRATIONS", {SCHEMA_VERSION + 1: to_next})
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="step 2 failed"):
        store.create_schema()
    assert store.schema_version() == SCHEMA_VERSION
    assert "notes" not in {column["name"] for column in inspect(store.engine).get_columns("measurements")}


def test_a_schema_newer_than_the_code_is_left_alone(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 7"))
    with pytest.raises(RuntimeError, match="version 7, newer than this code's 2"):
        store.create_schema()
    assert store.schema_version() == 7
    assert not store.schema_ready()


# --- measurements ------------------------------------------------------------------------------------


def test_ingest_stores_and_reports_duplicates(store: Store) -> None:
    batch = [sample(i) for i in range(5)]
    first = store.add_measurements(batch, ingested_by="bench-ci")
    assert (first.stored, first.duplicates, first.duplicate_keys) == (5, 0, [])

    again = store.add_measurements(batch)
    assert (again.stored, again.duplicates) == (0, 5)
    assert again.duplicate_keys == _keys(batch)

    mixed = [sample(4), sample(5), sample(5), sample(6)]  # one stored before, one repeated in the batch
    result = store.add_measurements(mixed)
    assert (result.stored, result.duplicates) == (2, 2)
    assert result.duplicate_keys == [("run-1", "sample-4"), ("run-1", "sample-5")]
    assert store.count_measurements() == 7


def test_a_duplicate_keeps_the_first_version(store: Store) -> None:
    store.add_measurements([sample(1)])
    changed = sample(1, overheadBytes=1, rawBytes=sample(1)["guestTouchedBytes"] + 1)
    assert store.add_measurements([changed]).duplicates == 1
    assert _all(store)[0]["overheadBytes"] == sample(1)["overheadBytes"]


def test_the_same_sample_id_in_another_run_is_another_record(store: Store) -> None:
    result = store.add_measurements([sample(1, run="a"), sample(1, run="b")])
    assert result.stored == 2


def test_stored_records_come_back_as_uploaded(store: Store) -> None:
    batch = [sample(i) for i in range(3)]
    batch[1]["vm"].update({"tpm": True, "deviceSet": "kubevirt", "vcpusOnline": False})
    batch[1]["host"].update({"libvirt": "10.0.0", "kubevirt": "v1.9.0"})
    before = datetime.now(UTC)
    store.add_measurements(batch, ingested_by="bench-ci")
    items = _all(store)
    assert [
        {k: v for k, v in item.items() if k not in ("id", "ingestedAt", "ingestedBy")} for item in items
    ] == batch
    assert [item["id"] for item in items] == sorted(item["id"] for item in items)
    assert len({item["id"] for item in items}) == 3
    for item in items:
        assert item["ingestedBy"] == "bench-ci"
        assert item["ingestedAt"].endswith("Z")
        assert datetime.fromisoformat(item["ingestedAt"]) >= before.replace(microsecond=0)


def test_a_batch_breaking_a_constraint_stores_nothing(store: Store) -> None:
    store.add_measurements([sample(0)])
    batch = [sample(i) for i in range(1, 50)]
    # Past validation (the store trusts its caller), the database's own checks still hold.
    batch[37]["overheadBytes"] += 1
    with pytest.raises(IntegrityError):
        store.add_measurements(batch)
    assert store.count_measurements() == 1
    batch[37] = sample(38, vm={"vcpus": 0})
    with pytest.raises(IntegrityError):
        store.add_measurements(batch)
    assert _keys(_all(store)) == [("run-1", "sample-0")]
    batch[37] = sample(38)
    assert store.add_measurements(batch).stored == 49  # the fixed batch goes in whole


def test_an_empty_batch_is_a_no_op(store: Store) -> None:
    assert store.add_measurements([]).stored == 0
    assert store.count_measurements() == 0


def test_pagination_walks_every_record_once(store: Store) -> None:
    batch = [sample(i) for i in range(25)]
    random.Random(3).shuffle(batch)
    store.add_measurements(batch)
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        items, cursor = store.list_measurements(limit=10, cursor=cursor)
        seen += items
        pages += 1
        if cursor is None:
            break
        assert len(items) == 10
    assert pages == 3 and len(seen) == 25
    assert sorted(_keys(seen)) == sorted(_keys(batch))
    ids = [item["id"] for item in seen]
    assert ids == sorted(ids) and len(set(ids)) == 25
    # An exact multiple: the last full page says there is no next one.
    items, cursor = store.list_measurements(limit=25)
    assert len(items) == 25 and cursor is None
    items, cursor = store.list_measurements(limit=24)
    assert cursor is not None
    assert store.list_measurements(limit=24, cursor=cursor) == ([seen[-1]], None)


@pytest.mark.parametrize("cursor", ["", "abc", "-1", "1.5", "9" * 19, "١٢"])
def test_a_bad_cursor_names_the_parameter(store: Store, cursor: str) -> None:
    with pytest.raises(InputError) as caught:
        store.list_measurements(cursor=cursor)
    assert caught.value.path == "cursor"


@pytest.mark.parametrize("limit", [0, 1001, -5])
def test_a_bad_limit_names_the_parameter(store: Store, limit: int) -> None:
    with pytest.raises(InputError) as caught:
        store.list_measurements(limit=limit)
    assert caught.value.path == "limit"


def test_filters(store: Store) -> None:
    batch = [
        sample(0, run="a", hypervisor="kvm", scope="pod", measuredAt="2026-11-01T00:00:00Z"),
        sample(1, run="a", hypervisor="kvm", scope="qemu", measuredAt="2026-11-02T00:00:00Z"),
        sample(2, run="b", hypervisor="mshv", scope="pod", measuredAt="2026-11-03T00:00:00+02:00",
               host={"accelerator": "mshv"}),
        sample(3, run="c", hypervisor="kvm", arch="arm64", scope="pod", measuredAt="2026-11-04T00:00:00Z"),
        sample(4, run="c", hypervisor="kvm", scope="node", measuredAt="2026-11-05T00:00:00Z"),
    ]  # fmt: skip
    store.add_measurements(batch)

    def ids(**filters: Any) -> list[str]:
        return [item["sampleId"] for item in _all(store, **filters)]

    assert ids() == [f"sample-{i}" for i in range(5)]
    assert ids(hypervisor="mshv") == ["sample-2"]
    assert ids(arch="arm64") == ["sample-3"]
    assert ids(scope="pod") == ["sample-0", "sample-2", "sample-3"]
    assert ids(run_ids=["a", "c"]) == ["sample-0", "sample-1", "sample-3", "sample-4"]
    assert ids(run_ids=[]) == []
    assert ids(hypervisor="kvm", scope="pod", arch="amd64") == ["sample-0"]
    # since inclusive, until exclusive; sample-2 was measured at 2026-11-02T22:00Z.
    assert ids(since=datetime(2026, 11, 2, 22, tzinfo=UTC)) == ["sample-2", "sample-3", "sample-4"]
    assert ids(until=datetime(2026, 11, 2, 22, tzinfo=UTC)) == ["sample-0", "sample-1"]
    assert ids(since=datetime(2026, 11, 2, tzinfo=UTC), until=datetime(2026, 11, 4, tzinfo=UTC)) == [
        "sample-1",
        "sample-2",
    ]
    assert ids(since=datetime.min.replace(tzinfo=UTC), until=datetime.max.replace(tzinfo=UTC)) == ids()


def test_select_measurements_returns_everything_matching(store: Store) -> None:
    batch = [sample(i) for i in range(3000)]  # no page limit here: everything comes back
    for start in range(0, len(batch), 1000):
        store.add_measurements(batch[start : start + 1000])
    selected = store.select_measurements(hypervisor="kvm", arch="amd64", scope="qemu")
    expected = [r for r in batch if r["scope"] == "qemu"]
    assert len(selected) == len(expected) == 1000
    assert sorted(_keys(selected)) == sorted(_keys(expected))
    assert [r["id"] for r in selected] == sorted(r["id"] for r in selected)
    assert selected[:5] == _all(store, scope="qemu")[:5]  # the same shape as list items, id included
    assert store.select_measurements(hypervisor="mshv", arch="amd64", scope="qemu") == []
    assert (
        len(store.select_measurements(hypervisor="kvm", arch="amd64", scope="pod", run_ids=["run-1"])) == 1000
    )


def test_measurement_columns_are_the_fit_inputs(store: Store) -> None:
    batch = [sample(i, scope="qemu") for i in range(40)]
    batch[3]["vm"].update({"tpm": True, "sev": True, "dedicatedCpu": True, "downwardMetrics": True})
    batch[4]["vm"]["vcpusOnline"] = False
    batch[5]["vm"].pop("execProbes")
    store.add_measurements(batch[:20])
    store.add_measurements(batch[20:] + [sample(99, scope="pod"), sample(98, scope="qemu", arch="arm64")])
    columns = store.measurement_columns(hypervisor="kvm", arch="amd64", scope="qemu")
    assert list(columns) == ["id", *FIT_COLUMNS]
    stored = store.select_measurements(hypervisor="kvm", arch="amd64", scope="qemu")
    assert columns["id"].tolist() == [r["id"] for r in stored]
    by_name: dict[str, Callable[[dict[str, Any]], Any]] = {
        "overhead_bytes": lambda r: r["overheadBytes"],
        "vcpus": lambda r: r["vm"]["vcpus"],
        "guest_memory_bytes": lambda r: r["vm"]["guestMemoryBytes"],
        "graphics": lambda r: r["vm"]["graphics"],
        "io_threads": lambda r: r["vm"]["ioThreads"],
        "vfio": lambda r: r["vm"]["vfio"],
        "tpm": lambda r: r["vm"].get("tpm", False),
        "sev": lambda r: r["vm"].get("sev", False),
        "dedicated_cpu": lambda r: r["vm"].get("dedicatedCpu", False),
        "downward_metrics": lambda r: r["vm"].get("downwardMetrics", False),
        "exec_probes": lambda r: r["vm"].get("execProbes", 0),
        "vcpus_online": lambda r: r["vm"].get("vcpusOnline", True),
    }
    for name, read in by_name.items():
        assert columns[name].tolist() == [read(r) for r in stored], name
        assert columns[name].dtype == (
            bool
            if name in ("graphics", "vfio", "tpm", "sev", "dedicated_cpu", "downward_metrics", "vcpus_online")
            else "int64"
        )
    assert columns["tpm"].sum() == 1 and not columns["vcpus_online"].all()
    empty = store.measurement_columns(hypervisor="mshv", arch="amd64", scope="qemu")
    assert all(len(column) == 0 for column in empty.values())


def test_host_facts_of_the_selection(store: Store) -> None:
    store.add_measurements(
        [
            sample(1, scope="qemu", host={"qemu": "9.0.2", "libvirt": "10.0.0"}),
            sample(2, scope="qemu", host={"qemu": "8.2.0", "node": "worker-1"}),
            sample(3, scope="pod", host={"qemu": "7.0.0"}),
        ]
    )
    assert store.host_facts(hypervisor="kvm", arch="amd64", scope="qemu") == {
        "accelerator": ["kvm"],
        "cpuModel": ["Intel Xeon Gold 6338"],
        "kernel": ["6.1.0-18-amd64"],
        "libvirt": ["10.0.0"],
        "node": ["worker-1", "worker-3"],
        "qemu": ["8.2.0", "9.0.2"],
    }
    assert store.host_facts(hypervisor="mshv", arch="amd64", scope="qemu") == {}


# --- tables --------------------------------------------------------------------------------------------


def test_tables_are_stored_once_and_never_change(store: Store) -> None:
    document = {"id": "fit-1", "schemaVersion": 1, "models": [{"hypervisor": "kvm", "a": 1.5}]}
    store.add_table(document, kind="fitted", created_by="alice", parent_id="kubevirt-v1.9.0")
    assert store.state_version() == 1
    with pytest.raises(TableExists) as caught:
        store.add_table({**document, "models": []}, kind="draft", created_by="bob", parent_id=None)
    assert caught.value.status == 409 and caught.value.table_id == "fit-1"
    assert store.state_version() == 1  # the failed insert bumped nothing
    stored = store.get_table("fit-1")
    assert stored is not None
    assert stored["document"] == document
    assert (stored["kind"], stored["createdBy"], stored["parentId"]) == ("fitted", "alice", "kubevirt-v1.9.0")
    assert stored["createdAt"].endswith("Z")
    assert len(stored["contentSha256"]) == 64
    assert store.get_table("nope") is None


def test_list_tables_in_creation_order_with_content_hashes(store: Store) -> None:
    store.add_table({"id": "b", "x": 1, "y": [1, 2]}, kind="builtin", created_by=None, parent_id=None)
    store.add_table({"y": [1, 2], "x": 1, "id": "a"}, kind="draft", created_by="c", parent_id="b")
    store.add_table({"id": "c", "x": 1, "y": [1, 2]}, kind="draft", created_by=None, parent_id=None)
    tables = store.list_tables()
    assert [t["id"] for t in tables] == ["b", "a", "c"]
    assert set(tables[0]) == {"id", "kind", "createdAt", "createdBy", "parentId", "contentSha256", "document"}
    assert tables[1]["contentSha256"] == content_sha256({"id": "a", "x": 1, "y": [1, 2]})  # key order aside
    assert len({t["contentSha256"] for t in tables}) == 3  # the id is part of the content
    assert store.state_version() == 3


@pytest.mark.parametrize(
    ("document", "kind"),
    [({"x": 1}, "draft"), ({"id": ""}, "draft"), ({"id": 5}, "draft"), ({"id": "t"}, "edited")],
)
def test_bad_tables_are_refused(store: Store, document: dict[str, Any], kind: str) -> None:
    with pytest.raises(ValueError):
        store.add_table(document, kind=kind, created_by=None, parent_id=None)
    assert store.list_tables() == [] and store.state_version() == 0


# --- activations ---------------------------------------------------------------------------------------


def _activate(
    store: Store, table: str, hypervisor: str = "kvm", arch: str = "amd64", **kw: Any
) -> dict[str, Any]:
    kw.setdefault("actor", "alice")
    kw.setdefault("reason", None)
    kw.setdefault("forced", False)
    return store.activate(hypervisor, arch, table, **kw)


def _rollback(store: Store, hypervisor: str = "kvm", arch: str = "amd64") -> dict[str, Any]:
    return store.rollback(hypervisor, arch, actor="bob", reason="drift")


def test_activation_records_who_what_and_the_previous_table(store: Store) -> None:
    first = _activate(store, "t1", reason="first fit", forced=True)
    assert {k: v for k, v in first.items() if k not in ("seq", "at")} == {
        "hypervisor": "kvm",
        "arch": "amd64",
        "tableId": "t1",
        "previousTableId": None,
        "actor": "alice",
        "reason": "first fit",
        "forced": True,
        "action": "activate",
    }
    assert first["at"].endswith("Z")
    second = _activate(store, "t2")
    assert second["previousTableId"] == "t1" and second["seq"] > first["seq"]
    assert store.active_tables() == {("kvm", "amd64"): "t2"}
    assert store.state_version() == 2


def test_rollback_walks_back_through_history_not_back_and_forth(store: Store) -> None:
    for table in ("t1", "t2", "t3"):
        _activate(store, table)
    undo = _rollback(store)
    assert (undo["action"], undo["tableId"], undo["previousTableId"]) == ("rollback", "t2", "t3")
    assert (undo["actor"], undo["reason"], undo["forced"]) == ("bob", "drift", False)
    assert store.active_tables() == {("kvm", "amd64"): "t2"}
    assert _rollback(store)["tableId"] == "t1"  # further back, not back to t3
    last = _rollback(store)
    assert (last["tableId"], last["previousTableId"]) == (None, "t1")
    assert store.active_tables() == {}  # the service's default again
    with pytest.raises(NothingToRollBack) as caught:
        _rollback(store)
    assert caught.value.status == 409
    assert store.state_version() == 6  # 3 activations + 3 rollbacks; the refused one bumped nothing


def test_activating_after_a_rollback_starts_from_the_restored_table(store: Store) -> None:
    _activate(store, "t1")
    _activate(store, "t2")
    _rollback(store)  # t1
    assert _activate(store, "t3")["previousTableId"] == "t1"
    assert _rollback(store)["tableId"] == "t1"  # t2 was undone before: it is not restored
    assert _rollback(store)["tableId"] is None


def test_reactivating_the_active_table_is_recorded_but_stacks_nothing(store: Store) -> None:
    _activate(store, "t1")
    _activate(store, "t2")
    again = _activate(store, "t2", reason="re-confirmed")
    assert (again["tableId"], again["previousTableId"]) == ("t2", "t2")
    assert _rollback(store)["tableId"] == "t1"


def test_an_older_table_can_be_activated_again(store: Store) -> None:
    for table in ("t1", "t2", "t1"):
        _activate(store, table)
    assert _rollback(store)["tableId"] == "t2"
    assert _rollback(store)["tableId"] == "t1"


def test_nothing_to_roll_back_without_activations(store: Store) -> None:
    with pytest.raises(NothingToRollBack):
        _rollback(store)
    assert store.activations() == [] and store.state_version() == 0


def test_each_hypervisor_and_arch_has_its_own_history(store: Store) -> None:
    _activate(store, "k1")
    _activate(store, "m1", hypervisor="mshv")
    _activate(store, "a1", arch="arm64")
    _activate(store, "k2")
    _activate(store, "w1", hypervisor="mshv", arch="*")
    assert store.active_tables() == {
        ("kvm", "amd64"): "k2",
        ("mshv", "amd64"): "m1",
        ("kvm", "arm64"): "a1",
        ("mshv", "*"): "w1",
    }
    assert _rollback(store, "mshv")["tableId"] is None
    assert store.active_tables() == {("kvm", "amd64"): "k2", ("kvm", "arm64"): "a1", ("mshv", "*"): "w1"}
    with pytest.raises(NothingToRollBack):
        _rollback(store, "mshv")
    assert _rollback(store)["tableId"] == "k1"


def test_activations_are_listed_newest_first_and_filtered(store: Store) -> None:
    _activate(store, "k1")
    _activate(store, "m1", hypervisor="mshv")
    _activate(store, "k2", arch="arm64")
    _rollback(store, arch="arm64")
    history = store.activations()
    assert [(h["action"], h["tableId"]) for h in history] == [
        ("rollback", None),
        ("activate", "k2"),
        ("activate", "m1"),
        ("activate", "k1"),
    ]
    assert [h["seq"] for h in history] == sorted((h["seq"] for h in history), reverse=True)
    assert [h["tableId"] for h in store.activations(hypervisor="kvm")] == [None, "k2", "k1"]
    assert [h["tableId"] for h in store.activations(hypervisor="kvm", arch="amd64")] == ["k1"]
    assert [h["tableId"] for h in store.activations(arch="arm64")] == [None, "k2"]
    assert len(store.activations(limit=2)) == 2


def test_concurrent_activations_form_one_chain(store: Store, database_url: str) -> None:
    """Replicas activating at once: each record's previous table is the one recorded just before."""
    stores = [Store(database_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def work(index: int, own: Store) -> None:
        try:
            barrier.wait()
            for step in range(8):
                if step % 3 == 2:
                    own.rollback("kvm", "amd64", actor=f"w{index}", reason=None)
                else:
                    own.activate(
                        "kvm", "amd64", f"t{index}-{step}", actor=f"w{index}", reason=None, forced=False
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in stores:
        own.dispose()
    assert errors == []
    history = list(reversed(store.activations(limit=1000)))
    assert len(history) == 32 == store.state_version()
    stack: list[str] = []
    for entry in history:  # replay: every record agrees with the one before it
        current = stack[-1] if stack else None
        if entry["action"] == "activate":
            assert entry["previousTableId"] == current
            stack.append(entry["tableId"])
        else:
            assert entry["previousTableId"] == current == stack.pop()
            assert entry["tableId"] == (stack[-1] if stack else None)
    assert store.active_tables() == ({("kvm", "amd64"): stack[-1]} if stack else {})


def test_concurrent_overlapping_ingest_stores_each_record_once(store: Store, database_url: str) -> None:
    pool = [sample(i) for i in range(400)]
    stores = [Store(database_url) for _ in range(6)]
    stored: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def work(index: int, own: Store) -> None:
        rng = random.Random(index)
        try:
            barrier.wait()
            for _ in range(10):
                stored.append(own.add_measurements(rng.sample(pool, 60)).stored)
            stored.append(own.add_measurements(pool[index::6]).stored)  # together: every record
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in stores:
        own.dispose()
    assert errors == []
    assert sum(stored) == 400 == store.count_measurements()
    assert sorted(_keys(_all(store))) == sorted(_keys(pool))
