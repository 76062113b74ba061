"""Stored calibration tables, which one is active where, and the state version replicas poll.

Every transaction that changes tables or activations first bumps the one ``state`` row
(:meth:`TableStore.state_version`), whose row lock serialises them across replicas on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from overhead_service import jsonio
from overhead_service.errors import NothingToRollBack, TableExists
from overhead_service.store.database import Database
from overhead_service.store.schema import TABLE_KINDS, activations, calibration_tables, iso, state

__all__ = ["TableStore", "content_sha256"]


class TableStore(Database):
    """The store's calibration tables and activations."""

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


def content_sha256(document: Any) -> str:
    """SHA-256 of ``document``'s canonical JSON: sorted keys, no spaces, ASCII."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _table(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "createdAt": iso(row.created_at),
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
        "at": iso(row.at),
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
