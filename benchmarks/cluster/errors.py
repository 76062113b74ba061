"""How a run, a sample or the node check fails."""

from __future__ import annotations

__all__ = ["PreflightError", "RunAborted", "SampleError", "Terminated"]


class PreflightError(Exception):
    """The run is refused before any VMI is created (wrong node, missing device, bad setup)."""


class RunAborted(Exception):
    """The run cannot go on (a VMI would not go away, the cluster runs the wrong hypervisor…)."""


class SampleError(Exception):
    """One sample failed; the run goes on (and may try the sample again)."""


class Terminated(BaseException):
    """SIGTERM (Job deleted or past its deadline): unwinds through every ``finally``.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """
