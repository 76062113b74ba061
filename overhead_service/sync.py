"""Keep every worker's tables and active-table choice in step with the database.

``POST /v1/overhead`` must never read the database, yet an activation made through any replica or
worker must take effect everywhere within seconds.  So each worker process polls one cheap number,
the store's state version (bumped in the same transaction as every table insert, activation and
rollback), from a daemon thread; when it changes, the worker loads the new tables into its
registry and hands the active map to the :class:`~overhead_service.model.service.OverheadService`.

No Flask here: the application factory builds one :class:`TableSync` per app, with a ``publish``
callback that shows the active choice in the metrics.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from overhead_service.errors import OverheadServiceError
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry, compile_table
from overhead_service.store import Store

__all__ = ["ActiveTable", "TableSync"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveTable:
    """One entry of the active choice: the table a hypervisor + arch is answered from."""

    hypervisor: str
    arch: str
    table: str
    provisional: bool
    coverage: float | None = None  # held-out coverage and its target, for a fitted table
    target: float | None = None


Publisher = Callable[[Iterable[ActiveTable]], None]


class TableSync:
    """Loads stored tables and the active map into one worker's registry and service."""

    def __init__(
        self,
        store: Store,
        registry: TableRegistry,
        service: OverheadService,
        interval: float,
        publish: Publisher | None = None,
    ) -> None:
        self.store = store
        self._publish = publish
        self.registry = registry
        self.service = service
        self.interval = interval
        self.version: int | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def refresh(self, *, force: bool = False) -> bool:
        """Catch up with the database if its state version moved; True when anything was loaded.

        Errors are logged and swallowed: serving with the tables already loaded beats failing.
        """
        with self._lock:
            try:
                version = self.store.state_version()
                if not force and version == self.version:
                    return False
                for row in self.store.list_tables():
                    if row["id"] not in self.registry:
                        self.registry.add(compile_table(row["document"]))
                self.service.set_active(self.store.active_tables())
            except (SQLAlchemyError, OverheadServiceError) as exc:
                # The driver's own message, on one line (SQLAlchemy adds the statement and a link).
                detail = (str(getattr(exc, "orig", None) or exc).splitlines() or [repr(exc)])[0]
                later = "will retry" if self.interval > 0 else "answering with the tables already loaded"
                log.warning("table sync failed (%s): %s", later, detail)
                return False
            self.version = version
            self.publish()
            return True

    def publish(self) -> None:
        """Hand the active choice to the publisher (the metrics: tables requests get, fit coverage)."""
        if self._publish is not None:
            self._publish(self.active_tables())

    def active_tables(self) -> Iterator[ActiveTable]:
        """Every (hypervisor, arch) with its table: the activated ones, and for each hypervisor
        without an activation for every arch (``*``), the default table."""
        active = self.service.active
        for hypervisor in ("kvm", "mshv"):
            active.setdefault((hypervisor, "*"), self.service.default_table)
        for (hypervisor, arch), table_id in sorted(active.items()):
            table = self.registry.get(table_id)
            model = table.model_for(hypervisor, arch)
            provisional = (
                model.provisional
                if model is not None
                else any(m.provisional for m in table.models if m.hypervisor == hypervisor)
            )
            coverage, target = _fit_coverage(table.document)
            yield ActiveTable(hypervisor, arch, table_id, provisional, coverage, target)

    def start(self) -> None:
        """Poll in a daemon thread; safe to call in every worker (one thread per process)."""
        if self.interval <= 0 or (self._thread is not None and self._pid == os.getpid()):
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="table-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval):
            self.refresh()

    def begin(self) -> None:
        """Load what is stored now (at start-up, never on a request), then keep polling."""
        if not self.refresh(force=True):
            self.publish()  # no database yet: the default tables are what requests get
        self.start()


def _fit_coverage(document: Any) -> tuple[float | None, float | None]:
    """The held-out coverage and its target from a fitted table's report; (None, None) otherwise."""
    fit = document.get("fit")
    if not isinstance(fit, dict):
        return None, None
    held_out = fit.get("heldOut")
    coverage = held_out.get("coverage") if isinstance(held_out, dict) else None
    target = fit.get("target")
    if isinstance(coverage, int | float) and isinstance(target, int | float):
        return float(coverage), float(target)
    return None, None
