"""The database schema: its tables, its version, and the steps that upgrade an older database.

The schema is created by :meth:`~overhead_service.store.Store.create_schema` (``overhead-service
init-db``, gunicorn's ``on_starting`` hook in the master, or a test fixture) — never by each worker
at import.  A new database gets the latest schema from :data:`metadata` at once; an older one runs
each step of :data:`MIGRATIONS` above its version, in order, in one transaction.

Timestamps are stored in UTC and returned as RFC 3339 strings ending in ``Z`` (:func:`iso`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Constraint,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.schema import AddConstraint, DropConstraint
from sqlalchemy.types import TypeEngine

from overhead_service.calibration import record_fields
from overhead_service.calibration.records import LEAVES, Leaf

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLE_KINDS",
    "UTCDateTime",
    "activations",
    "calibration_tables",
    "create_or_upgrade",
    "iso",
    "measurements",
    "metadata",
    "schema_version",
    "state",
]

log = logging.getLogger("overhead_service.store")

# Any constant: the PostgreSQL advisory lock that serialises concurrent create_or_upgrade() calls.
_SCHEMA_LOCK_KEY: Final = 0x6F766864

TABLE_KINDS: Final = ("builtin", "draft", "fitted")


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


def _column_type(field: record_fields.RecordField) -> TypeEngine[Any]:
    """The SQL type of a record field's column."""
    if isinstance(field, record_fields.Flag):
        return Boolean()
    if isinstance(field, record_fields.Integer):
        return Integer() if field.low >= -(2**31) and field.high < 2**31 else BigInteger()
    if isinstance(field, record_fields.Text):
        return String(field.max_length)
    if isinstance(field, record_fields.Choice):
        return String(field.length)
    if isinstance(field, record_fields.Share):
        return Float()
    if isinstance(field, record_fields.Timestamp):
        return UTCDateTime()
    raise TypeError(f"no column type for {type(field).__name__}")


def _check(leaf: Leaf) -> CheckConstraint:
    """A record field's CHECK constraint (``store_check``): its choices or its range."""
    field, column = leaf.field, leaf.column
    if isinstance(field, record_fields.Choice):
        choices = ", ".join(f"'{choice}'" for choice in field.choices)
        return CheckConstraint(f"{column} IN ({choices})", name=column)
    assert isinstance(field, record_fields.Integer)
    return CheckConstraint(f"{column} BETWEEN {field.low} AND {field.high}", name=column)


# The measurements table: a column for each record field that has one (calibration.records is the
# definition: types, lengths, nullability and the CHECKs of fields marked ``store_check``), the
# whole record as uploaded, and when and by whom it was ingested.  Existing databases keep the
# column order they were created with, except where an upgrade step rebuilt the table; nothing
# reads columns by position.
_STORED: Final = [leaf for leaf in LEAVES if leaf.column is not None]


def _measurements_table(meta: MetaData, stored: list[Leaf]) -> Table:
    """The measurements table with the columns of ``stored`` (every stored field, but for upgrade
    steps that rebuild the table as it was at their version)."""
    checked = [leaf for leaf in stored if leaf.field.store_check]
    return Table(
        "measurements",
        meta,
        Column("id", _Id, primary_key=True, autoincrement=True),
        *(Column(leaf.column, _column_type(leaf.field), nullable=not leaf.field.required) for leaf in stored),
        Column("record", JSON, nullable=False),  # the whole validated record, as uploaded
        Column("ingested_at", UTCDateTime, nullable=False),
        Column("ingested_by", String(200)),
        UniqueConstraint("run_id", "sample_id"),
        *(_check(leaf) for leaf in checked if isinstance(leaf.field, record_fields.Choice)),
        # The record's consistency rules that the database can hold by itself.
        CheckConstraint("raw_bytes >= 0 AND guest_touched_bytes >= 0", name="raw_not_negative"),
        CheckConstraint("raw_bytes - guest_touched_bytes = overhead_bytes", name="overhead_consistent"),
        *(_check(leaf) for leaf in checked if isinstance(leaf.field, record_fields.Integer)),
        Index(None, "hypervisor", "arch", "scope", "measured_at"),
    )


