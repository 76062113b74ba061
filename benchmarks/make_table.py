"""Fit a built-in table from measurement records (JSON Lines) and write it with its provenance.

    python -m benchmarks.make_table RECORDS.jsonl --id ID --out overhead_service/data/tables/ID.json \\
        [--parent kubevirt-v1.9.0] [--hypervisor kvm --arch amd64 --scope qemu] [--target 0.99] \\
        [--machine "what the host was"]

The fit is the service's own (:func:`overhead_service.calibration.fit`, held-out coverage included);
this script only adds what a shipped table must say about itself: the machine class, the QEMU and
kernel versions, the accelerator, the sample count, the held-out coverage, and where the raw
records are.  The table is marked built-in and stays inactive until an operator activates it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from overhead_service import calibration
from overhead_service.calibration.records import validate_record
from overhead_service.model.tables import TableRegistry, compile_table


def main() -> int:
    args = _parser().parse_args()
    chosen = _chosen_records(args.records, args.hypervisor, args.arch, args.scope)
    accelerator, host_facts = _host_facts(chosen)
    parent = TableRegistry.builtin().document(args.parent)
    document, report = calibration.fit(
        [calibration.sample_from_record(r) for r in chosen],
        parent,
        hypervisor=args.hypervisor,
        arch=args.arch,
        scope=args.scope,
        target=args.target,
        new_id=args.id,
        requested_by="benchmarks/make_table.py",
        host_facts=host_facts,
    )
    fit: dict[str, Any] = document["fit"]
    _describe(document, args, len(chosen), accelerator, host_facts)
    compile_table(document)  # a shipped table must load
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    summary = {k: document["provenance"][k] for k in ("samples", "heldOutCoverage", "accelerator", "qemu")}
    print(json.dumps({"id": args.id, **summary, "warnings": fit.get("warnings", [])}, indent=2))
    print(json.dumps(report.to_json().get("components", fit.get("components")), indent=2)[:4000])
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("records", type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parent", default="kubevirt-v1.9.0")
    parser.add_argument("--hypervisor", default="kvm")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--scope", default="qemu")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--machine", default="")
    parser.add_argument("--title", default="")
    return parser


def _chosen_records(path: Path, hypervisor: str, arch: str, scope: str) -> list[dict[str, Any]]:
    """The file's records (each validated) of ``hypervisor``, ``arch`` and ``scope``."""
    records = [validate_record(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if (r["hypervisor"], r["arch"], r["scope"]) == (hypervisor, arch, scope)]


def _host_facts(records: list[dict[str, Any]]) -> tuple[str, dict[str, list[str]]]:
    """The records' one accelerator, and every value each host field takes, sorted."""
    accelerators = {r["host"]["accelerator"] for r in records}
    if len(accelerators) != 1:
        raise SystemExit(f"one accelerator per fit, got {sorted(accelerators)}")
    facts: dict[str, set[str]] = {}
    for r in records:
        for key, value in r["host"].items():
            facts.setdefault(key, set()).add(str(value))
    return accelerators.pop(), {key: sorted(values) for key, values in sorted(facts.items())}


def _describe(
    document: dict[str, Any],
    args: argparse.Namespace,
    samples: int,
    accelerator: str,
    host_facts: dict[str, list[str]],
) -> None:
    """Mark the fitted ``document`` built-in and add what a shipped table says about itself."""
    document["builtin"] = True
    document["title"] = args.title or f"{args.hypervisor}/{args.arch} measured ({args.scope} scope)"
    document["description"] = (
        f"Fitted from {samples} measurements of real QEMU guests ({args.scope} scope) on top of "
        f"{args.parent}; components the measurements do not cover keep {args.parent}'s constants. "
        "Not active by default."
    )
    document["provenance"] = {
        **document.get("provenance", {}),
        "kind": "measured",
        "measured": True,
        "machine": args.machine,
        "qemu": host_facts.get("qemu", []),
        "kernel": host_facts.get("kernel", []),
        "accelerator": accelerator,
        "cpuModel": host_facts.get("cpuModel", []),
        "samples": samples,
        "heldOutCoverage": document["fit"]["heldOut"]["coverage"],
        "target": args.target,
        "records": str(args.records),
        "benchmark": "python -m benchmarks.measure (benchmarks/measure/), then benchmarks/make_table.py",
    }


if __name__ == "__main__":
    raise SystemExit(main())
