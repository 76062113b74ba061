"""The connection to one database, shared by every part of the store: engine, write transactions,
schema creation.  SQLAlchemy Core, the same code for SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, make_url, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from overhead_service import jsonio
from overhead_service.store import schema
from overhead_service.store import sqlite as sqlite_setup

__all__ = ["Database"]

log = logging.getLogger("overhead_service.store")


class Database:
    """The database of one process. Connections open lazily: creating one never does I/O.

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
            sqlite_setup.install(self.engine)

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
            conn.execution_options(**{sqlite_setup.WRITE: True})
            with conn.begin():
                yield conn

    def create_schema(self) -> None:
        """Create the tables, or upgrade them to the schema's version; idempotent and race-safe.

        A new database gets the latest schema and version; an older one runs each upgrade step
        above its version, in order, in one transaction (:mod:`overhead_service.store.schema`). A
        database newer than this code raises :class:`RuntimeError` rather than being touched.
        """
        with self._write() as conn:
            schema.create_or_upgrade(conn, postgresql=not self.is_sqlite)

    def schema_version(self) -> int | None:
        """The recorded schema version, or None when there is no schema (or no database)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(schema.schema_version.c.version)).scalar_one_or_none()
        except SQLAlchemyError:
            return None

    def schema_ready(self) -> bool:
        """Whether the schema exists at exactly the version this code uses."""
        return self.schema_version() == schema.SCHEMA_VERSION
