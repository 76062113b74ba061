"""The kvm table measured on this project's machine, shipped built in (not active)."""

from __future__ import annotations

import json

import pytest

from overhead_service import calibration
from overhead_service.calibration.records import validate_batch
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import ROOT

TABLE = "kvm-measured-pvm-2026-11"
DATA = ROOT / "overhead_service" / "data" / "measurements"
RECORDS = DATA / "kvm-amd64-pvm-2026-11-26.jsonl"
MIB = 1024**2


@pytest.fixture(scope="module")
def records() -> list[dict[str, object]]:
    return [json.loads(line) for line in RECORDS.read_text().splitlines()]


def test_the_raw_measurements_ship_and_are_valid(records: list[dict[str, object]]) -> None:
    assert len(validate_batch(records)) == len(records) >= 124
    assert {r["host"]["accelerator"] for r in records} == {"kvm"}  # type: ignore[index]
    assert len({(r["runId"], r["sampleId"]) for r in records}) == len(records)
    assert all(r["vm"]["vcpusOnline"] for r in records)  # type: ignore[index]


def test_provenance_says_where_it_comes_from(records: list[dict[str, object]]) -> None:
    document = TableRegistry.builtin().document(TABLE)
    provenance = document["provenance"]
    assert provenance["measured"] is True and provenance["accelerator"] == "kvm"
    assert provenance["samples"] == len(records)
    assert provenance["qemu"] and provenance["kernel"] and "kvm_pvm" in provenance["machine"]
    assert provenance["heldOutCoverage"] >= provenance["target"]
    assert document["fit"]["heldOut"]["coverage"] == provenance["heldOutCoverage"]


def test_it_covers_its_measurements_far_more_tightly_than_upstream(records: list[dict[str, object]]) -> None:
    registry = TableRegistry.builtin()
    samples = [calibration.sample_from_record(r) for r in records]
    measured = calibration.evaluate_table(
        registry.document(TABLE), samples, hypervisor="kvm", arch="amd64", scope="qemu"
    )
    upstream = calibration.evaluate_table(
        registry.document("kubevirt-v1.9.0"), samples, hypervisor="kvm", arch="amd64", scope="qemu"
    )
    assert measured["coverage"] >= 0.99
    assert measured["overProvisioning"]["bytes"]["p50"] < 10 * MIB
    assert upstream["overProvisioning"]["bytes"]["p50"] > 5 * measured["overProvisioning"]["bytes"]["p50"]


def test_it_is_not_active_by_default() -> None:
    service = OverheadService(TableRegistry.builtin())
    vmi = {"spec": {"domain": {"resources": {"requests": {"memory": "4Gi"}}}}}
    assert service.compute({"vmi": vmi})["table"]["id"] == "kubevirt-v1.9.0"
    measured = service.compute({"vmi": vmi, "table": TABLE})
    assert measured["table"] == {"id": TABLE, "provisional": False}
    names = [c["name"] for c in measured["components"]]
    # The fitted qemu-scope terms replace upstream's; the per-process constants stay upstream's.
    assert names[:2] == ["pagetables", "virtLauncherMonitor"]
    assert measured["overhead"]["bytes"] < service.compute({"vmi": vmi})["overhead"]["bytes"]
