"""gunicorn workers for tests that need the project's worker with smaller bounds."""

from __future__ import annotations

from overhead_service.worker import BufferingThreadWorker

__all__ = ["SmallBudgetWorker"]


class SmallBudgetWorker(BufferingThreadWorker):
    """The project's worker holding at most 64 KiB of requests still arriving (not 64 MiB), so a
    test reaches the path where a thread reads the rest of a request under its deadline."""

    buffer_budget = 64 * 1024
