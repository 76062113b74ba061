"""Speed of fitting a calibration table (the target: 10^6 samples in <= 2 s).

Synthetic qemu-scope measurements (fixed 38 MiB, 0.07 MiB/vCPU, 2.1 MiB/GiB, graphics +2.5 MiB,
σ = 0.3 MiB over 6 vCPU counts × 7 guest sizes × graphics) against ``kubevirt-v1.9.0``.  For each
size it times, median of ``--repeat`` runs:

* ``fit_arrays``: the whole fit from columns: design matrix, identifiability, NNLS, 5-fold
  cross-conformal margin, nested held-out coverage (25 more fits), draft table, engine self-check,
  in-sample evaluation;
* ``Sample→columns``: turning a list of :class:`Sample` objects into columns (what ``fit`` adds);
* ``fit(samples)``: the two together.

Generating the data is not timed.

    python -m benchmarks.bench_fit [--sizes 10000 100000 1000000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from overhead_service import calibration

ROOT = Path(__file__).resolve().parent.parent

Mi = 1 << 20
Gi = 1 << 30
TARGET_N = 1_000_000
TARGET_SECONDS = 2.0


def synthetic(n: int, seed: int) -> calibration.SampleArrays:
    rng = np.random.default_rng(seed)
    vcpus = rng.choice([1, 2, 4, 8, 16, 32], n)
    guest = rng.choice([1, 2, 4, 8, 16, 32, 64], n) * Gi
    graphics = rng.random(n) < 0.5
    overhead = 38 * Mi + 0.07 * Mi * vcpus + 2.1 * Mi * guest / Gi + 2.5 * Mi * graphics
    overhead += rng.normal(0, 0.3 * Mi, n)
    return calibration.SampleArrays.of(
        overhead_bytes=np.round(overhead).astype(np.int64),
        vcpus=vcpus,
        guest_memory_bytes=guest,
        graphics=graphics,
    )


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls (GC collected before each), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _measure_size(n: int, parent: dict[str, Any], options: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Fit ``n`` synthetic samples (columns in, and from Sample objects), print the row, return it."""
    arrays = synthetic(n, seed=n)
    samples = [arrays.sample(i, "qemu") for i in range(n)]
    fit_seconds, (_, report) = timed(partial(calibration.fit_arrays, arrays, parent, **options), repeat)
    convert_seconds, _ = timed(partial(calibration.SampleArrays.from_samples, samples, "qemu"), repeat)
    del samples
    total = fit_seconds + convert_seconds
    print(
        f"{n:>9,} | {fit_seconds:>12.3f} | {convert_seconds:>16.3f} | {total:>14.3f} | "
        f"{report.held_out['coverage']:>13.5f} | {report.margin_bytes / Mi:>10.3f}"
    )
    return {
        "samples": n,
        "fitArraysSeconds": round(fit_seconds, 4),
        "samplesToColumnsSeconds": round(convert_seconds, 4),
        "fitSamplesSeconds": round(total, 4),
        "heldOutCoverage": report.held_out["coverage"],
        "marginBytes": report.margin_bytes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    parent = json.loads((ROOT / "overhead_service/data/tables/kubevirt-v1.9.0.json").read_text())
    options: dict[str, Any] = {
        "hypervisor": "kvm",
        "arch": "amd64",
        "scope": "qemu",
        "new_id": "bench-fit",
        "requested_by": "bench",
    }
    calibration.fit_arrays(synthetic(1000, 0), parent, **options)  # warm-up: imports, caches

    print(
        f"fit benchmark — Python {platform.python_version()}, numpy {np.__version__}, median of {args.repeat}"
    )
    header = (
        f"{'samples':>9} | {'fit_arrays s':>12} | {'Sample→columns s':>16} | {'fit(samples) s':>14} | "
        f"{'held-out cov.':>13} | {'margin MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    results = [_measure_size(n, parent, options, args.repeat) for n in args.sizes]
    big = next((r for r in results if r["samples"] == TARGET_N), None)
    if big is not None:
        verdict = "met" if big["fitArraysSeconds"] <= TARGET_SECONDS else "MISSED"
        print(
            f"\ntarget: {TARGET_N:,} samples in <= {TARGET_SECONDS} s with fit_arrays (columns in): "
            f"{big['fitArraysSeconds']:.3f} s — {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
