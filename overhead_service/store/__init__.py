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

The rooms: :mod:`.schema` (tables, version, upgrade steps), :mod:`.database` (engine, write
transactions, schema creation), :mod:`.sqlite` (the SQLite settings above), :mod:`.measurements`
(ingestion, listing, fit columns) and :mod:`.tables` (stored tables, activations, the state
version). :class:`Store` is all of them on one database.

Timestamps are stored in UTC and returned as RFC 3339 strings ending in ``Z``.
"""

from __future__ import annotations

from overhead_service.store.measurements import FIT_COLUMNS, IngestResult, MeasurementStore
from overhead_service.store.schema import SCHEMA_VERSION, metadata
from overhead_service.store.tables import TableStore, content_sha256

__all__ = [
    "FIT_COLUMNS",
    "SCHEMA_VERSION",
    "IngestResult",
    "Store",
    "content_sha256",
    "metadata",
]


class Store(MeasurementStore, TableStore):
    """The database of one process: measurements, calibration tables, activations, state version.

    Connections open lazily: creating a Store never does I/O. Every method opens its own connection
    and transaction; writes are atomic.
    """
