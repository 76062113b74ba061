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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from benchmarks.measure.config import ACCELERATORS, BenchConfig, Point
from benchmarks.measure.guest import GuestBuildError, build_guest
from benchmarks.measure.host import HostFacts, host_facts
from benchmarks.measure.loop import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Progress,
    append_records,
    clock,
    finish_run,
    run_points,
)
from benchmarks.measure.plan import plan_run, require_outputs
from benchmarks.measure.records import build_record, default_run_id, sample_id
from benchmarks.measure.runner import (
    MIB,
    Measurement,
    OtherQemuRunning,
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
)
from overhead_service.calibration.records import validate_record
from overhead_service.errors import InputError

__all__ = ["Progress", "main"]


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


def _dry_run(planned: list[tuple[Point, int]], beyond: int, accelerator: str, out: TextIO) -> int:
    total = sum(predict_seconds(p, accelerator) for p, _ in planned)
    for point, rep in planned:
        print(f"{sample_id(point.name, rep)}\t~{predict_seconds(point, accelerator):.1f} s", file=out)
    print(
        f"{len(planned)} points ({beyond} beyond --max-points), about {clock(total)} with {accelerator}",
        file=out,
    )
    return EXIT_OK


def _run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    parser = _run_parser()
    args = parser.parse_args(argv)
    plan = plan_run(args, parser, err, one_domain=True)
    if plan is None:
        return EXIT_USAGE
    config, accelerator, planned = plan.config, plan.accelerator, plan.planned
    if args.dry_run:
        return _dry_run(planned, plan.beyond, accelerator, out)
    require_outputs(args, parser)
    try:
        guest = build_guest(args.cache_dir)
        runner = Runner(
            accelerator=accelerator, guest=guest, qemu=args.qemu, wait_other_qemu=args.wait_other_qemu
        )
    except (GuestBuildError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    with runner:
        try:
            runner.check_quiet()
        except OtherQemuRunning as exc:
            print(f"error: {exc}", file=err)
            return EXIT_REFUSED
        host = host_facts(accelerator, runner.qemu)
        date = datetime.now(UTC).strftime("%Y%m%d")
        run_id = args.run_id or default_run_id(config.name, accelerator, host.node, date)
        print(
            f"run {run_id}: {len(planned)} points with {accelerator} on {host.node} "
            f"(QEMU {host.qemu}, kernel {host.kernel}, guest {guest})",
            file=err,
            flush=True,
        )
        uploader = start_outputs(args.out, args.url, args.token, err, batch_size=args.batch_size)
        try:
            upload = PendingUpload(uploader, args.batch_size, err)
            return _measure_all(args, config, planned, runner, host, run_id, upload, out, err)
        finally:
            if uploader is not None:
                uploader.close()


def _measure_all(
    args: argparse.Namespace,
    config: BenchConfig,
    planned: list[tuple[Point, int]],
    runner: Runner,
    host: HostFacts,
    run_id: str,
    upload: PendingUpload,
    out: TextIO,
    err: TextIO,
) -> int:
    accelerator = runner.accelerator

    def measure(point: Point, rep: int, bound: float) -> tuple[list[dict[str, Any]], str]:
        measurement = runner.measure(point, rep, bound)
        return [build_record(measurement, host, run_id)], _describe(measurement)

    def keep(records: list[dict[str, Any]]) -> None:
        append_records(args.out, records)
        upload.add(records)

    outcome = run_points(
        planned,
        [predict_seconds(point, accelerator) for point, _ in planned],
        timeout_of=lambda point: config.point_timeout_seconds or default_timeout(point, accelerator),
        max_seconds=args.max_seconds,
        measure=measure,
        keep=keep,
        err=err,
    )
    return finish_run(outcome, config, run_id, upload, args.out, {"accelerator": accelerator}, out, err)


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
