"""Summarise libvirt-path records against bare-QEMU records of the same shapes (MiB).

    python -m benchmarks.measure.libvirt_summary benchmarks/measure/results/libvirt-grid-virtqemud.jsonl \\
        --bare benchmarks/measure/results/libvirt-grid-bare.jsonl \\
        --daemons benchmarks/measure/results/libvirt-grid-libvirtd.jsonl

Prints, as Markdown: the daemons (RSS, PSS, anon, kmem, anon + kmem of their own cgroup) by daemon
binary and number of domains, against KubeVirt's constants (virtqemud 40Mi, virtlogd 25Mi); QEMU
per shape, libvirt-launched vs bare (anon + kmem − touched, and RSS − touched); and least-squares
fits over the fully touched single-domain points with minimal devices, no VGA and no IOThread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np

from benchmarks.measure.upload import read_jsonl

__all__ = ["main"]

MIB: Final = 1024 * 1024
KUBEVIRT_MIB: Final = {"virtqemud": 40, "virtlogd": 25}  # GetMemoryOverhead's constants


def _shape(record: dict[str, Any]) -> str:
    vm = record["vm"]
    return (
        f"{vm['vcpus']} vCPU, {vm['guestMemoryBytes'] // MIB} MiB, "
        f"{'VGA' if vm['graphics'] else 'no VGA'}, io{vm['ioThreads']}, {vm.get('deviceSet', 'minimal')}"
    )


def _mean(values: Iterable[float]) -> float:
    return statistics.fmean(values)


def _mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def _daemon_rows(records: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["scope"] in KUBEVIRT_MIB:
            binary = record["libvirt"]["daemon"] if record["scope"] == "virtqemud" else "virtlogd"
            groups[(record["scope"], binary, record["libvirt"]["domains"])].append(record)
    rows = [
        "| component | binary | domains | n | RSS | PSS | anon | kmem | anon+kmem | threads | KubeVirt |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scope, binary, domains), group in sorted(groups.items()):
        raw = [r["raw"] for r in group]
        charged = [r["overheadBytes"] for r in group]
        rows.append(
            f"| {scope} | {binary} | {domains} | {len(group)} | {_mib(_mean(r['rss'] for r in raw))} | "
            f"{_mib(_mean(r['pss'] for r in raw))} | {_mib(_mean(r['cgroupAnon'] for r in raw))} | "
            f"{_mib(_mean(r['cgroupKernel'] for r in raw))} | "
            f"{_mib(_mean(charged))} (max {_mib(max(charged))}) | "
            f"{_mean(r['libvirt']['threads'] for r in group):.0f} | {KUBEVIRT_MIB[scope]} |"
        )
    return rows


def _single(record: dict[str, Any]) -> bool:
    """A fully touched QEMU alone under its daemon (or a bare one)."""
    return bool(
        record["scope"] == "qemu"
        and record.get("libvirt", {}).get("domains", 1) == 1
        and record["vm"].get("touchedShare", 1.0) >= 0.99
    )


def _qemu_by_shape(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    shapes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if _single(record):
            shapes[_shape(record)].append(record)
    return shapes


def _qemu_rows(libvirt: list[dict[str, Any]], bare: list[dict[str, Any]]) -> list[str]:
    launched, direct = _qemu_by_shape(libvirt), _qemu_by_shape(bare)
    rows = [
        "| shape | n | libvirt anon+kmem−touched | bare | Δ | libvirt RSS−touched | bare | Δ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in sorted(
        launched, key=lambda s: [int(p.split()[0]) if p.split()[0].isdigit() else 0 for p in s.split(", ")]
    ):
        lv = launched[shape]
        lv_over = _mean(r["overheadBytes"] for r in lv)
        lv_rss = _mean(r["raw"]["rss"] - r["guestTouchedBytes"] for r in lv)
        if shape in direct:
            b_over = _mean(r["overheadBytes"] for r in direct[shape])
            b_rss = _mean(r["raw"]["rss"] - r["guestTouchedBytes"] for r in direct[shape])
            rows.append(
                f"| {shape} | {len(lv)} | {_mib(lv_over)} | {_mib(b_over)} | {_mib(lv_over - b_over)} | "
                f"{_mib(lv_rss)} | {_mib(b_rss)} | {_mib(lv_rss - b_rss)} |"
            )
        else:
            rows.append(f"| {shape} | {len(lv)} | {_mib(lv_over)} | | | {_mib(lv_rss)} | | |")
    return rows


def _fit(records: list[dict[str, Any]], value: str) -> str:
    points = [
        r
        for r in records
        if _single(r)
        and r["vm"].get("deviceSet", "minimal") == "minimal"
        and not r["vm"]["graphics"]
        and r["vm"]["ioThreads"] == 0
    ]
    if len(points) < 4:
        return "too few points"
    x = np.array([[1.0, r["vm"]["vcpus"], r["vm"]["guestMemoryBytes"] / 1024**3] for r in points])
    if value == "overhead":
        y = np.array([r["overheadBytes"] / MIB for r in points])
    else:
        y = np.array([(r["raw"]["rss"] - r["guestTouchedBytes"]) / MIB for r in points])
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    rms = float(np.sqrt(np.mean((x @ coefficients - y) ** 2)))
    a, b, c = (float(v) for v in coefficients)
    return f"{a:.2f} + {b:.3f}·vCPUs + {c:.3f}·GiB (n={len(points)}, rms {rms:.2f})"


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure.libvirt_summary")
    parser.add_argument("libvirt", type=Path, help="libvirt-path records (JSON Lines)")
    parser.add_argument("--bare", type=Path, help="bare-QEMU records of the same shapes")
    parser.add_argument(
        "--daemons", type=Path, nargs="*", default=[], help="more libvirt-path records (daemons)"
    )
    args = parser.parse_args(argv)
    out = out or sys.stdout
    libvirt = read_jsonl(args.libvirt)
    bare = read_jsonl(args.bare) if args.bare else []
    extra = [record for path in args.daemons for record in read_jsonl(path)]
    print("## Daemons (MiB; anon, kmem: the daemon's own memory cgroup)\n", file=out)
    print("\n".join(_daemon_rows(libvirt + extra)), file=out)
    print("\n## QEMU per shape, one domain (MiB, means)\n", file=out)
    print("\n".join(_qemu_rows(libvirt, bare)), file=out)
    print("\n## Fits (minimal devices, no VGA, no IOThread; MiB, GiB = guest RAM)\n", file=out)
    for name, records in (("libvirt", libvirt), ("bare", bare)):
        if records:
            print(f"- {name}, anon + kmem − touched: {_fit(records, 'overhead')}", file=out)
            print(f"- {name}, RSS − touched: {_fit(records, 'rss')}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
