"""The run loop both measuring commands share (bare QEMU and the libvirt path): points in order,
each bounded in time, progress on stderr, a point's records kept whole, and one JSON summary line.

A command supplies what differs: how a point is measured (its records and a progress text), its
time bound, and the summary's extra fields.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from benchmarks.measure.cgroups import CgroupError
from benchmarks.measure.config import BenchConfig, Point
from benchmarks.measure.libvirt_runner import blocked_signals
from benchmarks.measure.records import sample_id
from benchmarks.measure.runner import OtherQemuRunning, PointFailed
from benchmarks.measure.upload import PendingUpload
from overhead_service.errors import InputError

__all__ = [
    "EXIT_FAILED_POINTS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "Outcome",
    "Progress",
    "append_records",
    "clock",
    "finish_run",
    "run_points",
]

EXIT_OK: Final = 0
EXIT_FAILED_POINTS: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_INTERRUPTED: Final = 130

Records = list[dict[str, Any]]
Measure = Callable[[Point, int, float], tuple[Records, str]]
"""Measure one (point, repetition) within a bound in seconds: its records and a progress text."""


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class Progress:
    """Points done of total, elapsed time and an estimate of the time left, on one stderr line per
    event. The estimate scales the predicted cost of the remaining points by how the measured
    points compared with their predictions."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    predicted_done: float = 0.0
    actual_done: float = 0.0

    @property
    def ratio(self) -> float:
        return self.actual_done / self.predicted_done if self.predicted_done > 0 else 1.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, remaining_predicted: float, message: str) -> str:
        left = remaining_predicted * self.ratio
        width = len(str(self.total))
        return (
            f"[{self.done:>{width}}/{self.total}] {clock(self.elapsed())} elapsed, "
            f"~{clock(left)} left | {message}"
        )

    def report(self, remaining_predicted: float, message: str) -> None:
        print(self.line(remaining_predicted, message), file=self.stream, flush=True)

    def point_done(self, predicted: float, actual: float) -> None:
        self.done += 1
        self.predicted_done += predicted
        self.actual_done += actual


@dataclass
class Outcome:
    """How a run went: points measured, failed, where it stopped and why."""

    progress: Progress
    measured: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    stop_reason: str | None = None
    status: int = EXIT_OK
    next_index: int = 0


def append_records(path: Path | None, records: Records) -> None:
    """All of a point's records in one write, with SIGINT and SIGTERM held back (none: no --out)."""
    if path is None:
        return
    text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records)
    with blocked_signals():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _bound(
    timeout: float, max_seconds: float | None, progress: Progress, point: Point, prediction: float
) -> tuple[float, str | None]:
    """The point's time bound, or why the run stops before it (``--max-seconds``)."""
    if max_seconds is None:
        return timeout, None
    expected = prediction * max(progress.ratio, 1.0)
    budget = max_seconds - progress.elapsed()
    if expected > budget:
        return timeout, (
            f"--max-seconds {max_seconds:g}: {point.name} needs ~{expected:.0f} s, "
            f"{max(budget, 0):.0f} s left"
        )
    return min(timeout, budget), None


def run_points(
    planned: list[tuple[Point, int]],
    predictions: list[float],
    *,
    timeout_of: Callable[[Point], float],
    max_seconds: float | None,
    measure: Measure,
    keep: Callable[[Records], None],
    err: TextIO,
) -> Outcome:
    """Measure ``planned`` in order; ``keep`` each point's records.  A failed point is noted and the
    run goes on; another QEMU, a cgroup error, ``--max-seconds`` or Ctrl-C stop it."""
    outcome = Outcome(Progress(total=len(planned), stream=err))
    progress = outcome.progress
    try:
        while outcome.next_index < len(planned):
            point, rep = planned[outcome.next_index]
            prediction = predictions[outcome.next_index]
            remaining = sum(predictions[outcome.next_index + 1 :])
            bound, outcome.stop_reason = _bound(timeout_of(point), max_seconds, progress, point, prediction)
            if outcome.stop_reason:
                break
            label, began = sample_id(point.name, rep), time.monotonic()
            try:
                records, text = measure(point, rep, bound)
            except (PointFailed, InputError) as exc:
                outcome.failures.append({"sampleId": label, "error": str(exc)})
                records, text = [], f"FAILED: {exc}"
            except (OtherQemuRunning, CgroupError) as exc:
                outcome.stop_reason, outcome.status = str(exc), EXIT_REFUSED
                break
            if records:
                keep(records)
                outcome.measured += 1
            outcome.next_index += 1
            progress.point_done(prediction, time.monotonic() - began)
            progress.report(remaining, f"{label}: {text}")
    except KeyboardInterrupt:
        outcome.stop_reason, outcome.status = "interrupted", EXIT_INTERRUPTED
    return outcome


def finish_run(
    outcome: Outcome,
    config: BenchConfig,
    run_id: str,
    upload: PendingUpload,
    out_path: Path | None,
    facts: Mapping[str, Any],
    out: TextIO,
    err: TextIO,
) -> int:
    """Send what is still pending, say what was skipped or failed (stderr) and print the run's
    one-line JSON summary (stdout, ``facts`` after its run id); the exit status."""
    uploaded = upload.finish(out_path, run_id)
    skipped = [sample_id(p.name, r) for p, r in config.schedule()[outcome.next_index :]]
    if outcome.stop_reason:
        print(f"stopped: {outcome.stop_reason}", file=err)
    if skipped:
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        print(f"skipped {len(skipped)} points: {', '.join(skipped[:20])}{more}", file=err)
    for failure in outcome.failures:
        print(f"failed: {failure['sampleId']}: {failure['error']}", file=err)
    summary = {
        "runId": run_id,
        **facts,
        "scheduled": len(config.schedule()),
        "measured": outcome.measured,
        "failed": outcome.failures,
        "skipped": skipped,
        "stopReason": outcome.stop_reason,
        "seconds": round(outcome.progress.elapsed(), 1),
        "out": None if out_path is None else str(out_path),
        "upload": uploaded,
    }
    print(json.dumps(summary), file=out, flush=True)
    if outcome.status != EXIT_OK:
        return outcome.status
    if upload.error is not None:
        return EXIT_REFUSED
    return EXIT_FAILED_POINTS if outcome.failures else EXIT_OK
