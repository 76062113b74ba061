"""A thread-safe circuit breaker: stop calling a service that keeps failing, probe it now and then.

- **closed**: calls go through; ``threshold`` consecutive failures open the circuit.
- **open**: calls are refused at once for ``open_seconds``.
- **half-open**: after that, exactly one call (the *probe*) goes through, and every other caller
  is still refused; the probe's success closes the circuit, its failure opens it for another
  ``open_seconds``.

Outcomes are recorded against the :class:`Permit` that :meth:`CircuitBreaker.acquire` handed
out, and a permit from before the circuit last opened or closed no longer counts: a slow call
admitted while the circuit was closed cannot close an open circuit when it finally succeeds (only
the probe decides), nor count against a circuit that has closed again since.  The clock is
injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["CircuitBreaker", "Permit", "State"]

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; ``probe`` when it is the half-open circuit's single trial."""

    probe: bool
    epoch: int  # which opening of the circuit a probe belongs to


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a half-open single probe (see the module docstring)."""

    def __init__(
        self,
        threshold: int = 5,
        open_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if open_seconds < 0:
            raise ValueError("open_seconds must not be negative")
        self.threshold: Final = threshold
        self.open_seconds: Final = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # None: closed
        self._probe_since: float | None = None  # a probe is out since then
        self._epoch = 0

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.open_seconds:
            return "open"
        return "half-open"

    def acquire(self) -> Permit | None:
        """A permit to make one call, or None if the circuit refuses it now."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return Permit(probe=False, epoch=self._epoch)
            if state == "open":
                return None
            now = self._clock()
            # One probe at a time; a probe whose outcome never came back (its caller died) is
            # given up after another open interval, so the circuit cannot stay stuck half-open.
            if self._probe_since is not None and now - self._probe_since < self.open_seconds:
                return None
            self._probe_since = now
            return Permit(probe=True, epoch=self._epoch)

    def retry_in(self) -> float:
        """Seconds until the circuit lets a probe through (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.open_seconds - self._clock())

    def success(self, permit: Permit) -> None:
        """The call made under ``permit`` got an answer from a healthy service."""
        with self._lock:
            if permit.epoch != self._epoch:
                return  # admitted before the circuit last changed: its news is stale
            if self._opened_at is None:
                self._failures = 0
            elif permit.probe:
                self._close()

    def failure(self, permit: Permit) -> None:
        """The call made under ``permit`` failed (transport error, timeout, 5xx)."""
        with self._lock:
            if permit.epoch != self._epoch:
                return
            if self._opened_at is None:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._open()
            elif permit.probe:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_since = None
        self._epoch += 1

    def _close(self) -> None:
        self._opened_at = None
        self._probe_since = None
        self._failures = 0
        self._epoch += 1
