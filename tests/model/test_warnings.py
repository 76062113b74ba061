"""Warnings in overhead and render answers: each code, when it is said and when it is not.

The conditions come from upstream's code: ``renderresources.go`` (the renderer), virt-handler's
``pkg/hypervisor/{kvm,mshv}/runtime.go`` (the locked-memory limit, v1.9.0 versus main), the VMI
admitter (negative sizes) and ``Quantity``'s decimal form (the shared-quantity quirk).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from overhead_service.errors import InputError
from overhead_service.model.memlock import version_for_table
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.model.warnings import CODES, Code, kubevirt_release

SERVICE = OverheadService(TableRegistry.builtin())
MI = 1 << 20
RESERVED = "vmi.spec.domain.memory.reservedOverhead"


def vmi(
    memory: dict[str, Any] | None = None, cpu: dict[str, Any] | None = None, **resources: Any
) -> dict[str, Any]:
    domain: dict[str, Any] = {"cpu": cpu or {"cores": 2}, "devices": {}}
    domain["resources"] = resources or {"requests": {"memory": "1Gi"}}
    if memory is not None:
        domain["memory"] = memory
    return {"metadata": {"name": "vm", "namespace": "default"}, "spec": {"domain": domain}}


def overhead(body: dict[str, Any]) -> list[dict[str, str]]:
    answer: list[dict[str, str]] = SERVICE.compute(body)["warnings"]
    return answer


def rendered(body: dict[str, Any]) -> list[dict[str, str]]:
    answer: list[dict[str, str]] = render(body, SERVICE)["warnings"]
    return answer


def codes(warnings: list[dict[str, str]]) -> list[str]:
    return [w["code"] for w in warnings]


def only(warnings: list[dict[str, str]], code: str) -> dict[str, str]:
    found = [w for w in warnings if w["code"] == code]
    assert len(found) == 1, warnings
    return found[0]


def test_a_plain_vmi_gets_an_empty_list() -> None:
    body = {"vmi": vmi()}
    assert overhead(body) == []
    assert rendered(body) == []
    assert SERVICE.compute({"vmi": vmi(), "table": "kubevirt-main"})["warnings"] == []


def test_every_code_is_a_documented_constant() -> None:
    assert len(CODES) == len(set(CODES)) == 10
    assert Code.SHARED_QUANTITY in CODES and Code.PROVISIONAL in CODES


# --- provisional-model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hypervisor", "table"), [("mshv", "kubevirt-v1.9.0"), ("mshv", "mshv-l1vh-provisional")]
)
def test_a_provisional_model_is_said(hypervisor: str, table: str) -> None:
    body = {"vmi": vmi(), "hypervisor": hypervisor, "table": table}
    warning = only(overhead(body), Code.PROVISIONAL)
    assert warning["path"] == "table" and table in warning["message"]
    assert codes(rendered(body)) == [Code.PROVISIONAL]


def test_a_measured_or_upstream_kvm_model_is_not_provisional() -> None:
    for table in ("kubevirt-v1.9.0", "kvm-measured-pvm-2026-11"):
        assert Code.PROVISIONAL not in codes(overhead({"vmi": vmi(), "hypervisor": "kvm", "table": table}))


# --- no-launcher-headroom (kubevirt/kubevirt#18049) ------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "resources", "said"),
    [
        # the #18049 shape: guest = request = limit
        ({"guest": "4Gi"}, {"requests": {"memory": "4Gi"}, "limits": {"memory": "4Gi"}}, True),
        (None, {"limits": {"memory": "2Gi"}}, True),  # the request is the limit, the guest too
        ({"guest": "4Gi"}, {"limits": {"memory": "3Gi"}}, True),
        ({"guest": "4Gi"}, {"limits": {"memory": "4.5Gi"}}, False),  # a margin above the guest
        ({"guest": "4Gi"}, {"requests": {"memory": "4Gi"}}, False),  # no limit at all
    ],
)
def test_no_headroom_for_the_launcher(
    memory: dict[str, Any] | None, resources: dict[str, Any], said: bool
) -> None:
    body = {"vmi": vmi(memory, **resources)}
    for warnings in (overhead(body), rendered(body)):
        assert (Code.NO_HEADROOM in codes(warnings)) is said
    if said:
        warning = only(overhead(body), Code.NO_HEADROOM)
        assert warning["path"] == "vmi.spec.domain.resources.limits.memory"
        assert "18049" in warning["message"] and "memory.guest" in warning["message"]


# --- negative addedOverhead, ratio below one, request below the guest ------------------------------


def test_a_negative_added_overhead_is_said_and_below_guest_when_it_wins() -> None:
    small = {"vmi": vmi({"guest": "1Gi", "reservedOverhead": {"addedOverhead": "-100Mi"}})}
    assert codes(overhead(small)) == [Code.NEGATIVE_ADDED_OVERHEAD]
    assert only(overhead(small), Code.NEGATIVE_ADDED_OVERHEAD)["path"] == f"{RESERVED}.addedOverhead"
    assert codes(rendered(small)) == [Code.NEGATIVE_ADDED_OVERHEAD]

    large = {"vmi": vmi({"guest": "1Gi", "reservedOverhead": {"addedOverhead": "-2Gi"}})}
    assert SERVICE.compute(large)["overhead"]["bytes"] < 0
    assert codes(overhead(large)) == [Code.NEGATIVE_ADDED_OVERHEAD, Code.REQUEST_BELOW_GUEST]
    below = only(rendered(large), Code.REQUEST_BELOW_GUEST)
    assert below["path"] == f"{RESERVED}.addedOverhead" and "negative" in below["message"]


def test_a_ratio_below_one_is_said() -> None:
    body = {"vmi": vmi(), "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "0.5"}}
    warning = only(overhead(body), Code.RATIO_BELOW_ONE)
    assert warning["path"] == "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"
    body["kubevirtConfiguration"]["additionalGuestMemoryOverheadRatio"] = "1.5"
    assert overhead(body) == []


@pytest.mark.parametrize(
    ("resources", "overcommit", "path"),
    [
        ({"requests": {"memory": "512Mi"}}, 100, "vmi.spec.domain.resources.requests.memory"),
        ({}, 150, "kubevirtConfiguration.developerConfiguration.memoryOvercommit"),
    ],
)
def test_a_render_request_below_the_guest_is_said(
    resources: dict[str, Any], overcommit: int, path: str
) -> None:
    body = {
        "vmi": vmi({"guest": "4Gi"}, **resources) if resources else vmi({"guest": "4Gi"}, requests={}),
        "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": overcommit}},
    }
    assert only(rendered(body), Code.REQUEST_BELOW_GUEST)["path"] == path
    assert Code.REQUEST_BELOW_GUEST not in codes(overhead(body))  # the overhead itself is positive


def test_overcommit_100_keeps_the_request_at_the_guest() -> None:
    body = {"vmi": vmi({"guest": "4Gi"}, requests={})}
    assert rendered(body) == []


# --- memory locking: mshv ignores memLock Required (#17815), addedOverhead in memlock (#17619) -----


@pytest.mark.parametrize(
    ("hypervisor", "table", "said"),
    [("mshv", "kubevirt-v1.9.0", True), ("mshv", "kubevirt-main", False), ("kvm", "kubevirt-v1.9.0", False)],
)
def test_memlock_required_on_mshv(hypervisor: str, table: str, said: bool) -> None:
    memory = {"guest": "1Gi", "reservedOverhead": {"memLock": "Required"}}
    body = {"vmi": vmi(memory), "hypervisor": hypervisor, "table": table}
    assert (Code.MSHV_MEMLOCK_IGNORED in codes(overhead(body))) is said
    if said:
        warning = only(overhead(body), Code.MSHV_MEMLOCK_IGNORED)
        assert warning["path"] == f"{RESERVED}.memLock" and "17815" in warning["message"]
        assert "default locked-memory limit" in warning["message"]


VFIO = {"hostDevices": [{"name": "gpu", "deviceName": "nvidia.com/A100"}]}


@pytest.mark.parametrize(
    ("mem_lock", "devices", "cpu", "table", "said"),
    [
        ("NotRequired", VFIO, None, "kubevirt-v1.9.0", True),
        (None, VFIO, None, "kubevirt-v1.9.0", True),  # memLock unset is not Required
        (None, {}, {"cores": 2, "realtime": {}}, "kubevirt-v1.9.0", True),  # realtime locks too
        ("Required", VFIO, None, "kubevirt-v1.9.0", False),  # locking is what it is for
        ("NotRequired", {}, None, "kubevirt-v1.9.0", False),  # nothing locks memory
        ("NotRequired", VFIO, None, "kubevirt-main", False),  # main: unlimited
    ],
)
def test_added_overhead_counted_into_memlock(
    mem_lock: str | None, devices: dict[str, Any], cpu: dict[str, Any] | None, table: str, said: bool
) -> None:
    reserved: dict[str, Any] = {"addedOverhead": "256Mi"}
    if mem_lock is not None:
        reserved["memLock"] = mem_lock
    body: dict[str, Any] = {"vmi": vmi({"guest": "1Gi", "reservedOverhead": reserved}, cpu), "table": table}
    body["vmi"]["spec"]["domain"]["devices"] = devices
    assert (Code.ADDED_OVERHEAD_IN_MEMLOCK in codes(overhead(body))) is said
    if said:
        assert "17619" in only(overhead(body), Code.ADDED_OVERHEAD_IN_MEMLOCK)["message"]


# --- what KubeVirt refuses: a warning on the overhead, 422 on render --------------------------------


@pytest.mark.parametrize(
    ("resources", "path"),
    [
        ({"requests": {"memory": "-512Mi"}}, "vmi.spec.domain.resources.requests.memory"),
        (
            {"requests": {"memory": "1Gi"}, "limits": {"memory": "-1"}},
            "vmi.spec.domain.resources.limits.memory",
        ),
        ({"requests": {"memory": "1Gi", "cpu": "-2"}}, "vmi.spec.domain.resources.requests.cpu"),
        ({"requests": {"memory": "1Gi"}, "limits": {"cpu": "-2"}}, "vmi.spec.domain.resources.limits.cpu"),
    ],
)
def test_negative_requests_and_limits(resources: dict[str, Any], path: str) -> None:
    body = {"vmi": vmi(**resources)}
    warning = only(overhead(body), Code.REJECTED)
    assert warning["path"] == path and "admission" in warning["message"]
    with pytest.raises(InputError) as raised:
        render(body, SERVICE)
    assert raised.value.path == path and raised.value.status == 422
    assert "admission" in raised.value.detail


def test_a_negative_guest_memory_is_said_by_both() -> None:
    body = {"vmi": vmi({"guest": "-1Gi"})}
    for warnings in (overhead(body), rendered(body)):
        warning = only(warnings, Code.REJECTED)
        assert warning["path"] == "vmi.spec.domain.memory.guest" and "virt-launcher" in warning["message"]


# --- render only: the shared-quantity quirk and hugepages with memoryOvercommit ----------------------


@pytest.mark.parametrize(
    ("spelling", "dedicated", "said"),
    [
        ("1.5Gi", False, True),  # limit only: the request is a copy of the limit
        ("1536Mi", False, False),  # the same bytes as an int64 amount
        ("1.5G", False, False),  # a decimal suffix with a fraction is an int64 amount too
        ("2.25Gi", True, True),  # dedicated CPUs copy it back
    ],
)
def test_shared_quantity_double_overhead(spelling: str, dedicated: bool, said: bool) -> None:
    cpu = {"cores": 2, "dedicatedCpuPlacement": dedicated}
    body = {"vmi": vmi(cpu=cpu, limits={"memory": spelling})}
    assert (Code.SHARED_QUANTITY in codes(rendered(body))) is said
    assert Code.SHARED_QUANTITY not in codes(overhead(body))
    if said:
        warning = only(rendered(body), Code.SHARED_QUANTITY)
        assert warning["path"] == "vmi.spec.domain.resources.limits.memory"
        assert f"'{spelling}'" in warning["message"] and "twice" in warning["message"]


def test_shared_quantity_names_the_integer_spelling_and_the_guest_path() -> None:
    cpu = {"cores": 2, "dedicatedCpuPlacement": True}
    body = {"vmi": vmi({"guest": "0.5Gi"}, cpu, requests={})}
    warning = only(rendered(body), Code.SHARED_QUANTITY)
    assert warning["path"] == "vmi.spec.domain.memory.guest"
    assert "'512Mi'" in warning["message"]


def test_shared_quantity_with_overcommit_guest_overhead() -> None:
    body = {"vmi": vmi(limits={"memory": "1.5Gi"}, overcommitGuestOverhead=True)}
    answer = render(body, SERVICE)
    requests, limits = answer["resources"]["requests"], answer["resources"]["limits"]
    assert requests["memory"] == limits["memory"]  # the limit's overhead reached the request
    assert "overcommitGuestOverhead" in only(answer["warnings"], Code.SHARED_QUANTITY)["message"]


def hugepages_body(overcommit: int, **resources: Any) -> dict[str, Any]:
    memory = {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}}
    return {
        "vmi": vmi(memory, **(resources or {"requests": {}})),
        "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": overcommit}},
    }


@pytest.mark.parametrize("table", ["kubevirt-v1.9.0", "kubevirt-main"])
def test_hugepages_with_memory_overcommit_above_100(table: str) -> None:
    body = {**hugepages_body(150), "table": table}
    answer = render(body, SERVICE)
    assert answer["resources"]["requests"]["hugepages-2Mi"] == "715827882"
    warning = only(answer["warnings"], Code.HUGEPAGES_OVERCOMMIT)
    assert warning["path"] == "kubevirtConfiguration.developerConfiguration.memoryOvercommit"
    assert "not a whole number of 2Mi pages" in warning["message"]
    assert "18880" in warning["message"]
    assert ("v1.9.0" if table == "kubevirt-v1.9.0" else "d923fdb815") in warning["message"]


def test_hugepages_with_memory_overcommit_below_100() -> None:
    warning = only(rendered(hugepages_body(90)), Code.HUGEPAGES_OVERCOMMIT)
    assert "surplus" in warning["message"]


@pytest.mark.parametrize(
    "body",
    [
        hugepages_body(100),
        hugepages_body(150, requests={"memory": "1Gi"}),
        hugepages_body(150, limits={"memory": "1Gi"}),
    ],
)
def test_hugepages_without_the_overcommit_trap(body: dict[str, Any]) -> None:
    assert Code.HUGEPAGES_OVERCOMMIT not in codes(rendered(body))


# --- tables and the memo --------------------------------------------------------------------------


def test_each_table_has_a_kubevirt_release() -> None:
    tables = TableRegistry.builtin()
    releases = {table_id: kubevirt_release(tables.get(table_id), tables) for table_id in tables.ids()}
    assert releases == {
        "kubevirt-v1.9.0": "v1.9.0",
        "kubevirt-main": "main",
        "mshv-l1vh-provisional": "v1.9.0",
        "kvm-measured-pvm-2026-11": "v1.9.0",  # its parent's
        "kvm-libvirt-measured-pvm-2026-12": "v1.9.0",
    }


def test_the_memo_key_sees_every_field_a_warning_reads() -> None:
    memo = OverheadService(TableRegistry.builtin())
    base: dict[str, Any] = {
        "vmi": vmi({"guest": "1Gi", "reservedOverhead": {"addedOverhead": "1Mi"}}),
        "hypervisor": "mshv",
    }
    first = codes(memo.compute(base)["warnings"])
    changes = [
        ("memory", {"guest": "1Gi", "reservedOverhead": {"addedOverhead": "1Mi", "memLock": "Required"}}),
        ("memory", {"guest": "1Gi", "reservedOverhead": {"addedOverhead": "-1Mi"}}),
        ("cpu", {"cores": 2, "realtime": {}}),
        ("devices", VFIO),
        ("launchSecurity", {"sev": {}}),
        ("resources", {"limits": {"memory": "1Gi"}}),
        ("resources", {"requests": {"memory": "-1Gi"}}),
    ]
    for key, value in changes:
        body = copy.deepcopy(base)
        body["vmi"]["spec"]["domain"][key] = value
        assert codes(memo.compute(body)["warnings"]) != first, key
    assert codes(memo.compute({**base, "table": "kubevirt-main"})["warnings"]) == first  # no memlock one
    assert codes(memo.compute({**base, "hypervisor": "kvm"})["warnings"]) != first
    assert codes(memo.compute(base)["warnings"]) == first


def test_the_release_agrees_with_memlocks_version_for_table() -> None:
    tables = TableRegistry.builtin()
    for table_id in tables.ids():
        table = tables.get(table_id)
        parent = table.document.get("provenance", {}).get("parent")
        assert kubevirt_release(table, tables) == version_for_table(table_id, parent).value