measurements = _measurements_table(metadata, _STORED)

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


def _constraint(table: Table, name: str) -> Constraint:
    """``table``'s CHECK constraint on the column ``name`` (``ck_measurements_scope`` for ``scope``)."""
    full = f"ck_{table.name}_{name}"
    return next(constraint for constraint in table.constraints if constraint.name == full)


def _rebuild_sqlite_measurements(conn: Connection, added: set[str]) -> None:
    """SQLite cannot change a column's constraints in place: rename the table, create it anew from
    the record's definition (restricted to the columns it had and ``added``, so that a later step
    still finds its own columns missing), copy every row, ids included, and drop the old table."""
    inspector = inspect(conn)
    old = [column["name"] for column in inspector.get_columns(measurements.name)]
    keep = set(old) | added
    rebuilt = _measurements_table(
        MetaData(naming_convention=metadata.naming_convention),
        [leaf for leaf in _STORED if leaf.column in keep],
    )
    for index in inspector.get_indexes(measurements.name):
        conn.execute(text(f"DROP INDEX {index['name']}"))
    conn.execute(text("ALTER TABLE measurements RENAME TO measurements_before_upgrade"))
    rebuilt.create(conn)
    columns = ", ".join(old)
    conn.execute(
        text(f"INSERT INTO measurements ({columns}) SELECT {columns} FROM measurements_before_upgrade")
    )
    conn.execute(text("DROP TABLE measurements_before_upgrade"))


def _upgrade_to_2(conn: Connection) -> None:
    """Version 2, libvirt-launched measurements: scopes ``virtqemud`` and ``virtlogd`` (``scope``
    widened to 16 characters, its CHECK replaced) and the ``launcher`` column with its CHECK.
    Stored records keep their values (``launcher`` NULL: started directly, or a pod or node)."""
    if conn.dialect.name == "sqlite":
        _rebuild_sqlite_measurements(conn, {"launcher"})
        return
    # A copy of the definition: AddConstraint marks the constraint it is given as created by ALTER,
    # and a CREATE TABLE of ``measurements`` would then leave it out.
    table = _measurements_table(MetaData(naming_convention=metadata.naming_convention), _STORED)
    scope_type = table.c.scope.type.compile(dialect=conn.dialect)
    launcher_type = table.c.launcher.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE measurements ALTER COLUMN scope TYPE {scope_type}"))
    conn.execute(DropConstraint(_constraint(table, "scope")))
    conn.execute(AddConstraint(_constraint(table, "scope")))
    conn.execute(text(f"ALTER TABLE measurements ADD COLUMN launcher {launcher_type}"))
    conn.execute(AddConstraint(_constraint(table, "launcher")))


# Upgrade steps: version N -> the function that brings a version N-1 database to N, run in order
# inside create_or_upgrade()'s transaction. A new database gets the latest schema from ``metadata`` at
# once. A step is written for the database as its version left it: it adds what its version added
# (a step after 2 adding a column to SQLite can do it with ALTER TABLE, the rebuild keeps the table
# as it was). ``tests/store/test_upgrade.py`` upgrades a version 1 database, created from the DDL
# version 1 wrote, on both databases.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _upgrade_to_2}

SCHEMA_VERSION: Final = max([1, *MIGRATIONS])


def iso(moment: datetime) -> str:
    """A stored moment as RFC 3339 in UTC, ending in ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def create_or_upgrade(conn: Connection, *, postgresql: bool) -> None:
    """Create the tables, or upgrade them to :data:`SCHEMA_VERSION`, in ``conn``'s write transaction.

    A database newer than this code raises :class:`RuntimeError` rather than being touched.
    """
    if postgresql:  # DDL is transactional there too; one creator at a time
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
    for version in sorted(v for v in MIGRATIONS if v > current):
        MIGRATIONS[version](conn)
        conn.execute(schema_version.update().values(version=version, updated_at=now))
        log.info("database schema upgraded to version %d", version)
