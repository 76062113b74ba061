"""``warnings`` over HTTP: in every overhead, batch-item and render answer, each code reachable, and
what KubeVirt refuses answered as a ``rejected-by-kubevirt`` problem by render."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from overhead_service.errors import PROBLEM_BASE
from overhead_service.model.warnings import CODES
from tests.support import ROOT


def domain(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}, "devices": {}}
    base.update(parts)
    return {"metadata": {"name": "vm", "namespace": "default"}, "spec": {"domain": base}}


HUGEPAGES = domain(resources={}, memory={"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}})
VFIO = {"hostDevices": [{"name": "d", "deviceName": "example.com/nic"}]}

# code -> (endpoint, body, path): one request that gets each code.
REACH: dict[str, tuple[str, dict[str, Any], str]] = {
    "provisional-model": ("/v1/overhead", {"vmi": domain(), "hypervisor": "mshv"}, "table"),
    "no-launcher-headroom": (
        "/v1/overhead",
        {"vmi": domain(resources={"requests": {"memory": "4Gi"}, "limits": {"memory": "4Gi"}})},
        "vmi.spec.domain.resources.limits.memory",
    ),
    "negative-added-overhead": (
        "/v1/overhead",
        {"vmi": domain(memory={"reservedOverhead": {"addedOverhead": "-1Mi"}})},
        "vmi.spec.domain.memory.reservedOverhead.addedOverhead",
    ),
    "overhead-ratio-below-one": (
        "/v1/overhead",
        {"vmi": domain(), "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "0.9"}},
        "kubevirtConfiguration.additionalGuestMemoryOverheadRatio",
    ),
    "request-below-guest-memory": (
        "/v1/render",
        {
            "vmi": domain(resources={}, memory={"guest": "2Gi"}),
            "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": 200}},
        },
        "kubevirtConfiguration.developerConfiguration.memoryOvercommit",
    ),
    "mshv-memlock-required-ignored": (
        "/v1/overhead",
        {"vmi": domain(memory={"reservedOverhead": {"memLock": "Required"}}), "hypervisor": "mshv"},
        "vmi.spec.domain.memory.reservedOverhead.memLock",
    ),
    "added-overhead-in-memlock": (
        "/v1/overhead",
        {"vmi": domain(devices=VFIO, memory={"reservedOverhead": {"addedOverhead": "64Mi"}})},
        "vmi.spec.domain.memory.reservedOverhead.addedOverhead",
    ),
    "rejected-by-kubevirt": (
        "/v1/overhead",
        {"vmi": domain(resources={"requests": {"memory": "-1Gi"}})},
        "vmi.spec.domain.resources.requests.memory",
    ),
    "shared-quantity-double-overhead": (
        "/v1/render",
        {"vmi": domain(resources={"limits": {"memory": "2.5Gi"}})},
        "vmi.spec.domain.resources.limits.memory",
    ),
    "hugepages-memory-overcommit": (
        "/v1/render",
        {"vmi": HUGEPAGES, "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": 150}}},
        "kubevirtConfiguration.developerConfiguration.memoryOvercommit",
    ),
}


def test_every_code_is_reached_and_in_the_contract() -> None:
    assert set(REACH) == set(CODES)
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    assert document["components"]["schemas"]["Warning"]["properties"]["code"]["enum"] == list(CODES)


@pytest.mark.parametrize("code", list(REACH))
def test_each_code_over_http(client: FlaskClient, code: str) -> None:
    endpoint, body, path = REACH[code]
    response = client.post(endpoint, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = [w for w in response.get_json()["warnings"] if w["code"] == code]
    assert len(found) == 1
    assert found[0]["path"] == path and len(found[0]["message"]) > 40


def test_answers_without_anything_to_say_have_an_empty_list(client: FlaskClient) -> None:
    for endpoint in ("/v1/overhead", "/v1/render"):
        assert client.post(endpoint, json={"vmi": domain()}).get_json()["warnings"] == []


def test_batch_items_carry_their_own_warnings(client: FlaskClient) -> None:
    items = [{"vmi": domain()}, REACH["provisional-model"][1], {"vmi": 5}]
    answer = client.post("/v1/overhead/batch", json={"items": items}).get_json()["items"]
    assert answer[0]["warnings"] == []
    assert [w["code"] for w in answer[1]["warnings"]] == ["provisional-model"]
    assert "warnings" not in answer[2] and answer[2]["status"] == 422


@pytest.mark.parametrize(
    ("resources", "path"),
    [
        ({"requests": {"memory": "-1Gi"}}, "vmi.spec.domain.resources.requests.memory"),
        ({"requests": {"memory": "1Gi"}, "limits": {"cpu": "-1"}}, "vmi.spec.domain.resources.limits.cpu"),
    ],
)
def test_render_refuses_what_admission_refuses(
    client: FlaskClient, resources: dict[str, Any], path: str
) -> None:
    response = client.post("/v1/render", json={"vmi": domain(resources=resources)})
    assert response.status_code == 422
    problem = response.get_json(force=True)
    assert problem["type"] == PROBLEM_BASE + "rejected-by-kubevirt"
    assert problem["errors"][0]["path"] == path


def test_render_refuses_a_negative_cpu_allocation_ratio(client: FlaskClient) -> None:
    config = {"developerConfiguration": {"cpuAllocationRatio": -1}}
    response = client.post("/v1/render", json={"vmi": domain(), "kubevirtConfiguration": config})
    assert response.status_code == 422
    problem = response.get_json(force=True)
    assert problem["type"] == PROBLEM_BASE + "rejected-by-kubevirt"
    assert problem["errors"][0]["path"] == "kubevirtConfiguration.developerConfiguration.cpuAllocationRatio"
    assert "last valid" in problem["errors"][0]["message"]


def test_a_zero_memory_overcommit_is_the_default_now(client: FlaskClient) -> None:
    body = {"vmi": domain(), "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": 0}}}
    zero = client.post("/v1/render", json=body)
    assert zero.status_code == 200
    assert (
        zero.get_json()["resources"]
        == client.post("/v1/render", json={"vmi": domain()}).get_json()["resources"]
    )
