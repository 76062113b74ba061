"""Upgrading a database that version 1 of the schema created, with data in it, on SQLite and PostgreSQL.

``tests/data/schema/v1-<dialect>.sql`` is the DDL version 1 wrote (``metadata.create_all`` of that
code, dumped): the database a deployment of it holds.  After the upgrade the database must be the one
a fresh ``init-db`` creates (columns, types, CHECKs, indexes), hold every record it held, and take the
records version 1 refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, Table, inspect, text
from sqlalchemy.exc import IntegrityError

from benchmarks.harness.records import libvirt_record, sample
from overhead_service.store import SCHEMA_VERSION, Store
from overhead_service.store import measurements as measurements_module
from overhead_service.store import schema as schema_module
from tests.support import ROOT, empty_database

V1_DDL = ROOT / "tests" / "data" / "schema"


def _create_version_1(engine: Engine) -> None:
    statements = (V1_DDL / f"v1-{engine.dialect.name}.sql").read_text().split(";\n")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with engine.begin() as conn:
        for statement in statements:
            if statement.strip():
                conn.execute(text(statement))
        conn.execute(
            text("INSERT INTO schema_version (id, version, updated_at) VALUES (1, 1, :now)"), {"now": now}
        )
        conn.execute(text("INSERT INTO state (id, version) VALUES (1, 0)"))


def _store_version_1_records(engine: Engine, records: list[dict[str, Any]]) -> None:
    """Rows as version 1 stored them: its own columns only (reflected from the database)."""
    with engine.begin() as conn:
        table = Table("measurements", MetaData(), autoload_with=conn)
        rows = []
        for record in records:
            row = measurements_module._measurement_row(record, datetime.now(UTC), "bench-ci")
            rows.append({key: value for key, value in row.items() if key in table.c})
        conn.execute(table.insert(), rows)


def _structure(engine: Engine) -> dict[str, Any]:
    """What a schema is, table by table: columns (any order), CHECKs, indexes, unique constraints."""
    inspector = inspect(engine)
    found: dict[str, Any] = {}
    for name in sorted(inspector.get_table_names()):
        found[name] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)
            ),
            "checks": sorted(
                (c["name"], " ".join(c["sqltext"].split())) for c in inspector.get_check_constraints(name)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(name)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)
            ),
            "primary": inspector.get_pk_constraint(name)["constrained_columns"],
        }
    return found


@pytest.fixture
def fresh_url(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as ``database_url``."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    yield from empty_database(request, backend, tmp_path / "fresh.db")


@pytest.fixture
def version_1(database_url: str) -> Iterator[Store]:
    """A store on a version 1 database holding 30 records (qemu, pod and node)."""
    store = Store(database_url)
    _create_version_1(store.engine)
    _store_version_1_records(store.engine, [sample(i) for i in range(30)])
    yield store
    store.dispose()


def test_version_1_is_upgraded_to_what_init_db_creates(version_1: Store, fresh_url: str) -> None:
    before, _ = version_1.list_measurements(limit=1000)
    assert version_1.schema_version() == 1 and not version_1.schema_ready()
    version_1.add_table({"id": "t1"}, kind="draft", created_by="me", parent_id=None)

    version_1.create_schema()

    assert version_1.schema_version() == SCHEMA_VERSION == 2 and version_1.schema_ready()
    fresh = Store(fresh_url)
    try:
        fresh.create_schema()
        upgraded, created = _structure(version_1.engine), _structure(fresh.engine)
        assert list(upgraded) == list(created)
        for table, parts in created.items():
            for part, value in parts.items():
                assert upgraded[table][part] == value, (table, part)
    finally:
        fresh.dispose()
    after, _ = version_1.list_measurements(limit=1000)
    assert after == before  # every record, its id, ingestion time and uploader
    assert version_1.get_table("t1") is not None and version_1.state_version() == 1


def test_the_upgraded_database_takes_libvirt_records_and_keeps_its_checks(version_1: Store) -> None:
    version_1.create_schema()
    new = [libvirt_record(scope, 3) for scope in ("qemu", "virtqemud", "virtlogd")]
    assert version_1.add_measurements(new).stored == 3
    assert version_1.launcher_counts(hypervisor="kvm", arch="amd64", scope="qemu") == {
        "direct": 10,
        "libvirt": 1,
    }
    libvirt = version_1.measurement_columns(hypervisor="kvm", arch="amd64", scope="qemu", launcher="libvirt")
    direct = version_1.measurement_columns(hypervisor="kvm", arch="amd64", scope="qemu", launcher="direct")
    assert (len(libvirt["id"]), len(direct["id"])) == (1, 10)
    daemons = version_1.measurement_columns(hypervisor="kvm", arch="amd64", scope="virtqemud")
    assert daemons["overhead_bytes"].tolist() == [new[1]["overheadBytes"]]
    columns = ", ".join(c.name for c in schema_module.measurements.c if c.name not in ("id", "launcher"))
    for column, value in (("scope", "vm"), ("launcher", "bare")):
        with pytest.raises(IntegrityError), version_1.engine.begin() as conn:
            conn.execute(text(_copy_with(column, value, columns)))


def _copy_with(column: str, value: str, columns: str) -> str:
    """An INSERT copying one stored row under a new key with ``column`` set to ``value``."""
    chosen = [name for name in columns.split(", ") if name not in (column, "sample_id")]
    return (
        f"INSERT INTO measurements ({', '.join(chosen)}, sample_id, {column}) "
        f"SELECT {', '.join(chosen)}, 'copy', '{value}' FROM measurements WHERE sample_id = 'sample-0'"
    )


def test_a_failed_upgrade_leaves_version_1_as_it_was(
    version_1: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _structure(version_1.engine)
    records, _ = version_1.list_measurements(limit=1000)

    def step_then_fail(conn: Any) -> None:
        schema_module._upgrade_to_2(conn)
        raise RuntimeError("interrupted after the step")

    monkeypatch.setattr(schema_module, "MIGRATIONS", {2: step_then_fail})
    with pytest.raises(RuntimeError, match="interrupted"):
        version_1.create_schema()
    assert version_1.schema_version() == 1
    assert _structure(version_1.engine) == before
    assert version_1.list_measurements(limit=1000)[0] == records
