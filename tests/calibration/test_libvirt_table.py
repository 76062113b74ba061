"""The kvm table fitted from the libvirt path (QEMU started by virtqemud, with virtlogd), shipped built
in and inactive: its raw records, its provenance, its coverage, and how it compares with upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overhead_service import calibration
from overhead_service.calibration.records import validate_batch
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import ROOT

TABLE = "kvm-libvirt-measured-pvm-2026-12"
RECORDS = ROOT / "overhead_service" / "data" / "measurements" / "kvm-amd64-pvm-libvirt-2026-12-04.jsonl"
SCOPES = ("qemu", "virtqemud", "virtlogd")
MIB = 1024**2


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDS.read_text().splitlines()]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return TableRegistry.builtin().document(TABLE)


def _samples(records: list[dict[str, Any]], scope: str) -> list[calibration.Sample]:
    return [calibration.sample_from_record(r) for r in records if r["scope"] == scope]


def test_the_raw_records_ship_valid_and_are_what_kubevirt_runs(records: list[dict[str, Any]]) -> None:
    assert len(validate_batch(records)) == len(records)
    assert len({(r["runId"], r["sampleId"]) for r in records}) == len(records)
    counts = {scope: sum(r["scope"] == scope for r in records) for scope in SCOPES}
    assert counts["qemu"] == counts["virtqemud"] == counts["virtlogd"] >= 250
    for record in records:
        # libvirt-launched, one domain per daemon (as in a virt-launcher pod), the modular daemon
        assert record["launcher"] == "libvirt" and record["libvirt"]["domains"] == 1
        assert record["libvirt"]["daemon"] == "virtqemud" and record["host"]["accelerator"] == "kvm"
        assert record["vm"]["vcpusOnline"] is True


def test_provenance_says_what_is_measured_and_what_is_not(
    document: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    provenance = document["provenance"]
    assert document["builtin"] is True and provenance["measured"] is True
    assert provenance["samples"] == len(records) and provenance["scope"] == list(SCOPES)
    assert provenance["records"] == str(RECORDS.relative_to(ROOT))
    assert set(provenance["measuredComponents"]) >= {"qemu", "virtqemud", "virtlogd", "pagetables", "vcpus"}
    unmeasured = provenance["unmeasured"]
    assert set(unmeasured) == {"virtLauncher", "virtLauncherMonitor"}
    assert all("not measured" in why for why in unmeasured.values())
    assert provenance["libvirt"] and provenance["qemu"] and "kvm_pvm" in provenance["machine"]
    assert document["fit"]["launcher"] == "libvirt"


def test_held_out_coverage_meets_the_target_in_every_scope(document: dict[str, Any]) -> None:
    fit = document["fit"]
    assert fit["target"] == 0.995
    held = fit["heldOut"]
    assert held["coverage"] >= 0.995 and held["meetsTarget"] is True
    for scope in SCOPES:
        assert held["perScope"][scope]["coverage"] >= 0.995, scope
    assert document["provenance"]["heldOutCoverage"] == held["coverage"]


def test_it_covers_its_records_and_over_provisions_far_less_than_upstream(
    document: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    upstream = TableRegistry.builtin().document("kubevirt-v1.9.0")
    for scope in SCOPES:
        samples = _samples(records, scope)
        ours = calibration.evaluate_table(document, samples, hypervisor="kvm", arch="amd64", scope=scope)
        theirs = calibration.evaluate_table(upstream, samples, hypervisor="kvm", arch="amd64", scope=scope)
        assert ours["coverage"] >= 0.99 and theirs["coverage"] == 1.0, scope
        median, upstream_median = (e["overProvisioning"]["bytes"]["p50"] for e in (ours, theirs))
        assert 0 <= median < upstream_median / 3, scope


def test_the_daemons_are_far_below_upstreams_constants(document: dict[str, Any]) -> None:
    model = next(m for m in document["models"] if (m["hypervisor"], m.get("arch")) == ("kvm", "amd64"))
    components = {c["name"]: c for c in model["components"]}
    assert int(components["virtqemud"]["quantity"]) < 12 * MIB  # upstream: 40Mi
    assert int(components["virtlogd"]["quantity"]) < 4 * MIB  # upstream: 25Mi
    # The unmeasured processes keep upstream's constants.
    assert components["virtLauncher"]["quantity"] == "100Mi"
    assert components["virtLauncherMonitor"]["quantity"] == "25Mi"


def test_it_is_not_active_by_default() -> None:
    service = OverheadService(TableRegistry.builtin())
    vmi = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}}}
    default = service.compute({"vmi": vmi})
    assert default["table"]["id"] == "kubevirt-v1.9.0"
    measured = service.compute({"vmi": vmi, "table": TABLE})
    assert measured["table"] == {"id": TABLE, "provisional": False}
    by_name = {c["name"]: c["bytes"] for c in measured["components"]}
    upstream = {c["name"]: c["bytes"] for c in default["components"]}
    assert (
        by_name["virtLauncher"] == upstream["virtLauncher"] and by_name["virtqemud"] < upstream["virtqemud"]
    )
    assert measured["overhead"]["bytes"] < default["overhead"]["bytes"]
