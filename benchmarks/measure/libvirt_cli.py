"""``python -m benchmarks.measure libvirt``: the libvirt path (QEMU started by a private
virtqemud or libvirtd, with virtlogd), measured point by point, uploaded and/or written as JSON Lines.

    python -m benchmarks.measure libvirt --config benchmarks/measure/libvirt-smoke.yaml --out s.jsonl
    python -m benchmarks.measure libvirt --config benchmarks/measure/libvirt-grid.yaml --daemon virtqemud \\
        --url http://svc:8080 --token T --out benchmarks/measure/results/libvirt-grid.jsonl --max-seconds 3600

The records (:func:`benchmarks.measure.records.build_libvirt_records`) go to ``--out`` and/or to
``POST /v1/measurements`` at ``--url`` (``$OVERHEAD_URL``, token ``$OVERHEAD_TOKEN``). Each point's
records are appended to ``--out`` in one write once the point is measured and torn down, and
uploaded in requests of whole points (:class:`~benchmarks.measure.upload.PendingUpload`), so an
interrupted run or a failed upload leaves only whole points, in the file and in the service; after
an upload error the run goes on writing ``--out`` (or a rescue file) for ``python -m
benchmarks.measure upload``. SIGINT and SIGTERM stop the run after tearing the current point down
(exit 130). Exit status as for the bare path: 0 all measured (and uploaded), 1 some points failed,
2 bad usage, config or libvirt (missing, too old, daemon not built), 3 refused to measure or the
upload failed or was rejected, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from benchmarks.measure.cgroups import CgroupError
from benchmarks.measure.config import ACCELERATORS, BenchConfig, Point
from benchmarks.measure.guest import GuestBuildError, build_guest
from benchmarks.measure.host import HostFacts, host_facts
from benchmarks.measure.libvirt_install import DAEMONS, LibvirtUnavailable, find_install
from benchmarks.measure.libvirt_runner import (
    LibvirtMeasurement,
    LibvirtRunner,
    libvirt_timeout,
    predict_libvirt_seconds,
)
from benchmarks.measure.loop import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    append_records,
    clock,
    finish_run,
    run_points,
)
from benchmarks.measure.plan import plan_run, require_outputs
from benchmarks.measure.records import build_libvirt_records, default_run_id, sample_id
from benchmarks.measure.runner import MIB, OtherQemuRunning
from benchmarks.measure.upload import PendingUpload, start_outputs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measure libvirt",
        description="Start QEMU through private libvirt daemons (as KubeVirt's virt-launcher does) and "
        "measure QEMU, the daemon and virtlogd; write JSON Lines records.",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML or JSON shape matrix")
    parser.add_argument("--out", type=Path, help="the JSON Lines file of records (replaced)")
    parser.add_argument("--url", default=os.environ.get("OVERHEAD_URL"), help="service URL ($OVERHEAD_URL)")
    parser.add_argument(
        "--token", default=os.environ.get("OVERHEAD_TOKEN"), help="ingest token ($OVERHEAD_TOKEN)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="records per upload request (default 100; a point's records are never split)",
    )
    parser.add_argument(
        "--daemon", choices=DAEMONS, default="auto", help="default auto: a built virtqemud, else libvirtd"
    )
    parser.add_argument("--libvirt-build-dir", type=Path, help="where make libvirt-virtqemud put virtqemud")
    parser.add_argument("--run-id", help="default: <config>-<accelerator>-<host>-<YYYYMMDD>")
    parser.add_argument("--max-points", type=int, help="measure at most this many (point, repetition) pairs")
    parser.add_argument("--max-seconds", type=float, help="stop before a point that would end after this")
    parser.add_argument("--repetitions", type=int, help="override the config's repetitions")
    parser.add_argument("--accelerator", choices=ACCELERATORS, help="override the config's accelerator")
    parser.add_argument("--cache-dir", type=Path, help="where the guest is built (default ~/.cache/...)")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="the QEMU binary libvirt runs")
    parser.add_argument("--wait-other-qemu", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--dry-run", action="store_true", help="list the schedule and its predicted time")
    return parser


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does (the current point is torn down first)."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dry_run(planned: list[tuple[Point, int]], accelerator: str, out: TextIO) -> int:
    for point, rep in planned:
        print(f"{sample_id(point.name, rep)}\t~{predict_libvirt_seconds(point, accelerator):.1f} s", file=out)
    total = sum(predict_libvirt_seconds(p, accelerator) for p, _ in planned)
    print(f"{len(planned)} points, about {clock(total)} with {accelerator}", file=out)
    return EXIT_OK


def main(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    plan = plan_run(args, parser, err, one_domain=False)
    if plan is None:
        return EXIT_USAGE
    config, accelerator, planned = plan.config, plan.accelerator, plan.planned
    if args.dry_run:
        return _dry_run(planned, accelerator, out)
    require_outputs(args, parser)
    try:
        install = find_install(args.daemon, args.libvirt_build_dir)
        runner = LibvirtRunner(
            accelerator=accelerator,
            guest=build_guest(args.cache_dir),
            install=install,
            qemu=args.qemu,
            wait_other_qemu=args.wait_other_qemu,
        )
    except (LibvirtUnavailable, GuestBuildError, FileNotFoundError, CgroupError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    with runner, _sigterm_interrupts():
        try:
            runner.check_quiet()
        except OtherQemuRunning as exc:
            print(f"error: {exc}", file=err)
            return EXIT_REFUSED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        host = host_facts(accelerator, runner.qemu)
        date = datetime.now(UTC).strftime("%Y%m%d")
        run_id = args.run_id or default_run_id(config.name, accelerator, host.node, date)
        print(
            f"run {run_id}: {len(planned)} points with {accelerator} on {host.node}: {install.daemon} "
            f"({install.build}, libvirt {install.version_text}), QEMU {host.qemu}",
            file=err,
            flush=True,
        )
        uploader = start_outputs(args.out, args.url, args.token, err)
        try:
            upload = PendingUpload(uploader, args.batch_size, err)
            return _measure_all(args, config, planned, runner, host, run_id, upload, out, err)
        finally:
            if uploader is not None:
                uploader.close()


def _describe(m: LibvirtMeasurement) -> str:
    qemu = ", ".join(
        f"QEMU{d.index} {(d.cgroup.anon + d.cgroup.kernel - (d.serial.touched_mib or 0) * MIB) / MIB:.1f}"
        for d in m.domains
    )
    daemon = m.daemon.cgroup.anon + m.daemon.cgroup.kernel
    logd = m.virtlogd.cgroup.anon + m.virtlogd.cgroup.kernel
    return (
        f"{m.seconds:.1f} s, overhead MiB (anon+kmem-touched): {qemu}; {m.install.daemon} "
        f"{daemon / MIB:.1f} (rss {m.daemon.process.rss / MIB:.1f}), virtlogd {logd / MIB:.1f} "
        f"(rss {m.virtlogd.process.rss / MIB:.1f})"
    )


def _measure_all(
    args: argparse.Namespace,
    config: BenchConfig,
    planned: list[tuple[Point, int]],
    runner: LibvirtRunner,
    host: HostFacts,
    run_id: str,
    upload: PendingUpload,
    out: TextIO,
    err: TextIO,
) -> int:
    accelerator = runner.accelerator

    def measure(point: Point, rep: int, bound: float) -> tuple[list[dict[str, Any]], str]:
        measurement = runner.measure(point, rep, bound)
        return build_libvirt_records(measurement, host, run_id), _describe(measurement)

    def keep(records: list[dict[str, Any]]) -> None:
        append_records(args.out, records)
        upload.add(records)

    outcome = run_points(
        planned,
        [predict_libvirt_seconds(point, accelerator) for point, _ in planned],
        timeout_of=lambda point: config.point_timeout_seconds or libvirt_timeout(point),
        max_seconds=args.max_seconds,
        measure=measure,
        keep=keep,
        err=err,
    )
    facts = {
        "accelerator": accelerator,
        "daemon": runner.install.daemon,
        "libvirt": runner.install.version_text,
    }
    return finish_run(outcome, config, run_id, upload, args.out, facts, out, err)
