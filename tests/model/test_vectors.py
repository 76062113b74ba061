"""Parity with KubeVirt's own Go code: every golden vector, for kvm and for mshv.

The vectors (tests/data/vectors) were produced by compiling and running the upstream
packages (kubevirt/kubevirt v1.9.0, commit 79d34c1762, and main at d923fdb815).  Each case must
answer exactly the expected bytes and Quantity string, except where upstream silently ignores the
ratio (Go's ParseFloat rejects it) or returns platform-dependent garbage: those are input errors
naming the ratio field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from overhead_service.errors import InputError
from overhead_service.model.quantity import parse_quantity
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import DATA

VECTORS = DATA / "vectors"
FILES = {"kubevirt-v1.9.0": "kubevirt-v1.9.0.public.jsonl", "kubevirt-main": "kubevirt-main.public.jsonl"}

# Ratio strings in the vectors that Go's strconv.ParseFloat rejects (upstream logs and ignores them).
# Written out by hand from Go's grammar so that this test does not trust the module it checks.
GO_REJECTS = {" 1.5", "1.5 ", "1,5", "1.5_", "1.5x", "abc", "1__5", "1e400", "-1e400", "1.5e", "0x1.8", "_1"}
RATIO_PATH = "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"


def _cases() -> list[Any]:
    cases = []
    for table, name in FILES.items():
        for line in (VECTORS / name).read_text().splitlines():
            case = json.loads(line)
            cases.append(pytest.param(table, case, id=f"{table}:{case['id']}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def service() -> OverheadService:
    return OverheadService(TableRegistry.builtin())


def _request(table: str, case: dict[str, Any], hypervisor: str) -> dict[str, Any]:
    given = case["input"]
    body: dict[str, Any] = {"vmi": given["vmi"], "cpuArch": given["cpuArch"], "table": table}
    if "kubevirtConfiguration" in given:
        body["kubevirtConfiguration"] = given["kubevirtConfiguration"]
    elif given["additionalOverheadRatio"] is not None:
        body["kubevirtConfiguration"] = {
            "additionalGuestMemoryOverheadRatio": given["additionalOverheadRatio"]
        }
    if hypervisor != "auto":
        body["hypervisor"] = hypervisor
    return body


def _expects_error(case: dict[str, Any]) -> bool:
    return bool(case.get("platform_dependent")) or case["input"]["additionalOverheadRatio"] in GO_REJECTS


def test_vector_files_are_complete() -> None:
    assert len(CASES) == 2 * 252
    assert {c.values[1]["id"] for c in CASES if c.values[0] == "kubevirt-main"} == {
        c.values[1]["id"] for c in CASES if c.values[0] == "kubevirt-v1.9.0"
    }


@pytest.mark.parametrize(("table", "case"), CASES)
@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
def test_explicit_hypervisor_matches_upstream(
    service: OverheadService, table: str, case: dict[str, Any], hypervisor: str
) -> None:
    body = _request(table, case, hypervisor)
    if _expects_error(case):
        with pytest.raises(InputError) as raised:
            service.compute(body)
        assert raised.value.path == RATIO_PATH
        assert raised.value.status == 422
        return
    answer = service.compute(body)
    if "expected_calculate" in case:
        expected = case["expected_calculate"]["total"]
    else:
        expected = case["expected" if hypervisor == "kvm" else "expected_mshv"]
    assert answer["overhead"] == {"quantity": expected["quantity"], "bytes": expected["bytes"]}
    assert answer["hypervisor"]["name"] == hypervisor
    assert answer["table"] == {"id": table, "provisional": hypervisor == "mshv"}
    numerator, denominator = parse_quantity(expected["quantity"]).as_fraction()
    if numerator % denominator == 0:  # integral inputs: the components add up exactly
        assert sum(c["bytes"] for c in answer["components"]) == expected["bytes"]


@pytest.mark.parametrize(
    ("table", "case"),
    [c for c in CASES if "expected_calculate" in c.values[1] and not _expects_error(c.values[1])],
)
def test_calculate_cases_choose_upstreams_hypervisor(
    service: OverheadService, table: str, case: dict[str, Any]
) -> None:
    calculated = case["expected_calculate"]
    answer = service.compute(_request(table, case, "auto"))
    assert answer["overhead"] == {
        "quantity": calculated["total"]["quantity"],
        "bytes": calculated["total"]["bytes"],
    }
    upstream = {"kvm": "kvm", "mshv": "hyperv-direct"}[answer["hypervisor"]["name"]]
    assert upstream == calculated["hypervisorName"]
    assert answer["cpuArch"] == calculated["effectiveArch"]
    network = {c["name"]: c["bytes"] for c in answer["components"]}.get("networkBinding", 0)
    assert network == calculated["netMemory"]["bytes"]
