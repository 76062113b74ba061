"""Stored measurement records: ingestion, listing, and the columns a fit reads.

Measurements are inserted with ``ON CONFLICT DO NOTHING`` in one key order, so overlapping batches
wait for each other on PostgreSQL's unique index instead of deadlocking; on SQLite the writers of
one process queue on a lock (:class:`~overhead_service.store.database.Database`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NotRequired, TypedDict, Unpack, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import JSON, Select, bindparam, column, func, select
from sqlalchemy.dialects import postgresql, sqlite

from overhead_service.calibration.record_fields import Flag, Timestamp
from overhead_service.calibration.records import LEAVES, parse_timestamp
from overhead_service.errors import InputError
from overhead_service.store.database import Database
from overhead_service.store.schema import iso, measurements

__all__ = ["FIT_COLUMNS", "IngestResult", "MeasurementStore"]

_MAX_PAGE: Final = 1000
_STREAM_ROWS: Final = 5000

# What Store.measurement_columns returns besides ids: the record fields a fit reads (the fields of
# calibration.SampleArrays), with what an absent optional one means.
_FIT_LEAVES: Final = [leaf for leaf in LEAVES if leaf.field.fit_reads]
FIT_COLUMNS: Final = tuple(str(leaf.column) for leaf in _FIT_LEAVES)
_BOOLEAN_FIT_COLUMNS: Final = frozenset(
    str(leaf.column) for leaf in _FIT_LEAVES if isinstance(leaf.field, Flag)
)
_FIT_DEFAULTS: Final = {
    str(leaf.column): leaf.field.fit_default for leaf in _FIT_LEAVES if not leaf.field.required
}
# Host facts as the record names them -> their columns, by name.
_HOST_FACTS: Final = dict(sorted((leaf.key, str(leaf.column)) for leaf in LEAVES if leaf.group == "host"))
# How a validated record becomes a row: (column, group, key, required, is a timestamp) per column.
_STORED: Final = tuple(
    (leaf.column, leaf.group, leaf.key, leaf.field.required, isinstance(leaf.field, Timestamp))
    for leaf in LEAVES
    if leaf.column is not None
)


class Selection(TypedDict):
    """Which stored records a fit-side query reads: those of the hypervisor, arch and scope, and of
    each other field given (``since`` inclusive, ``until`` exclusive, on ``measuredAt``; a record
    without ``launcher`` was started directly; None: any)."""

    hypervisor: str
    arch: str
    scope: str
    run_ids: NotRequired[Sequence[str] | None]
    since: NotRequired[datetime | None]
    until: NotRequired[datetime | None]
    launcher: NotRequired[str | None]


@dataclass
class IngestResult:
    """What :meth:`Store.add_measurements` did with a batch.

    ``duplicates`` counts the records not stored because their ``(runId, sampleId)`` was already
    stored, or came earlier in the same batch; ``duplicate_keys`` lists them in batch order.
    """

    stored: int
    duplicates: int
    duplicate_keys: list[tuple[str, str]] = field(default_factory=list)


class MeasurementStore(Database):
    """The store's measurement records."""

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
            {
                "hypervisor": hypervisor,
                "arch": arch,
                "scope": scope,
                "run_ids": run_ids,
                "since": since,
                "until": until,
            }
        )
        if cursor is not None:
            query = query.where(measurements.c.id > _decode_cursor(cursor))
        query = query.order_by(measurements.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [_stored_record(row) for row in rows[:limit]]
        next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
        return items, next_cursor

    def iter_measurements(self, **selection: Unpack[Selection]) -> Iterator[dict[str, Any]]:
        """Every matching stored record, streamed in id order (server-side cursor on PostgreSQL).

        Ids grow with each batch; within a batch they follow the ``(runId, sampleId)`` order.
        """
        query = _filtered(selection).order_by(measurements.c.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=_STREAM_ROWS).execute(query)
            for row in result:
                yield _stored_record(row)

    def select_measurements(self, **selection: Unpack[Selection]) -> list[dict[str, Any]]:
        """Every matching stored record (same shape as :meth:`list_measurements` items), for a fit."""
        return list(self.iter_measurements(**selection))

    def measurement_columns(self, **selection: Unpack[Selection]) -> dict[str, npt.NDArray[Any]]:
        """The fit inputs of every matching record as numpy columns, in id order: the fast way to
        load 10^6 samples (no JSON decoding, no dict per record).

        Keys: ``id`` and :data:`FIT_COLUMNS` (``overhead_bytes``, ``vcpus``, ``guest_memory_bytes``,
        ``io_threads``, ``exec_probes`` as int64; ``graphics``, ``vfio``, ``tpm``, ``sev``,
        ``dedicated_cpu``, ``downward_metrics``, ``vcpus_online`` as bool) — the field names of
        :class:`overhead_service.calibration.SampleArrays`. An absent optional field reads as the
        record format's default: false, 0, and ``vcpus_online`` true.
        """
        m = measurements.c
        selected = [m.id] + [
            func.coalesce(m[name], _FIT_DEFAULTS[name]) if m[name].nullable else m[name]
            for name in FIT_COLUMNS
        ]
        query = _where(select(*selected), selection)
        query = query.order_by(m.id)
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

    def host_facts(self, **selection: Unpack[Selection]) -> dict[str, list[str]]:
        """Every distinct value of each host fact among the matching records, sorted:
        ``{"accelerator", "cpuModel", "kernel", "kubevirt", "libvirt", "node", "qemu"}`` (a fact no
        record gave is absent)."""
        names = list(_HOST_FACTS)
        combinations = _where(
            select(*(measurements.c[_HOST_FACTS[name]] for name in names)).distinct(), selection
        )
        values: dict[str, set[str]] = {name: set() for name in names}
        with self.engine.connect() as conn:  # one pass: few distinct combinations, however many rows
            for row in conn.execute(combinations):
                for name, value in zip(names, row, strict=True):
                    if value is not None:
                        values[name].add(value)
        return {name: sorted(found) for name, found in values.items() if found}

    def launcher_counts(self, **selection: Unpack[Selection]) -> dict[str, int]:
        """How many matching records each launcher started (``direct`` for a record without one,
        as a ``qemu`` record before libvirt-launched ones; pod and node records count as that too)."""
        launcher = func.coalesce(measurements.c.launcher, "direct")
        counted = cast(Select[Any], select(launcher, func.count()))
        query = _where(counted, {**selection, "launcher": None}).group_by(launcher)
        with self.engine.connect() as conn:
            return {str(name): int(count) for name, count in conn.execute(query)}

    def count_measurements(self) -> int:
        """How many records are stored."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(measurements)).scalar_one())


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


def _measurement_row(record: dict[str, Any], now: datetime, ingested_by: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column_name, group, key, required, timestamp in _STORED:
        source = record if group is None else record.get(group, {})
        value = source[key] if required else source.get(key)
        row[column_name] = parse_timestamp(value, key) if timestamp else value
    row["record"] = record
    row["ingested_at"] = now
    row["ingested_by"] = ingested_by
    return row


def _filtered(selection: Mapping[str, Any]) -> Select[Any]:
    m = measurements.c
    return _where(select(m.id, m.record, m.ingested_at, m.ingested_by), selection)


def _where(query: Select[Any], selection: Mapping[str, Any]) -> Select[Any]:
    """``query`` narrowed to the records ``selection`` picks (a field absent or None: any)."""
    m = measurements.c
    launcher = selection.get("launcher")
    if launcher is not None:  # a record without one was started directly
        query = query.where(func.coalesce(m.launcher, "direct") == launcher)
    for name, field_ in (("hypervisor", m.hypervisor), ("arch", m.arch), ("scope", m.scope)):
        if selection.get(name) is not None:
            query = query.where(field_ == selection[name])
    if selection.get("run_ids") is not None:
        query = query.where(m.run_id.in_(list(selection["run_ids"])))
    if selection.get("since") is not None:
        query = query.where(m.measured_at >= selection["since"])
    if selection.get("until") is not None:
        query = query.where(m.measured_at < selection["until"])
    return query


def _stored_record(row: Any) -> dict[str, Any]:
    item = cast(dict[str, Any], row.record)
    item["id"] = row.id
    item["ingestedAt"] = iso(row.ingested_at)
    item["ingestedBy"] = row.ingested_by
    return item


def _decode_cursor(cursor: str) -> int:
    if type(cursor) is not str or not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InputError("cursor", "is not a cursor returned by a previous page")
    return int(cursor)
