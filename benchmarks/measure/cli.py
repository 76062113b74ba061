"""``python -m benchmarks.measure``: boot real QEMU guests of a shape matrix, measure them, and
upload the records (or write them as JSON Lines).

    python -m benchmarks.measure --config benchmarks/measure/smoke.yaml --out /tmp/smoke.jsonl
    python -m benchmarks.measure --config grid.yaml --url http://svc:8080 --token T --max-seconds 3600
    python -m benchmarks.measure upload /tmp/smoke.jsonl --url http://svc:8080 --token T
    python -m benchmarks.measure build-guest
    python -m benchmarks.measure libvirt --config benchmarks/measure/libvirt-smoke.yaml --out s.jsonl

``--url``/``--token`` default to ``$OVERHEAD_URL``/``$OVERHEAD_TOKEN``. Progress goes to stderr;
a one-line JSON summary of the run (or upload) to stdout. Exit status: 0 all measured (and
uploaded), 1 some points failed, 2 bad usage or config, 3 refused to measure (another QEMU, no
usable memory cgroup) or the upload failed or was rejected, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from benchmarks.measure.cgroups import CgroupError
from benchmarks.measure.config import ACCELERATORS, BenchConfig, ConfigError, Point, load_config
from benchmarks.measure.guest import GuestBuildError, build_guest
from benchmarks.measure.host import HostFacts, choose_accelerator, host_facts
from benchmarks.measure.records import build_record, default_run_id, sample_id
from benchmarks.measure.runner import (
    MIB,
    Measurement,
    OtherQemuRunning,
    PointFailed,
    Runner,
    default_timeout,
    predict_seconds,
)
from benchmarks.measure.upload import (
    PendingUpload,
    Uploader,
    UploadFailed,
    UploadRejected,
    read_jsonl,
    start_outputs,
    write_jsonl,
)
from overhead_service.calibration.records import validate_record
from overhead_service.errors import InputError

__all__ = ["Progress", "main"]

EXIT_OK, EXIT_FAILED_POINTS, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _clock(seconds: float) -> str:
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
            f"[{self.done:>{width}}/{self.total}] {_clock(self.elapsed())} elapsed, "
            f"~{_clock(left)} left | {message}"
        )

    def report(self, remaining_predicted: float, message: str) -> None:
        print(self.line(remaining_predicted, message), file=self.stream, flush=True)

    def point_done(self, predicted: float, actual: float) -> None:
        self.done += 1
        self.predicted_done += predicted
        self.actual_done += actual


def _describe(m: Measurement) -> str:
    overhead = (m.cgroup.anon + m.cgroup.kernel - m.touched_bytes) / MIB
    rss_over = (m.process.rss - m.touched_bytes) / MIB
    waited = f" (after waiting {m.waited:.0f} s for another measurement)" if m.waited >= 1 else ""
    return (
        f"{m.seconds:.1f} s, touched {m.serial.touched_mib} MiB, overhead {overhead:.1f} MiB "
        f"(rss-touched {rss_over:.1f}, page cache {m.cgroup.page_cache / MIB:.1f}), "
        f"vCPUs online {m.serial.online}/{m.point.vcpus}{waited}"
    )


# --- run ------------------------------------------------------------------------------------------


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measure [run]",
        description="Boot QEMU guests of a shape matrix, measure them (scope qemu), upload or save records.",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML or JSON shape matrix")
    parser.add_argument("--run-id", help="default: <config>-<accelerator>-<host>-<YYYYMMDD>")
    parser.add_argument("--out", type=Path, help="write the records to this JSON Lines file (replaced)")
    parser.add_argument("--url", default=os.environ.get("OVERHEAD_URL"), help="service URL ($OVERHEAD_URL)")
    parser.add_argument(
        "--token", default=os.environ.get("OVERHEAD_TOKEN"), help="ingest token ($OVERHEAD_TOKEN)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=100, help="records per upload request (default 100)"
    )
    parser.add_argument("--max-points", type=int, help="measure at most this many (point, repetition) pairs")
    parser.add_argument("--max-seconds", type=float, help="stop before a point that would end after this")
    parser.add_argument("--repetitions", type=int, help="override the config's repetitions")
    parser.add_argument("--accelerator", choices=ACCELERATORS, help="override the config's accelerator")
    parser.add_argument("--cache-dir", type=Path, help="where the guest is built (default ~/.cache/...)")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="the QEMU binary")
    parser.add_argument(
        "--wait-other-qemu",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for other QEMU processes to end before refusing (default 0)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the schedule and its predicted time")
    return parser


def _schedule(
    config: BenchConfig, max_points: int | None
) -> tuple[list[tuple[Point, int]], list[tuple[Point, int]]]:
    schedule = config.schedule()
    if max_points is not None:
        return schedule[:max_points], schedule[max_points:]
    return schedule, []


def _run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    parser = _run_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    several = [p.name for p in config.points if p.domains != 1]
    if several:
        print(
            f"error: {args.config}: {several[0]}: domains > 1 needs a libvirt daemon; run it with "
            "python -m benchmarks.measure libvirt",
            file=err,
        )
        return EXIT_USAGE
    if args.repetitions is not None:
        if args.repetitions < 1:
            parser.error("--repetitions must be at least 1")
        config = BenchConfig(
            config.name, config.points, args.repetitions, config.accelerator, config.point_timeout_seconds
        )
    if args.max_points is not None and args.max_points < 0:
        parser.error("--max-points must not be negative")
    if not 1 <= args.batch_size <= 10_000:
        parser.error("--batch-size must be between 1 and 10000")
    requested = args.accelerator or config.accelerator
    accelerator = choose_accelerator(requested)
    if accelerator == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("error: accelerator kvm requested but /dev/kvm cannot be opened", file=err)
        return EXIT_USAGE
    planned, skipped = _schedule(config, args.max_points)

    if args.dry_run:
        total = sum(predict_seconds(p, accelerator) for p, _ in planned)
        for point, rep in planned:
            print(f"{sample_id(point.name, rep)}\t~{predict_seconds(point, accelerator):.1f} s", file=out)
        print(
            f"{len(planned)} points ({len(skipped)} beyond --max-points), about {_clock(total)} "
            f"with {accelerator}",
            file=out,
        )
        return EXIT_OK
    if args.out is None and not args.url:
        parser.error("give --out FILE.jsonl, --url (or $OVERHEAD_URL), or both")
    if args.url and not args.token:
        parser.error("--url needs --token (or $OVERHEAD_TOKEN)")

    try:
        guest = build_guest(args.cache_dir)
    except GuestBuildError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    try:
        runner = Runner(
            accelerator=accelerator, guest=guest, qemu=args.qemu, wait_other_qemu=args.wait_other_qemu
        )
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    with runner:
        try:
            runner.check_quiet()
        except OtherQemuRunning as exc:
            print(f"error: {exc}", file=err)
            return EXIT_REFUSED
        host = host_facts(accelerator, runner.qemu)
        run_id = args.run_id or default_run_id(
            config.name, accelerator, host.node, datetime.now(UTC).strftime("%Y%m%d")
        )
        print(
            f"run {run_id}: {len(planned)} points with {accelerator} on {host.node} "
            f"(QEMU {host.qemu}, kernel {host.kernel}, guest {guest})",
            file=err,
            flush=True,
        )
        uploader = start_outputs(args.out, args.url, args.token, err, batch_size=args.batch_size)
        try:
            return _measure_all(args, config, planned, skipped, runner, host, run_id, uploader, out, err)
        finally:
            if uploader is not None:
                uploader.close()


def _measure_all(
    args: argparse.Namespace,
    config: BenchConfig,
    planned: list[tuple[Point, int]],
    skipped: list[tuple[Point, int]],
    runner: Runner,
    host: HostFacts,
    run_id: str,
    uploader: Uploader | None,
    out: TextIO,
    err: TextIO,
) -> int:
    accelerator = runner.accelerator
    progress = Progress(total=len(planned), stream=err)
    predictions = [predict_seconds(point, accelerator) for point, _ in planned]
    failures: list[dict[str, str]] = []
    upload = PendingUpload(uploader, args.batch_size, err)
    status = EXIT_OK
    stop_reason: str | None = None
    measured = 0
    next_index = 0
    try:
        while next_index < len(planned):
            point, rep = planned[next_index]
            prediction = predictions[next_index]
            remaining = sum(predictions[next_index + 1 :])
            expected = prediction * max(progress.ratio, 1.0)
            bound = config.point_timeout_seconds or default_timeout(point, accelerator)
            if args.max_seconds is not None:
                budget = args.max_seconds - progress.elapsed()
                if expected > budget:
                    stop_reason = (
                        f"--max-seconds {args.max_seconds:g}: {point.name} needs ~{expected:.0f} s, "
                        f"{max(budget, 0):.0f} s left"
                    )
                    break
                bound = min(bound, budget)
            label = sample_id(point.name, rep)
            began = time.monotonic()
            try:
                measurement = runner.measure(point, rep, bound)
                record = build_record(measurement, host, run_id)
            except (PointFailed, InputError) as exc:
                failures.append({"sampleId": label, "error": str(exc)})
                next_index += 1
                progress.point_done(prediction, time.monotonic() - began)
                progress.report(remaining, f"{label}: FAILED: {exc}")
                continue
            except (OtherQemuRunning, CgroupError) as exc:
                stop_reason = str(exc)
                status = EXIT_REFUSED
                break
            next_index += 1
            measured += 1
            progress.point_done(prediction, time.monotonic() - began)
            progress.report(remaining, f"{label}: {_describe(measurement)}")
            if args.out is not None:
                write_jsonl(args.out, [record])
            upload.add([record])
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        status = EXIT_INTERRUPTED
    not_run = planned[next_index:]
    skipped = not_run + skipped
    uploaded = upload.finish(args.out, run_id)
    if stop_reason:
        print(f"stopped: {stop_reason}", file=err)
    if skipped:
        names = ", ".join(sample_id(p.name, r) for p, r in skipped[:20])
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        print(f"skipped {len(skipped)} points: {names}{more}", file=err)
    for failure in failures:
        print(f"failed: {failure['sampleId']}: {failure['error']}", file=err)
    summary: dict[str, Any] = {
        "runId": run_id,
        "accelerator": accelerator,
        "scheduled": len(config.schedule()),
        "measured": measured,
        "failed": failures,
        "skipped": [sample_id(p.name, r) for p, r in skipped],
        "stopReason": stop_reason,
        "seconds": round(progress.elapsed(), 1),
        "out": str(args.out) if args.out is not None else None,
        "upload": uploaded,
    }
    print(json.dumps(summary), file=out, flush=True)
    if status != EXIT_OK:
        return status
    if upload.error is not None:
        return EXIT_REFUSED
    return EXIT_FAILED_POINTS if failures else EXIT_OK


# --- upload ---------------------------------------------------------------------------------------


def _upload(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measure upload", description="Upload records saved with --out."
    )
    parser.add_argument("file", type=Path, help="JSON Lines file of measurement records")
    parser.add_argument("--url", default=os.environ.get("OVERHEAD_URL"), help="service URL ($OVERHEAD_URL)")
    parser.add_argument(
        "--token", default=os.environ.get("OVERHEAD_TOKEN"), help="ingest token ($OVERHEAD_TOKEN)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="records per request (default 500)")
    args = parser.parse_args(argv)
    if not args.url or not args.token:
        parser.error("give --url and --token (or $OVERHEAD_URL and $OVERHEAD_TOKEN)")
    if not 1 <= args.batch_size <= 10_000:
        parser.error("--batch-size must be between 1 and 10000")
    try:
        records = read_jsonl(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    bad = []
    for number, record in enumerate(records, start=1):
        try:
            validate_record(record)
        except InputError as exc:
            bad.append(f"record {number}: {exc}")
    if bad:
        print("error: invalid records, nothing uploaded:\n  " + "\n  ".join(bad[:20]), file=err)
        return EXIT_USAGE
    with Uploader(
        args.url, args.token, batch_size=args.batch_size, log=lambda text: print(text, file=err, flush=True)
    ) as uploader:
        try:
            summary = uploader.upload(records)
        except (UploadFailed, UploadRejected) as exc:
            print(f"error: {exc}", file=err)
            return EXIT_REFUSED
    print(json.dumps({"records": len(records)} | summary.as_dict()), file=out, flush=True)
    return EXIT_OK


def _build(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measure build-guest",
        description="Build the touch guest (if not cached) and print its path.",
    )
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        print(build_guest(args.cache_dir), file=out)
    except GuestBuildError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    if args and args[0] == "upload":
        return _upload(args[1:], out, err)
    if args and args[0] == "build-guest":
        return _build(args[1:], out, err)
    if args and args[0] == "libvirt":
        from benchmarks.measure import libvirt_cli  # noqa: PLC0415 (it imports this module)

        return libvirt_cli.main(args[1:], out, err)
    if args and args[0] == "run":
        args = args[1:]
    return _run(args, out, err)
