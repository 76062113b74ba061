"""The provisional mshv table: upstream's pod overhead, plus the driver's node-level deposits."""

from __future__ import annotations

import json

import pytest

from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import DATA

TABLE = "mshv-l1vh-provisional"
VECTORS = DATA / "vectors" / "kubevirt-v1.9.0.public.jsonl"
KI, MI, GI = 1024, 1024**2, 1024**3


@pytest.fixture(scope="module")
def service() -> OverheadService:
    return OverheadService(TableRegistry.builtin())


def _body(memory: str, cores: int) -> dict[str, object]:
    vmi = {"spec": {"domain": {"cpu": {"cores": cores}, "resources": {"requests": {"memory": memory}}}}}
    return {"vmi": vmi, "hypervisor": "mshv", "table": TABLE}


@pytest.mark.parametrize(
    ("memory", "cores", "guest"), [("1Gi", 1, GI), ("4Gi", 4, 4 * GI), ("16Gi", 16, 16 * GI)]
)
def test_node_overhead_follows_the_driver_constants(
    service: OverheadService, memory: str, cores: int, guest: int
) -> None:
    answer = service.compute(_body(memory, cores))
    # 208 pages at partition creation, 90 pages per VP, 8 bytes per 4 KiB page for the PFN array
    # and the same again for 4 KiB SLAT mappings.
    expected = {
        "hvPartition": 208 * 4 * KI,
        "hvVcpus": cores * 90 * 4 * KI,
        "pfnArray": guest // 512,
        "slat": guest // 512,
    }
    assert {c["name"]: c["bytes"] for c in answer["nodeComponents"]} == expected
    assert answer["nodeOverhead"]["bytes"] == sum(expected.values())
    assert answer["table"] == {"id": TABLE, "provisional": True}


def test_node_overhead_is_left_out_of_the_pod_and_the_ratio(service: OverheadService) -> None:
    plain = service.compute(_body("2Gi", 2))
    ratio = {**_body("2Gi", 2), "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "2"}}
    doubled = service.compute(ratio)
    assert doubled["nodeOverhead"] == plain["nodeOverhead"]
    assert doubled["overhead"]["bytes"] > plain["overhead"]["bytes"]


def test_pod_overhead_is_upstreams(service: OverheadService) -> None:
    """Parity: the pod part equals KubeVirt v1.9.0's mshv answer for every vector."""
    checked = 0
    for line in VECTORS.read_text().splitlines():
        case = json.loads(line)
        given = case["input"]
        if given["additionalOverheadRatio"] is not None or "kubevirtConfiguration" in given:
            continue
        body = {"vmi": given["vmi"], "cpuArch": given["cpuArch"], "hypervisor": "mshv", "table": TABLE}
        answer = service.compute(body)
        assert answer["overhead"] == case["expected_mshv"], case["id"]
        checked += 1
    assert checked > 100


def test_it_has_no_kvm_model(service: OverheadService) -> None:
    assert TableRegistry.builtin().get(TABLE).model_for("kvm", "amd64") is None


def test_it_is_not_the_default(service: OverheadService) -> None:
    answer = service.compute({"vmi": {}, "hypervisor": "mshv"})
    assert answer["table"]["id"] == "kubevirt-v1.9.0"
    assert answer["nodeOverhead"]["bytes"] == 0
