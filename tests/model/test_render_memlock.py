"""``memlock`` in render answers: :mod:`overhead_service.model.memlock` wired to the answer's
hypervisor, its table's KubeVirt version and upstream's own ``GetMemoryOverhead`` (virt-handler's sum
never sees network-binding memory nor a measured table), and consistent with the memlock warnings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.model.warnings import Code

SERVICE = OverheadService(TableRegistry.builtin())
GI = 1 << 30
MI = 1 << 20
GI_KB = 1_073_742_000  # 1Gi rounded up to whole kB, as CalculateMemlockSize adds it
TWO_GPUS = {
    "gpus": [{"name": "a", "deviceName": "nvidia.com/A10"}, {"name": "b", "deviceName": "nvidia.com/A10"}]
}


def vmi(devices: dict[str, Any] | None = None, **domain: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"resources": {"requests": {"memory": "1Gi"}}, "devices": devices or {}}
    base.update(domain)
    return {"spec": {"domain": base}}


def overhead_bytes(body: dict[str, Any]) -> int:
    answer: int = SERVICE.compute({**body, "kubevirtConfiguration": {}})["overhead"]["bytes"]
    return answer


@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
def test_v1_9_0_overhead_plus_base_memory(hypervisor: str) -> None:
    body = {"vmi": vmi(TWO_GPUS), "hypervisor": hypervisor}
    locked = render(body, SERVICE)["memlock"]
    overhead = overhead_bytes(body)  # no network memory here: the pod's overhead is upstream's
    extra = GI if hypervisor == "kvm" else 0  # (N - 1) x base on kvm only
    assert locked["limitBytes"] == overhead + GI_KB + extra
    assert (locked["reason"], locked["kubevirtVersion"], locked["hypervisor"]) == (
        "overhead-plus-base-memory",
        "v1.9.0",
        hypervisor,
    )
    assert locked["triggers"] == ["vfio"] and locked["vfioDevices"] == 2


def test_main_is_unlimited() -> None:
    locked = render({"vmi": vmi(TWO_GPUS), "table": "kubevirt-main"}, SERVICE)["memlock"]
    assert (locked["unlimited"], locked["limitBytes"], locked["reason"]) == (True, None, "unlimited")


def test_nothing_to_lock() -> None:
    locked = render({"vmi": vmi()}, SERVICE)["memlock"]
    assert (locked["applies"], locked["reason"], locked["limitBytes"]) == (False, "no-memory-locking", None)


def test_the_sum_uses_upstreams_formula_without_network_memory() -> None:
    passt = vmi({**TWO_GPUS, "interfaces": [{"name": "default", "passtBinding": {}}]})
    answer = render({"vmi": passt}, SERVICE)
    pod_overhead = answer["overhead"]["bytes"]
    assert answer["memlock"]["components"][0] == {"name": "overhead", "bytes": pod_overhead - 250 * MI}
    # a measured table changes the pod's overhead, not virt-handler's sum
    measured = render({"vmi": vmi(TWO_GPUS), "table": "kvm-measured-pvm-2026-11"}, SERVICE)
    upstream = render({"vmi": vmi(TWO_GPUS), "table": "kubevirt-v1.9.0"}, SERVICE)
    assert measured["overhead"] != upstream["overhead"]
    assert measured["memlock"] == upstream["memlock"]


def test_mshv_sums_with_the_nodes_architecture() -> None:
    arm = vmi(TWO_GPUS)
    arm["spec"]["architecture"] = "arm64"
    kvm = render({"vmi": arm, "cpuArch": "amd64", "hypervisor": "kvm"}, SERVICE)["memlock"]
    mshv = render({"vmi": arm, "cpuArch": "amd64", "hypervisor": "mshv"}, SERVICE)["memlock"]
    # kvm: spec.architecture (arm64 adds the pflash memory); mshv: runtime.GOARCH, the node's
    assert kvm["components"][0]["bytes"] > mshv["components"][0]["bytes"]


MEMLOCK_VMIS = [
    vmi(memory={"guest": "1Gi", "reservedOverhead": {"memLock": "Required"}}),
    vmi(
        TWO_GPUS,
        memory={"guest": "1Gi", "reservedOverhead": {"memLock": "Required", "addedOverhead": "64Mi"}},
    ),
    vmi(
        TWO_GPUS,
        memory={"guest": "1Gi", "reservedOverhead": {"memLock": "NotRequired", "addedOverhead": "64Mi"}},
    ),
    vmi(memory={"guest": "1Gi", "reservedOverhead": {"addedOverhead": "64Mi"}}),
    vmi(cpu={"cores": 1, "realtime": {}}, memory={"reservedOverhead": {"addedOverhead": "64Mi"}}),
    vmi(
        launchSecurity={"sev": {}},
        memory={"reservedOverhead": {"addedOverhead": "1Mi", "memLock": "Required"}},
    ),
]


@pytest.mark.parametrize("table", ["kubevirt-v1.9.0", "kubevirt-main"])
@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
@pytest.mark.parametrize("index", range(len(MEMLOCK_VMIS)))
def test_the_memlock_warnings_say_what_memlock_shows(table: str, hypervisor: str, index: int) -> None:
    body = {"vmi": copy.deepcopy(MEMLOCK_VMIS[index]), "table": table, "hypervisor": hypervisor}
    answer = render(body, SERVICE)
    locked, codes = answer["memlock"], {w["code"] for w in answer["warnings"]}
    assert (Code.MSHV_MEMLOCK_IGNORED in codes) == (locked["ignoredTriggers"] == ["memLockRequired"])
    required = "memLockRequired" in locked["triggers"]
    assert (Code.ADDED_OVERHEAD_IN_MEMLOCK in codes) == (locked["includesAddedOverhead"] and not required)
