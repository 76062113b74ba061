"""Fit a built-in table from measurement records (JSON Lines) and write it with its provenance.

    python -m benchmarks.make_table RECORDS.jsonl [MORE.jsonl ...] --id ID \\
        --out overhead_service/data/tables/ID.json [--parent kubevirt-v1.9.0] \\
        [--hypervisor kvm --arch amd64] [--scope qemu [--scope virtqemud ...]] [--target 0.99] \\
        [--launcher libvirt] [--domains 1] [--daemon virtqemud] [--records-out FILE.jsonl] \\
        [--unmeasured 'virtLauncher=why'] [--machine "what the host was"]

The fit is the service's own (:func:`overhead_service.calibration.fit`, held-out coverage included;
several ``--scope`` are fitted together); this script only chooses the records and adds what a
shipped table must say about itself: the machine class, the QEMU, libvirt and kernel versions, the
accelerator, the sample count, the held-out coverage, which components were measured and which keep
the parent's constants (and why: ``--unmeasured``), and where the raw records are.

Which records: those of (hypervisor, arch) in the scopes; ``--launcher`` keeps only the qemu records
started so; ``--domains`` and ``--daemon`` keep only libvirt-path records of daemons that ran that
many domains (KubeVirt runs one per virt-launcher) with that binary.  ``--records-out`` writes
exactly the records fitted (the raw records to ship with the table).  The table is marked built-in
and stays inactive until an operator activates it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overhead_service import calibration
from overhead_service.calibration.records import validate_record
from overhead_service.model.tables import TableRegistry, compile_table


def main() -> int:
    args = _parser().parse_args()
    scopes = calibration.check_scopes(args.scope or ["qemu"])
    reasons = dict(item.split("=", 1) for item in args.unmeasured)
    chosen = _chosen(_read_records(args.records), args, scopes)
    accelerator, host_facts = _host_facts(chosen)
    parent = TableRegistry.builtin().document(args.parent)
    document, report = calibration.fit(
        [calibration.sample_from_record(r) for r in chosen],
        parent,
        hypervisor=args.hypervisor,
        arch=args.arch,
        scope=scopes[0] if len(scopes) == 1 else list(scopes),
        target=args.target,
        new_id=args.id,
        requested_by="benchmarks/make_table.py",
        host_facts=host_facts,
        launcher=args.launcher,
    )
    fit: dict[str, Any] = document["fit"]
    _describe(document, args, chosen, scopes, accelerator, host_facts, reasons)
    compile_table(document)  # a shipped table must load
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    if args.records_out is not None:
        args.records_out.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in chosen))
    summary = {k: document["provenance"][k] for k in ("samples", "heldOutCoverage", "accelerator", "qemu")}
    per_scope = {scope: part["coverage"] for scope, part in fit["heldOut"].get("perScope", {}).items()}
    shown = {"id": args.id, **summary, "perScope": per_scope, "warnings": fit.get("warnings", [])}
    print(json.dumps(shown, indent=2))
    print(json.dumps(report.to_json().get("components", fit.get("components")), indent=2)[:6000])
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("records", type=Path, nargs="+")
    parser.add_argument("--id", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parent", default="kubevirt-v1.9.0")
    parser.add_argument("--hypervisor", default="kvm")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--scope", action="append", help="repeat for several (default qemu)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--launcher", choices=("direct", "libvirt"), help="only qemu records started so")
    parser.add_argument("--domains", type=int, help="only libvirt records of daemons that ran this many")
    parser.add_argument("--daemon", choices=("virtqemud", "libvirtd"), help="only libvirt records of it")
    parser.add_argument("--records-out", type=Path, help="write the records fitted here (JSON Lines)")
    parser.add_argument("--unmeasured", action="append", default=[], metavar="COMPONENT=WHY")
    parser.add_argument("--machine", default="")
    parser.add_argument("--title", default="")
    return parser


def _read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record of the files, each validated by the service's own definition."""
    return [
        validate_record(json.loads(line))
        for path in paths
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def _chosen(
    records: list[dict[str, Any]], args: argparse.Namespace, scopes: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The records the fit uses (see the module docstring)."""

    def keep(record: dict[str, Any]) -> bool:
        if (record["hypervisor"], record["arch"]) != (args.hypervisor, args.arch) or record[
            "scope"
        ] not in scopes:
            return False
        if (
            args.launcher is not None
            and record["scope"] == "qemu"
            and record.get("launcher", "direct") != args.launcher
        ):
            return False
        libvirt = record.get("libvirt")
        if args.domains is not None and (libvirt is None or libvirt["domains"] != args.domains):
            return False
        return args.daemon is None or (libvirt is not None and libvirt["daemon"] == args.daemon)

    return [record for record in records if keep(record)]


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


def _components(fit: Mapping[str, Any], reasons: Mapping[str, str]) -> dict[str, Any]:
    """Which components the measurements fitted, and which keep the parent's constants (and why)."""
    fitted = sorted({entry["component"] for entry in fit["components"] if entry["status"] == "fitted"})
    kept = [entry["component"] for entry in fit["components"] if entry["component"] not in fitted]
    return {
        "measuredComponents": fitted,
        "parentComponents": {
            name: reasons.get(name, "not identified by these measurements") for name in dict.fromkeys(kept)
        },
        **({"unmeasured": dict(reasons)} if reasons else {}),
    }


def _describe(
    document: dict[str, Any],
    args: argparse.Namespace,
    chosen: list[dict[str, Any]],
    scopes: tuple[str, ...],
    accelerator: str,
    host_facts: dict[str, list[str]],
    reasons: Mapping[str, str],
) -> None:
    """Mark the fitted ``document`` built-in and add what a shipped table says about itself."""
    label = "+".join(scopes)
    document["builtin"] = True
    document["title"] = args.title or f"{args.hypervisor}/{args.arch} measured ({label} scope)"
    launched = (
        "QEMU started by libvirt, with its daemons" if args.launcher == "libvirt" else "real QEMU guests"
    )
    document["description"] = (
        f"Fitted from {len(chosen)} measurements of {launched} ({label}) on top of {args.parent}; "
        f"components the measurements do not cover keep {args.parent}'s constants. Not active by default."
    )
    records_file = args.records_out or (args.records[0] if len(args.records) == 1 else None)
    document["provenance"] = {
        **document.get("provenance", {}),
        "kind": "measured",
        "measured": True,
        "machine": args.machine,
        "qemu": host_facts.get("qemu", []),
        **({"libvirt": host_facts["libvirt"]} if "libvirt" in host_facts else {}),
        "kernel": host_facts.get("kernel", []),
        "accelerator": accelerator,
        "cpuModel": host_facts.get("cpuModel", []),
        "samples": len(chosen),
        "heldOutCoverage": document["fit"]["heldOut"]["coverage"],
        "target": args.target,
        **_components(document["fit"], reasons),
        "runs": sorted({r["runId"] for r in chosen}),
        "records": str(records_file),
        "benchmark": "python -m benchmarks.measure (benchmarks/measure/), then benchmarks/make_table.py",
    }


if __name__ == "__main__":
    raise SystemExit(main())
