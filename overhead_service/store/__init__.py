"""The database behind the service: for now only the engine and a liveness ping for ``/readyz``.

SQLite (the embedded default) gets the settings that make several gunicorn workers safe on one
file: a busy timeout, WAL, and transactions that SQLAlchemy rather than :mod:`sqlite3` begins
(pysqlite otherwise starts them lazily before the first write, so a read-then-write loses
updates). PostgreSQL URLs work unchanged. Tables arrive with the features that need them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from flask import Flask, current_app
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["Store", "get_store", "init_app"]

log = logging.getLogger(__name__)

EXTENSION = "overhead_service.store"
BUSY_TIMEOUT_MS = 5000


class Store:
    """One SQLAlchemy engine; connections are opened lazily, so creating a Store never fails on I/O."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            _make_parent_directory(parsed.database)
        self.engine: Engine = create_engine(parsed, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)

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


def _make_parent_directory(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # Not fatal: the process must still start and answer /healthz; /readyz reports the problem.
        log.warning("cannot create the directory of the SQLite database %s: %s", database, exc)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" hook emit BEGIN itself
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL can itself meet a locked database.
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def init_app(app: Flask) -> None:
    """Create the application's :class:`Store` from ``DATABASE_URL``."""
    app.extensions[EXTENSION] = Store(app.config["DATABASE_URL"])


def get_store(app: Flask | None = None) -> Store:
    """The :class:`Store` of ``app`` (default: the current application)."""
    return cast(Store, (app or current_app).extensions[EXTENSION])
