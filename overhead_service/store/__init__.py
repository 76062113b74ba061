"""The database: measurements, calibration tables, activations, and the state version replicas poll.

SQLAlchemy Core, the same code for SQLite (the embedded default) and PostgreSQL
(``postgresql+psycopg://…``, for several replicas).

SQLite gets the settings that make several gunicorn workers safe on one file: a busy timeout, WAL,
and transactions that SQLAlchemy rather than :mod:`sqlite3` begins (pysqlite otherwise starts
them lazily before the first write, so a read-then-write loses updates). Every write transaction
begins with ``BEGIN IMMEDIATE``: it takes the write lock up front, so it waits (busy timeout)
instead of failing when it later upgrades a read lock. Within one process, SQLite writers also
queue on a lock, so the threads of a worker do not spin on the database lock against each other.

PostgreSQL runs at READ COMMITTED. Measurements are inserted with ``ON CONFLICT DO NOTHING`` in
one key order (no deadlock between overlapping batches); every transaction that changes tables or
activations first bumps the one ``state`` row, whose row lock serialises them across replicas.

The schema is created by :meth:`Store.create_schema` — ``overhead-service init-db``, gunicorn's
``on_starting`` hook in the master, or a test fixture — never by each worker at import.

Timestamps are stored in UTC and returned as RFC 3339 strings ending in ``Z``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    column,
    create_engine,
    event,
    func,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from overhead_service import jsonio
from overhead_service.calibration.records import parse_timestamp
from overhead_service.errors import InputError, NothingToRollBack, TableExists

__all__ = [
    "SCHEMA_VERSION",
    "FIT_COLUMNS",
    "IngestResult",
    "Store",
    "content_sha256",
    "get_store",
    "init_app",
    "metadata",
]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

# Execution option marking a connection whose transaction writes (SQLite: BEGIN IMMEDIATE).
_WRITE: Final = "overhead_service_write"
# Any constant: the PostgreSQL advisory lock that serialises concurrent create_schema() calls.
_SCHEMA_LOCK_KEY: Final = 0x6F766864
_MAX_PAGE: Final = 1000
_STREAM_ROWS: Final = 5000

TABLE_KINDS: Final = ("builtin", "draft", "fitted")

# What Store.measurement_columns returns besides ids: the names of calibration.SampleArrays' fields.
FIT_COLUMNS: Final = (
    "overhead_bytes",
    "vcpus",
    "guest_memory_bytes",
    "graphics",
    "io_threads",
    "vfio",
    "tpm",
    "sev",
    "dedicated_cpu",
    "downward_metrics",
    "exec_probes",
    "vcpus_online",
)
_BOOLEAN_FIT_COLUMNS: Final = frozenset(
    {"graphics", "vfio", "tpm", "sev", "dedicated_cpu", "downward_metrics", "vcpus_online"}
)
# Host facts as the record names them -> their columns.
_HOST_FACTS: Final = {
    "accelerator": "accelerator",
    "cpuModel": "host_cpu_model",
    "kernel": "host_kernel",
    "kubevirt": "host_kubevirt",
    "libvirt": "host_libvirt",
    "node": "host_node",
    "qemu": "host_qemu",
}


# --- schema ----------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only takes aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid), which is 64-bit anyway.
_Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)

state = Table(
    "state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)

measurements = Table(
    "measurements",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", String(200), nullable=False),
    Column("sample_id", String(200), nullable=False),
    Column("hypervisor", String(16), nullable=False),
    Column("arch", String(64), nullable=False),
    Column("scope", String(8), nullable=False),
    Column("overhead_bytes", BigInteger, nullable=False),
    Column("raw_bytes", BigInteger, nullable=False),
    Column("guest_touched_bytes", BigInteger, nullable=False),
    # The VM's shape: what a fit regresses on (absent optional fields are NULL).
    Column("vcpus", Integer, nullable=False),
    Column("guest_memory_bytes", BigInteger, nullable=False),
    Column("graphics", Boolean, nullable=False),
    Column("vfio", Boolean, nullable=False),
    Column("io_threads", Integer, nullable=False),
    Column("tpm", Boolean),
    Column("sev", Boolean),
    Column("dedicated_cpu", Boolean),
    Column("downward_metrics", Boolean),
    Column("exec_probes", Integer),
    Column("device_set", String(16)),
    Column("touched_share", Float),
    Column("vcpus_online", Boolean),
    # The host: what a table's fit stands on, and what drift is looked for across (QEMU upgrades).
    Column("accelerator", String(8), nullable=False),
    Column("host_kernel", String(200), nullable=False),
    Column("host_qemu", String(200), nullable=False),
    Column("host_libvirt", String(200)),
    Column("host_kubevirt", String(200)),
    Column("host_node", String(200), nullable=False),
    Column("host_cpu_model", String(200), nullable=False),
    Column("record", JSON, nullable=False),  # the whole validated record, as uploaded
    Column("measured_at", UTCDateTime, nullable=False),
    Column("ingested_at", UTCDateTime, nullable=False),
    Column("ingested_by", String(200)),
    UniqueConstraint("run_id", "sample_id"),
    CheckConstraint("hypervisor IN ('kvm', 'mshv')", name="hypervisor"),
    CheckConstraint("scope IN ('qemu', 'pod', 'node')", name="scope"),
    CheckConstraint("accelerator IN ('kvm', 'tcg', 'mshv')", name="accelerator"),
    CheckConstraint("raw_bytes >= 0 AND guest_touched_bytes >= 0", name="raw_not_negative"),
    CheckConstraint("raw_bytes - guest_touched_bytes = overhead_bytes", name="overhead_consistent"),
    CheckConstraint("vcpus BETWEEN 1 AND 1024", name="vcpus"),
    CheckConstraint("io_threads BETWEEN 0 AND 256", name="io_threads"),
    Index(None, "hypervisor", "arch", "scope", "measured_at"),
)

calibration_tables = Table(
    "calibration_tables",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("document", JSON, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(200)),
    Column("parent_id", String(200)),
    Column("kind", String(16), nullable=False),
    CheckConstraint("kind IN ('builtin', 'draft', 'fitted')", name="kind"),
)

activations = Table(
    "activations",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=True),
    Column("hypervisor", String(16), nullable=False),
    Column("arch", String(64), nullable=False),
    # NULL only for a rollback past the first activation: back to the service's default table.
    Column("table_id", String(200)),
    Column("previous_table_id", String(200)),
    Column("actor", String(200), nullable=False),
    Column("reason", Text),
    Column("forced", Boolean, nullable=False),
    Column("action", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    CheckConstraint("action IN ('activate', 'rollback')", name="action"),
    CheckConstraint("action = 'rollback' OR table_id IS NOT NULL", name="activate_names_table"),
    Index(None, "hypervisor", "arch", "seq"),
    sqlite_autoincrement=True,  # seq never reused
)


# Upgrade steps: version N -> the function that brings a version N-1 database to N, run in order
# inside create_schema()'s transaction. A new database gets the latest schema from ``metadata`` at
# once. Example for a version 2: ``_MIGRATIONS = {2: _add_measurements_notes}`` with a function
# running ``conn.execute(text("ALTER TABLE measurements ADD COLUMN notes TEXT"))``.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

SCHEMA_VERSION: Final = max([1, *_MIGRATIONS])


# --- results -----------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    """What :meth:`Store.add_measurements` did with a batch.

    ``duplicates`` counts the records not stored because their ``(runId, sampleId)`` was already
    stored, or came earlier in the same batch; ``duplicate_keys`` lists them in batch order.
    """

    stored: int
    duplicates: int
    duplicate_keys: list[tuple[str, str]] = field(default_factory=list)


# --- the store -----------------------------------------------------------------------------------


class Store:
    """The database of one process. Connections open lazily: creating a Store never does I/O.

    Every method opens its own connection and transaction; writes are atomic.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.engine: Engine = create_engine(
            parsed,
            pool_pre_ping=not self.is_sqlite,
            json_serializer=jsonio.dumps,
            json_deserializer=jsonio.loads,  # orjson, falling back to the exact decoder
        )
        self._insert: Callable[[Table], Any] = sqlite.insert if self.is_sqlite else postgresql.insert
        # SQLite has one writer at a time anyway: this process's threads queue here, not on the file.
        self._write_lock: AbstractContextManager[Any] = threading.Lock() if self.is_sqlite else nullcontext()
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)

    # -- housekeeping --------------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether a connection can be opened and answers ``SELECT 1``."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("database ping failed: %s", exc)
            return False
        return True

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def create_schema(self) -> None:
        """Create the tables, or upgrade them to :data:`SCHEMA_VERSION`; idempotent and race-safe.

        A new database gets the latest schema and version; an older one runs each step of
        ``_MIGRATIONS`` above its version, in order, in one transaction. A database newer than this
        code raises :class:`RuntimeError` rather than being touched.
        """
        with self._write() as conn:
            if not self.is_sqlite:  # DDL is transactional there too; one creator at a time
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            now = datetime.now(UTC)
            if not inspect(conn).has_table(schema_version.name):
                metadata.create_all(conn)
                conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=now))
                conn.execute(state.insert().values(id=1, version=0))
                log.info("database schema created at version %d", SCHEMA_VERSION)
                return
            current = conn.execute(select(schema_version.c.version)).scalar_one()
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database schema is version {current}, newer than this code's {SCHEMA_VERSION}"
                )
            for version in sorted(v for v in _MIGRATIONS if v > current):
                _MIGRATIONS[version](conn)
                conn.execute(schema_version.update().values(version=version, updated_at=now))
                log.info("database schema upgraded to version %d", version)

    def schema_version(self) -> int | None:
        """The recorded schema version, or None when there is no schema (or no database)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(schema_version.c.version)).scalar_one_or_none()
        except SQLAlchemyError:
            return None

    def schema_ready(self) -> bool:
        """Whether the schema exists at exactly the version this code uses."""
        return self.schema_version() == SCHEMA_VERSION

    def state_version(self) -> int:
        """The counter bumped by every table insert, activation and rollback (cheap to poll)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(state.c.version).where(state.c.id == 1)).scalar_one())

    def _bump(self, conn: Connection) -> int:
        """Increment the state version; on PostgreSQL its row lock serialises state changes."""
        return int(
            conn.execute(
                state.update()
                .where(state.c.id == 1)
                .values(version=state.c.version + 1)
                .returning(state.c.version)
            ).scalar_one()
        )

    # -- measurements --------------------------------------------------------------------------------

    def add_measurements(
        self, records: Sequence[dict[str, Any]], *, ingested_by: str | None = None
    ) -> IngestResult:
        """Store validated records (see :func:`overhead_service.calibration.records.validate_batch`).

        Atomic: every new record is stored, or none (any database error rolls the batch back and
        propagates, e.g. :class:`sqlalchemy.exc.IntegrityError` for a record breaking a
        constraint). A record whose ``(runId, sampleId)`` is already stored — by an earlier batch,
        a concurrent one, or earlier in this batch — is not stored again and is reported as a
        duplicate, whatever its content. ``ingested_by`` names the uploader (the token's name).
        """
        now = datetime.now(UTC)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for record in records:
            key = (record["runId"], record["sampleId"])
            if key not in rows:
                rows[key] = _measurement_row(record, now, ingested_by)
        inserted: set[tuple[str, str]] = set()
        if rows:
            # One key order for every writer: overlapping batches then wait for each other on
            # PostgreSQL's unique index instead of deadlocking.
            ordered = [rows[key] for key in sorted(rows)]
            with self._write() as conn:
                if self.is_sqlite:
                    result = conn.execute(_INSERT_MEASUREMENTS_SQLITE, ordered)
                else:
                    result = conn.execute(_INSERT_MEASUREMENTS_POSTGRESQL, {"rows": _as_json_rows(ordered)})
                inserted.update((run, sample) for run, sample in result)
        duplicate_keys: list[tuple[str, str]] = []
        first = set(inserted)
        for record in records:
            key = (record["runId"], record["sampleId"])
            if key in first:
                first.discard(key)  # its first occurrence was stored; any later one is a duplicate
            else:
                duplicate_keys.append(key)
        return IngestResult(
            stored=len(inserted), duplicates=len(duplicate_keys), duplicate_keys=duplicate_keys
        )

    def list_measurements(
        self,
        *,
        hypervisor: str | None = None,
        arch: str | None = None,
        scope: str | None = None,
        run_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of stored records in id order, and the cursor of the next page (or None).

        Filters combine with AND; ``since`` is inclusive and ``until`` exclusive (``measuredAt``).
        ``limit`` is 1..1000. ``cursor`` is the opaque string a previous call returned; a bad one
        raises :class:`~overhead_service.errors.InputError` at path ``cursor`` (``limit`` likewise).
        Keyset pagination by id: pages stay consistent while records arrive, and a record committed
        after its page was read may appear on a later page only if its id is higher.
        """
        if type(limit) is not int or not 1 <= limit <= _MAX_PAGE:
            raise InputError("limit", f"must be an integer between 1 and {_MAX_PAGE}")
        query = _filtered(
            hypervisor=hypervisor, arch=arch, scope=scope, run_ids=run_ids, since=since, until=until
        )
        if cursor is not None:
            query = query.where(measurements.c.id > _decode_cursor(cursor))
        query = query.order_by(measurements.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [_stored_record(row) for row in rows[:limit]]
        next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
        return items, next_cursor

    def iter_measurements(
        self,
        *,
        hypervisor: str,
        arch: str,
        scope: str,
        run_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching stored record, streamed in id order (server-side cursor on PostgreSQL).

        Ids grow with each batch; within a batch they follow the ``(runId, sampleId)`` order.
        """
        query = _filtered(
            hypervisor=hypervisor, arch=arch, scope=scope, run_ids=run_ids, since=since, until=until
        ).order_by(measurements.c.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=_STREAM_ROWS).execute(query)
            for row in result:
                yield _stored_record(row)

    def select_measurements(
        self,
        *,
        hypervisor: str,
        arch: str,
        scope: str,
        run_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Every matching stored record (same shape as :meth:`list_measurements` items), for a fit."""
        return list(
            self.iter_measurements(
                hypervisor=hypervisor, arch=arch, scope=scope, run_ids=run_ids, since=since, until=until
            )
        )

    def measurement_columns(
        self,
        *,
        hypervisor: str,
        arch: str,
        scope: str,
        run_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """The fit inputs of every matching record as numpy columns, in id order: the fast way to
        load 10^6 samples (no JSON decoding, no dict per record).

        Keys: ``id`` and :data:`FIT_COLUMNS` (``overhead_bytes``, ``vcpus``, ``guest_memory_bytes``,
        ``io_threads``, ``exec_probes`` as int64; ``graphics``, ``vfio``, ``tpm``, ``sev``,
        ``dedicated_cpu``, ``downward_metrics``, ``vcpus_online`` as bool) — the field names of
        :class:`overhead_service.calibration.SampleArrays`. An absent optional field reads as the
        record format's default: false, 0, and ``vcpus_online`` true.
        """
        m = measurements.c
        defaults = {"exec_probes": 0, "vcpus_online": True}
        selected = [m.id] + [
            func.coalesce(m[name], defaults.get(name, False)) if m[name].nullable else m[name]
            for name in FIT_COLUMNS
        ]
        query = _where(select(*selected), hypervisor, arch, scope, run_ids, since, until).order_by(m.id)
        with self.engine.connect() as conn:
            # Raw DBAPI rows (ints, and bools or 0/1): SQLAlchemy's per-row processing would cost
            # more than everything else here.
            rows = conn.execute(query).cursor.fetchall()
        table = np.array(rows, dtype=np.int64).reshape(len(rows), len(selected))
        columns: dict[str, npt.NDArray[Any]] = {"id": table[:, 0].copy()}
        for index, name in enumerate(FIT_COLUMNS, start=1):
            column = table[:, index]
            columns[name] = column.astype(bool) if name in _BOOLEAN_FIT_COLUMNS else column.copy()
        return columns

    def host_facts(
        self,
        *,
        hypervisor: str,
        arch: str,
        scope: str,
        run_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, list[str]]:
        """Every distinct value of each host fact among the matching records, sorted:
        ``{"accelerator", "cpuModel", "kernel", "kubevirt", "libvirt", "node", "qemu"}`` (a fact no
        record gave is absent)."""
        names = list(_HOST_FACTS)
        combinations = _where(
            select(*(measurements.c[_HOST_FACTS[name]] for name in names)).distinct(),
            hypervisor,
            arch,
            scope,
            run_ids,
            since,
            until,
        )
        values: dict[str, set[str]] = {name: set() for name in names}
        with self.engine.connect() as conn:  # one pass: few distinct combinations, however many rows
            for row in conn.execute(combinations):
                for name, value in zip(names, row, strict=True):
                    if value is not None:
                        values[name].add(value)
        return {name: sorted(found) for name, found in values.items() if found}

    def count_measurements(self) -> int:
        """How many records are stored."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(measurements)).scalar_one())

    # -- calibration tables ----------------------------------------------------------------------------

    def add_table(
        self, document: dict[str, Any], *, kind: str, created_by: str | None, parent_id: str | None
    ) -> None:
        """Store a table under ``document["id"]``; raises :class:`TableExists` if that id is taken.

        Stored tables never change. ``kind`` is ``builtin``, ``draft`` or ``fitted``. The document is
        stored as JSON (Decimals become numbers) with the SHA-256 of its canonical form (sorted keys,
        no spaces, ASCII).
        """
        table_id = document.get("id")
        if type(table_id) is not str or not table_id:
            raise ValueError("a table document needs a non-empty string id")
        if kind not in TABLE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(TABLE_KINDS)}, got {kind!r}")
        normalized = jsonio.loads(jsonio.dumps_bytes(document))
        statement = (
            self._insert(calibration_tables)
            .values(
                id=table_id,
                document=normalized,
                content_sha256=content_sha256(normalized),
                created_at=datetime.now(UTC),
                created_by=created_by,
                parent_id=parent_id,
                kind=kind,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(calibration_tables.c.id)
        )
        with self._write() as conn:
            self._bump(conn)
            if conn.execute(statement).first() is None:
                raise TableExists(table_id)  # rolls back the bump too

    def get_table(self, table_id: str) -> dict[str, Any] | None:
        """One stored table (see :meth:`list_tables`), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(calibration_tables).where(calibration_tables.c.id == table_id)).first()
        return None if row is None else _table(row)

    def list_tables(self) -> list[dict[str, Any]]:
        """Every stored table, oldest first: ``{"id", "kind", "createdAt", "createdBy", "parentId",
        "contentSha256", "document"}``."""
        query = select(calibration_tables).order_by(calibration_tables.c.created_at, calibration_tables.c.id)
        with self.engine.connect() as conn:
            return [_table(row) for row in conn.execute(query)]

    # -- activations -----------------------------------------------------------------------------------

    def activate(
        self, hypervisor: str, arch: str, table_id: str, *, actor: str, reason: str | None, forced: bool
    ) -> dict[str, Any]:
        """Make ``table_id`` the active table for ``hypervisor`` and ``arch``; returns the record.

        The store does not check that the table exists or meets any bar (built-in tables may live
        only in code): the caller does. See :meth:`rollback` for how the history is read.
        """
        with self._write() as conn:
            version = self._bump(conn)
            previous = _current(conn, hypervisor, arch)
            return self._record(
                conn, hypervisor, arch, table_id, previous, actor, reason, forced, "activate", version
            )

    def rollback(self, hypervisor: str, arch: str, *, actor: str, reason: str | None) -> dict[str, Any]:
        """Undo the latest activation still in effect for ``hypervisor`` and ``arch``.

        The history of a hypervisor and arch is read as a stack: each activation pushes its table
        (activating the table already active pushes nothing, but is still recorded), each rollback
        pops one. So a rollback restores the table that was active before the current one was
        activated, and a second rollback goes one further back — never back and forth between two
        tables. Rolling back the first activation leaves no table active (the record's ``tableId``
        is None): requests use the service's default again. Raises :class:`NothingToRollBack` when
        the stack is empty (nothing activated, or everything rolled back already).
        """
        with self._write() as conn:
            version = self._bump(conn)
            stack = _stack(conn, hypervisor, arch)
            if not stack:
                raise NothingToRollBack(hypervisor, arch)
            undone = stack.pop()
            restored = stack[-1] if stack else None
            return self._record(
                conn, hypervisor, arch, restored, undone, actor, reason, False, "rollback", version
            )

    def _record(
        self,
        conn: Connection,
        hypervisor: str,
        arch: str,
        table_id: str | None,
        previous: str | None,
        actor: str,
        reason: str | None,
        forced: bool,
        action: str,
        version: int,
    ) -> dict[str, Any]:
        values = {
            "hypervisor": hypervisor,
            "arch": arch,
            "table_id": table_id,
            "previous_table_id": previous,
            "actor": actor,
            "reason": reason,
            "forced": forced,
            "action": action,
            "at": datetime.now(UTC),
        }
        row = conn.execute(activations.insert().values(**values).returning(*activations.c)).one()
        return _activation(row)

    def active_tables(self) -> dict[tuple[str, str], str]:
        """The active table id of each (hypervisor, arch) that has one (absent: the default)."""
        latest = (
            select(func.max(activations.c.seq))
            .group_by(activations.c.hypervisor, activations.c.arch)
            .scalar_subquery()
        )
        query = select(activations.c.hypervisor, activations.c.arch, activations.c.table_id).where(
            activations.c.seq.in_(latest), activations.c.table_id.is_not(None)
        )
        with self.engine.connect() as conn:
            return {(row.hypervisor, row.arch): row.table_id for row in conn.execute(query)}

    def activations(
        self, hypervisor: str | None = None, arch: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Activation and rollback records, newest first: ``{"seq", "hypervisor", "arch", "tableId",
        "previousTableId", "actor", "reason", "forced", "action", "at"}``."""
        query = select(activations).order_by(activations.c.seq.desc()).limit(limit)
        if hypervisor is not None:
            query = query.where(activations.c.hypervisor == hypervisor)
        if arch is not None:
            query = query.where(activations.c.arch == arch)
        with self.engine.connect() as conn:
            return [_activation(row) for row in conn.execute(query)]


# --- helpers ---------------------------------------------------------------------------------------


# Ingestion statements: INSERT .. ON CONFLICT (run_id, sample_id) DO NOTHING RETURNING the keys
# stored, rows in the order given. SQLite gets a multi-row VALUES (SQLAlchemy's insertmanyvalues).
# PostgreSQL gets the whole batch as one JSON parameter, unpacked by json_to_recordset on the
# server: the same statement through insertmanyvalues spends ~300 µs per row in psycopg turning
# 27 named placeholders per row into $n ones (measured: 5,000 rows in 1.3 s instead of 0.2 s),
# holding the worker's GIL away from the hot path.
_MEASUREMENT_COLUMNS: Final = [column.name for column in measurements.c if column.name != "id"]
_KEYS_STORED: Final = (measurements.c.run_id, measurements.c.sample_id)

_INSERT_MEASUREMENTS_SQLITE: Final = (
    sqlite.insert(measurements)
    .on_conflict_do_nothing(index_elements=["run_id", "sample_id"])
    .returning(*_KEYS_STORED)
)


def _postgresql_bulk_insert() -> Any:
    rows = (
        func.json_to_recordset(bindparam("rows", type_=JSON))
        .table_valued(*(column(name, measurements.c[name].type) for name in _MEASUREMENT_COLUMNS))
        .render_derived(name="r", with_types=True)
    )
    # Sorted by the database itself: every writer takes the unique index's locks in one order.
    source = select(*(rows.c[name] for name in _MEASUREMENT_COLUMNS)).order_by(
        rows.c.run_id, rows.c.sample_id
    )
    return (
        postgresql.insert(measurements)
        .from_select(_MEASUREMENT_COLUMNS, source)
        .on_conflict_do_nothing(index_elements=["run_id", "sample_id"])
        .returning(*_KEYS_STORED)
    )


_INSERT_MEASUREMENTS_POSTGRESQL: Final = _postgresql_bulk_insert()


def _as_json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for json_to_recordset: timestamps as RFC 3339 text (the rest is JSON already)."""
    return [
        {**row, "measured_at": row["measured_at"].isoformat(), "ingested_at": row["ingested_at"].isoformat()}
        for row in rows
    ]


def content_sha256(document: Any) -> str:
    """SHA-256 of ``document``'s canonical JSON: sorted keys, no spaces, ASCII."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _measurement_row(record: dict[str, Any], now: datetime, ingested_by: str | None) -> dict[str, Any]:
    vm = record["vm"]
    host = record["host"]
    return {
        "run_id": record["runId"],
        "sample_id": record["sampleId"],
        "hypervisor": record["hypervisor"],
        "arch": record["arch"],
        "scope": record["scope"],
        "overhead_bytes": record["overheadBytes"],
        "raw_bytes": record["rawBytes"],
        "guest_touched_bytes": record["guestTouchedBytes"],
        "vcpus": vm["vcpus"],
        "guest_memory_bytes": vm["guestMemoryBytes"],
        "graphics": vm["graphics"],
        "vfio": vm["vfio"],
        "io_threads": vm["ioThreads"],
        "tpm": vm.get("tpm"),
        "sev": vm.get("sev"),
        "dedicated_cpu": vm.get("dedicatedCpu"),
        "downward_metrics": vm.get("downwardMetrics"),
        "exec_probes": vm.get("execProbes"),
        "device_set": vm.get("deviceSet"),
        "touched_share": vm.get("touchedShare"),
        "vcpus_online": vm.get("vcpusOnline"),
        "accelerator": host["accelerator"],
        "host_kernel": host["kernel"],
        "host_qemu": host["qemu"],
        "host_libvirt": host.get("libvirt"),
        "host_kubevirt": host.get("kubevirt"),
        "host_node": host["node"],
        "host_cpu_model": host["cpuModel"],
        "record": record,
        "measured_at": parse_timestamp(record["measuredAt"], "measuredAt"),
        "ingested_at": now,
        "ingested_by": ingested_by,
    }


def _filtered(
    *,
    hypervisor: str | None,
    arch: str | None,
    scope: str | None,
    run_ids: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    m = measurements.c
    return _where(
        select(m.id, m.record, m.ingested_at, m.ingested_by), hypervisor, arch, scope, run_ids, since, until
    )


def _where(
    query: Select[Any],
    hypervisor: str | None,
    arch: str | None,
    scope: str | None,
    run_ids: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    m = measurements.c
    if hypervisor is not None:
        query = query.where(m.hypervisor == hypervisor)
    if arch is not None:
        query = query.where(m.arch == arch)
    if scope is not None:
        query = query.where(m.scope == scope)
    if run_ids is not None:
        query = query.where(m.run_id.in_(list(run_ids)))
    if since is not None:
        query = query.where(m.measured_at >= since)
    if until is not None:
        query = query.where(m.measured_at < until)
    return query


def _stored_record(row: Any) -> dict[str, Any]:
    item = cast(dict[str, Any], row.record)
    item["id"] = row.id
    item["ingestedAt"] = _iso(row.ingested_at)
    item["ingestedBy"] = row.ingested_by
    return item


def _decode_cursor(cursor: str) -> int:
    if type(cursor) is not str or not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InputError("cursor", "is not a cursor returned by a previous page")
    return int(cursor)


def _table(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "createdAt": _iso(row.created_at),
        "createdBy": row.created_by,
        "parentId": row.parent_id,
        "contentSha256": row.content_sha256,
        "document": row.document,
    }


def _activation(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "hypervisor": row.hypervisor,
        "arch": row.arch,
        "tableId": row.table_id,
        "previousTableId": row.previous_table_id,
        "actor": row.actor,
        "reason": row.reason,
        "forced": row.forced,
        "action": row.action,
        "at": _iso(row.at),
    }


def _current(conn: Connection, hypervisor: str, arch: str) -> str | None:
    """The active table id (the latest record's), or None."""
    a = activations.c
    query = (
        select(a.table_id).where(a.hypervisor == hypervisor, a.arch == arch).order_by(a.seq.desc()).limit(1)
    )
    return conn.execute(query).scalar_one_or_none()


def _stack(conn: Connection, hypervisor: str, arch: str) -> list[str]:
    """The activation stack of ``hypervisor`` and ``arch``, replayed from its whole history."""
    a = activations.c
    history = select(a.action, a.table_id).where(a.hypervisor == hypervisor, a.arch == arch).order_by(a.seq)
    stack: list[str] = []
    for action, table_id in conn.execute(history):
        if action == "activate":
            if not stack or stack[-1] != table_id:
                stack.append(table_id)
        elif stack:
            stack.pop()
    return stack


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" hook emit BEGIN itself
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL can itself meet a locked database.
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """WAL mode (it persists in the file). Switching a new database while another connection holds
    a lock fails at once with "database is locked", busy timeout or not: retry for a while."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE waits for it under busy_timeout); a
    # deferred BEGIN upgrading to a writer later fails at once with SQLITE_BUSY instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
