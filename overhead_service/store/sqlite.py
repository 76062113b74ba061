"""What makes several gunicorn workers safe on one SQLite file.

A busy timeout, WAL, and transactions that SQLAlchemy rather than :mod:`sqlite3` begins (pysqlite
otherwise starts them lazily before the first write, so a read-then-write loses updates). Every
write transaction begins with ``BEGIN IMMEDIATE`` (a connection marked with the :data:`WRITE`
execution option): it takes the write lock up front, so it waits (busy timeout) instead of failing
when it later upgrades a read lock.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

from sqlalchemy import Connection, Engine, event

__all__ = ["BUSY_TIMEOUT_MS", "WRITE", "install"]

BUSY_TIMEOUT_MS: Final = 5000

# Execution option marking a connection whose transaction writes (SQLite: BEGIN IMMEDIATE).
WRITE: Final = "overhead_service_write"


def install(engine: Engine) -> None:
    """Give every connection of ``engine`` the busy timeout and WAL, and its transactions their BEGIN."""
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
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


def _on_begin(conn: Connection) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE waits for it under busy_timeout); a
    # deferred BEGIN upgrading to a writer later fails at once with SQLITE_BUSY instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")
