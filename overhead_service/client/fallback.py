"""The local fallback: the service's own engine and built-in tables, computed in this process.

Used when the service gives no usable answer, so that a controller rendering a launcher pod
always gets one.  It knows only the **built-in** tables:

- a request naming a built-in table is answered exactly as the service would answer it;
- a request naming no table gets ``default_table`` (the upstream default, ``kubevirt-v1.9.0``).
  The service would use the table *activated* for the hypervisor and architecture, and an
  activated calibrated table is not known here: the fallback answers what upstream KubeVirt
  computes, which may differ from the calibrated figure in either direction;
- a request naming a table that is not built in (a fitted table stored on the service) is
  computed with ``default_table`` instead, and the answer says so: whether that table even exists
  cannot be checked while the service is away.

Input errors are never hidden: bad input raises :class:`~overhead_service.client.errors.InvalidInput`
with the field path, as the service would answer 422.  Nothing here imports requests or Flask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from overhead_service import jsonio
from overhead_service.client.errors import ProblemError, problem_error
from overhead_service.errors import InexactNumber, InputError, UnknownTable, problem
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

__all__ = ["LocalFallback"]


class LocalFallback:
    """Overhead, batch and render answers computed in-process from the built-in tables.

    The :class:`OverheadService` is built on first use (loading the tables takes a few
    milliseconds, and most clients never need it), once, and shared by every thread.
    """

    def __init__(self, *, default_table: str = "kubevirt-v1.9.0", default_arch: str = "amd64") -> None:
        self.default_table = default_table
        self.default_arch = default_arch
        self._service: OverheadService | None = None
        self._lock = threading.Lock()

    @property
    def service(self) -> OverheadService:
        """The in-process service, built on first use."""
        found = self._service
        if found is None:
            with self._lock:
                if self._service is None:
                    self._service = OverheadService(
                        TableRegistry.builtin(),
                        default_arch=self.default_arch,
                        default_table=self.default_table,
                    )
                found = self._service
        return found

    def overhead(self, request: Any) -> tuple[dict[str, Any], list[str]]:
        """The answer to one overhead request, and notes on what differs from asking the service."""
        return self._run(request, self._localise, self.service.compute)

    def overhead_batch(self, items: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """The answers to a batch's items (a problem document in place of each bad one), and notes."""

        def localise(decoded: Any) -> tuple[Any, list[str]]:
            if type(decoded) is not list:
                return decoded, []
            local, notes = [], []
            for index, item in enumerate(decoded):
                copy, item_notes = self._localise(item, f"items[{index}].")
                local.append(copy)
                notes += item_notes
            return local, notes

        return self._run(items, localise, self.service.compute_batch)

    def render(self, body: Any) -> tuple[dict[str, Any], list[str]]:
        """The launcher-pod resources for one render request, and notes."""
        service = self.service
        return self._run(body, self._localise, lambda decoded: render(decoded, service))

    def _run(
        self,
        value: Any,
        localise: Callable[[Any], tuple[Any, list[str]]],
        compute: Callable[[Any], Any],
    ) -> tuple[Any, list[str]]:
        """``compute`` run as the service runs it, on what the service would receive.

        The request goes through JSON and back (a float quantity is decoded again exactly, as the
        HTTP layer does), and so does the answer: the caller gets objects of its own, never the
        engine's shared, remembered ones.  Bad input raises the problem the service would answer.
        """
        raw = jsonio.dumps_bytes(value)
        try:
            try:
                local, notes = localise(jsonio.loads(raw))
                answer = compute(local)
            except InexactNumber:
                local, notes = localise(jsonio.loads_exact(raw))
                answer = compute(local)
        except InputError as err:
            raise _problem(err) from err
        return jsonio.loads(jsonio.dumps_bytes(answer)), notes

    def _localise(self, request: Any, prefix: str = "") -> tuple[Any, list[str]]:
        """``request`` with a table that is not built in replaced by the default table."""
        if type(request) is not dict:
            return request, []  # the engine reports the problem, at the right path
        table = request.get("table")
        if type(table) is not str or table in self.service.tables:
            return request, []
        note = f"{prefix}table {table!r} is not built in; computed with {self.default_table!r}"
        return {**request, "table": self.default_table}, [note]


def _problem(err: InputError) -> ProblemError:
    # As the service answers it: an unknown table named in a request body is a 422 at "table".
    status = 422 if isinstance(err, UnknownTable) and err.path else err.status
    return problem_error(problem(err, status=status), status)
