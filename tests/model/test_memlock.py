"""``memlock``: the RLIMIT_MEMLOCK KubeVirt's virt-handler sets for a VMI's QEMU.

Expected values come from upstream's source, cited per test:

* v1.9.0 (79d34c1762): ``pkg/hypervisor/kvm/runtime.go`` ``AdjustResources`` /
  ``CalculateMemlockSize`` / ``getVMIBaseMemory``; ``pkg/hypervisor/mshv/runtime.go``
  ``AdjustResources``; the predicates ``vmitrait.HasVFIO`` (``pkg/vmitrait/vmitrait.go``),
  ``util.CountVFIODevices`` / ``util.RequiresLockingMemory`` (``pkg/util/util.go``),
  ``util.IsSEVVMI`` (``pkg/util/amd64.go``), ``IsRealtimeEnabled`` (api ``types.go``).
* main (d923fdb815): the same two files after d951a72249 (kubevirt#17857), which set
  ``RLIM_INFINITY`` (``common.SetProcessMemoryLockUnlimited``).

Arithmetic: the base memory enters as ``NewScaledQuantity(base.ScaledValue(Kilo), Kilo)``, so
1Gi = 1,073,741.824 kB counts as 1,073,742,000 bytes; the (N − 1) term uses ``base.Value()``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from overhead_service.errors import InputError
from overhead_service.model.memlock import (
    RLIM_INFINITY,
    KubeVirtVersion,
    MemlockFacts,
    base_memory,
    memlock,
    memlock_arch,
    memlock_facts,
    upstream_overhead,
    version_for_table,
)
from overhead_service.model.quantity import ZERO, Format, Quantity, parse_quantity
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import Model, TableRegistry
from overhead_service.model.vmi import extract_features, memo_key

MI = 1 << 20
GI = 1 << 30
GI_KB = 1_073_742_000  # 1Gi rounded up to whole kB
V190 = KubeVirtVersion.V1_9_0
MAIN = KubeVirtVersion.MAIN
OVERHEAD = Quantity.from_int(300 * MI)  # any GetMemoryOverhead result; the sum only adds it

REGISTRY = TableRegistry.builtin()
_MODEL = REGISTRY.get("kubevirt-v1.9.0").model_for("kvm", "amd64")
assert _MODEL is not None
V190_KVM: Model = _MODEL


def vmi(**domain: Any) -> dict[str, Any]:
    return {"spec": {"domain": domain}}


def facts(**domain: Any) -> MemlockFacts:
    return memlock_facts(vmi(**domain))


def with_request(request: str = "1Gi", /, **domain: Any) -> MemlockFacts:
    return facts(resources={"requests": {"memory": request}}, **domain)


GPUS2 = {"gpus": [{"name": "g1", "deviceName": "a/b"}, {"name": "g2", "deviceName": "a/b"}]}
SRIOV = {"interfaces": [{"name": "n1", "sriov": {}}]}
REQUIRED = {"reservedOverhead": {"memLock": "Required"}}


# --- reading the VMI -----------------------------------------------------------------------------


def test_vfio_count_is_gpus_plus_host_devices_plus_sriov_interfaces() -> None:
    # util.CountVFIODevices: len(GPUs) + len(HostDevices) + interfaces with SRIOV != nil.
    devices = {
        "gpus": [{"name": "g"}],
        "hostDevices": [{"name": "h1"}, {"name": "h2"}],
        "interfaces": [
            {"name": "a", "sriov": {}},
            {"name": "b", "masquerade": {}},
            {"name": "c", "sriov": None},
        ],
    }
    assert facts(devices=devices).vfio_devices == 4


def test_a_null_list_element_still_counts_as_a_device() -> None:
    # Go decodes a null slice element to a zero struct; len() counts it.
    assert facts(devices={"hostDevices": [None, {"name": "h"}]}).vfio_devices == 2


def test_realtime_sev_and_snp_are_read_tdx_is_not_sev() -> None:
    # IsRealtimeEnabled: cpu.realtime != nil; util.IsSEVVMI: launchSecurity.sev or .snp != nil.
    assert facts(cpu={"realtime": {}}).realtime
    assert not facts(cpu={"realtime": None}).realtime
    assert facts(launchSecurity={"sev": {}}).sev
    assert facts(launchSecurity={"snp": {}}).sev
    assert not facts(launchSecurity={"tdx": {}}).sev


def test_memlock_setting_and_added_overhead_are_read() -> None:
    read = facts(memory={"reservedOverhead": {"memLock": "NotRequired", "addedOverhead": "1Gi"}})
    assert (read.memlock, read.added_overhead) == ("NotRequired", True)
    assert facts(memory=REQUIRED).triggers == ("memLockRequired",)


@pytest.mark.parametrize(
    ("domain", "path"),
    [
        ({"memory": {"reservedOverhead": {"memLock": "required"}}}, "reservedOverhead.memLock"),
        ({"memory": {"reservedOverhead": {"memLock": 1}}}, "reservedOverhead.memLock"),
        ({"memory": {"reservedOverhead": {"addedOverhead": "1 Gi"}}}, "reservedOverhead.addedOverhead"),
        ({"memory": {"maxGuest": "lots"}}, "memory.maxGuest"),
        ({"memory": {"guest": []}}, "memory.guest"),
        ({"devices": {"gpus": {}}}, "devices.gpus"),
        ({"devices": {"interfaces": [{"sriov": 1}]}}, "interfaces[0].sriov"),
        ({"cpu": {"realtime": True}}, "cpu.realtime"),
        ({"resources": {"requests": {"memory": "x"}}}, "requests.memory"),
    ],
)
def test_bad_fields_are_input_errors_with_their_path(domain: dict[str, Any], path: str) -> None:
    # The CRD schema enumerates memLock as NotRequired | Required (validations_generated.go).
    with pytest.raises(InputError) as caught:
        memlock_facts(vmi(**domain))
    assert caught.value.path.endswith(path)


def test_a_vmi_that_is_not_an_object_is_an_input_error() -> None:
    with pytest.raises(InputError) as caught:
        memlock_facts([])
    assert caught.value.path == "vmi"


# --- base memory (getVMIBaseMemory) --------------------------------------------------------------


def test_base_memory_prefers_max_guest_then_request_then_guest() -> None:
    # getVMIBaseMemory's switch: MaxGuest != nil, then a non-zero requests.memory, then Guest.
    both = {"resources": {"requests": {"memory": "2Gi"}}}
    assert base_memory(facts(memory={"maxGuest": "8Gi", "guest": "1Gi"}, **both))[1] == "maxGuest"
    assert base_memory(facts(memory={"guest": "1Gi"}, **both)) == (parse_quantity("2Gi"), "requests.memory")
    assert base_memory(facts(memory={"guest": "1Gi"})) == (parse_quantity("1Gi"), "guest")


def test_a_zero_request_falls_through_to_guest() -> None:
    # `!Requests.Memory().IsZero()`: "0" does not count.
    read = facts(resources={"requests": {"memory": "0"}}, memory={"guest": "3Gi"})
    assert base_memory(read) == (parse_quantity("3Gi"), "guest")


def test_a_present_zero_max_guest_is_still_chosen() -> None:
    # The first case tests the pointer only (MaxGuest != nil).
    read = facts(resources={"requests": {"memory": "2Gi"}}, memory={"maxGuest": "0"})
    assert base_memory(read) == (ZERO, "maxGuest")


def test_no_memory_at_all_gives_zero_kilo() -> None:
    # vmiBaseMemory := resource.NewScaledQuantity(0, resource.Kilo) when no case matches; limits
    # are not read (the mutating webhook would have copied them into memory.guest).
    base, source = base_memory(facts(resources={"limits": {"memory": "1Gi"}}))
    assert (base.value(), source) == (0, "none")


# --- v1.9.0, kvm ---------------------------------------------------------------------------------


def test_nothing_asks_for_locking_so_the_limit_is_left_alone() -> None:
    # AdjustResources returns nil before touching any process.
    for version in KubeVirtVersion:
        for hypervisor in ("kvm", "mshv"):
            answer = memlock(with_request(), hypervisor, OVERHEAD, version)
            assert (answer.applies, answer.unlimited, answer.limit_bytes) == (False, False, None)
            assert answer.reason == "no-memory-locking"


@pytest.mark.parametrize(
    ("domain", "trigger"),
    [
        ({"devices": {"hostDevices": [{"name": "h"}]}}, "vfio"),
        ({"devices": SRIOV}, "vfio"),
        ({"cpu": {"realtime": {}}}, "realtime"),
        ({"launchSecurity": {"snp": {}}}, "sev"),
        ({"memory": REQUIRED}, "memLockRequired"),
    ],
)
def test_kvm_v190_limit_is_overhead_plus_base_in_kb(domain: dict[str, Any], trigger: str) -> None:
    # CalculateMemlockSize: overhead + NewScaledQuantity(base.ScaledValue(Kilo), Kilo).
    answer = memlock(with_request(**domain), "kvm", OVERHEAD, V190)
    assert answer.applies and not answer.unlimited
    assert answer.limit_bytes == 300 * MI + GI_KB
    assert answer.triggers == (trigger,)
    assert answer.components == (("overhead", 300 * MI), ("baseMemory", GI_KB))


@pytest.mark.parametrize(("devices", "count"), [(1, 1), (2, 2), (3, 3)])
def test_kvm_v190_adds_n_minus_one_base_memories_for_n_vfio_devices(devices: int, count: int) -> None:
    # `if numDevices := util.CountVFIODevices(vmi); numDevices > 1`: extra = base.Value() * (N-1).
    gpus = [{"name": f"g{i}", "deviceName": "a/b"} for i in range(devices)]
    answer = memlock(with_request("8Gi", devices={"gpus": gpus}), "kvm", OVERHEAD, V190)
    base_kb = 8_589_935_000  # 8Gi = 8,589,934.592 kB, rounded up
    assert answer.vfio_devices == count
    assert answer.limit_bytes == 300 * MI + base_kb + 8 * GI * (count - 1)


@pytest.mark.parametrize(
    ("devices", "extra_guests"),
    [
        ({"gpus": [{"name": "gpu1"}]}, 0),
        ({"gpus": [{"name": "gpu1"}, {"name": "gpu2"}]}, 1),
        ({"gpus": [{"name": "gpu1"}, {"name": "gpu2"}, {"name": "gpu3"}]}, 2),
        ({"hostDevices": [{"name": "dev1"}, {"name": "dev2"}]}, 1),
        ({"gpus": [{"name": "gpu1"}], "hostDevices": [{"name": "dev1"}]}, 1),
        ({"interfaces": [{"name": "sriov1", "sriov": {}}, {"name": "sriov2", "sriov": {}}]}, 1),
    ],
)
def test_upstream_calculate_memlock_size_table(devices: dict[str, Any], extra_guests: int) -> None:
    # pkg/hypervisor/kvm/hypervisorbackend_test.go (v1.9.0), "should scale memlock per VFIO
    # device": an 8Gi VMI with devices minus the same VMI without them = 1Gi (the VFIO overhead
    # term of GetMemoryOverhead) + guest memory × (N - 1). Upstream checks it to within 1Mi; here
    # it is exact. The baseline has no trigger, so its sum is computed as if it had one (its own
    # size is what CalculateMemlockSize returns, whether or not AdjustResources would call it).
    with_devices = vmi(resources={"requests": {"memory": "8Gi"}}, devices=devices)
    baseline = vmi(resources={"requests": {"memory": "8Gi"}}, devices={}, memory=REQUIRED)

    def size(body: dict[str, Any]) -> int:
        overhead = upstream_overhead(V190_KVM, extract_features(body), "amd64", None)
        answer = memlock(memlock_facts(body), "kvm", overhead, V190)
        assert answer.limit_bytes is not None
        return answer.limit_bytes

    assert size(with_devices) - size(baseline) == GI + 8 * GI * extra_guests


def test_v190_counts_added_overhead_even_when_memlock_is_not_required() -> None:
    # GetMemoryOverhead adds reservedOverhead.addedOverhead whenever it is set
    # (pkg/hypervisor/kvm/hypervisorbackend.go), and CalculateMemlockSize starts from it:
    # kubevirt#17619 (fix PR #17712 closed unmerged).
    body = vmi(
        resources={"requests": {"memory": "1Gi"}},
        devices={"hostDevices": [{"name": "h"}]},
        memory={"reservedOverhead": {"addedOverhead": "1Gi", "memLock": "NotRequired"}},
    )
    plain = copy.deepcopy(body)
    del plain["spec"]["domain"]["memory"]
    results = []
    for each in (body, plain):
        overhead = upstream_overhead(V190_KVM, extract_features(each), "amd64", None)
        results.append(memlock(memlock_facts(each), "kvm", overhead, V190))
    assert results[0].includes_added_overhead and not results[1].includes_added_overhead
    assert results[0].limit_bytes is not None and results[1].limit_bytes is not None
    assert results[0].limit_bytes - results[1].limit_bytes == GI


def test_memlock_not_required_alone_does_not_apply() -> None:
    # util.RequiresLockingMemory is true for MemLockRequired only.
    answer = memlock(facts(memory={"reservedOverhead": {"memLock": "NotRequired"}}), "kvm", OVERHEAD, V190)
    assert not answer.applies and answer.triggers == ()


def test_max_guest_is_the_base_and_fractional_sizes_round_up_to_kb() -> None:
    # getVMIBaseMemory returns MaxGuest first; ScaledValue(Kilo) rounds 1.5Gi = 1,610,612.736 kB up.
    read = with_request("1Gi", memory={"maxGuest": "1.5Gi"}, devices=SRIOV)
    answer = memlock(read, "kvm", OVERHEAD, V190)
    assert answer.base_source == "maxGuest"
    assert answer.limit_bytes == 300 * MI + 1_610_613_000


def test_a_fractional_overhead_is_rounded_up_once_at_the_end() -> None:
    # memlockSize.Value() is the ceiling of the exact sum.
    overhead = parse_quantity("1.5")  # an addedOverhead of 0.5 byte would give such sums
    answer = memlock(with_request(devices=SRIOV), "kvm", overhead, V190)
    assert answer.limit_bytes == 2 + GI_KB


def test_the_int64_product_of_the_extra_term_wraps_like_go() -> None:
    # extra.Set(extra.Value() * int64(numDevices-1)) is a plain int64 multiplication.
    read = with_request("4Ei", devices={"hostDevices": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})
    answer = memlock(read, "kvm", OVERHEAD, V190)
    wrapped_extra = (4 * 2**60 * 2 + 2**63) % 2**64 - 2**63  # 8Ei wraps to -2**63
    assert dict(answer.components)["vfioExtraBaseMemory"] == wrapped_extra == -(2**63)


def test_a_negative_sum_reaches_the_kernel_as_uint64() -> None:
    # SetProcessMemoryLockRLimit(pid, size int64) passes uint64(size) to prlimit64.
    answer = memlock(with_request(devices=SRIOV), "kvm", Quantity.from_int(-GI_KB - 2 * GI), V190)
    assert answer.limit_bytes == 2**64 - 2 * GI
    assert not answer.unlimited


def test_a_sum_of_minus_one_is_rlim_infinity() -> None:
    # uint64(-1) == unix.RLIM_INFINITY.
    answer = memlock(facts(memory=REQUIRED), "kvm", Quantity.from_int(-1), V190)
    assert answer.limit_bytes == RLIM_INFINITY and answer.unlimited


# --- v1.9.0, mshv --------------------------------------------------------------------------------


def test_mshv_v190_ignores_memlock_required() -> None:
    # mshv AdjustResources: `!HasVFIO && !IsRealtimeEnabled && !IsSEVVMI` -> return nil
    # (no RequiresLockingMemory check): kubevirt#17815, fix PR #17816 unmerged.
    answer = memlock(with_request(memory=REQUIRED), "mshv", OVERHEAD, V190)
    assert (answer.applies, answer.limit_bytes, answer.reason) == (False, None, "memlock-required-ignored")
    assert answer.ignored_triggers == ("memLockRequired",)


def test_mshv_v190_applies_for_vfio_without_the_n_minus_one_term() -> None:
    # mshv AdjustResources sums overhead + base only; CalculateMemlockSize is kvm's.
    answer = memlock(with_request("8Gi", devices=GPUS2, memory=REQUIRED), "mshv", OVERHEAD, V190)
    assert answer.limit_bytes == 300 * MI + 8_589_935_000
    assert answer.triggers == ("vfio", "memLockRequired")
    assert answer.ignored_triggers == ("memLockRequired",)


def test_mshv_v190_realtime_and_sev_apply() -> None:
    domains: tuple[dict[str, Any], ...] = ({"cpu": {"realtime": {}}}, {"launchSecurity": {"sev": {}}})
    for domain in domains:
        answer = memlock(with_request(**domain), "mshv", OVERHEAD, V190)
        assert answer.limit_bytes == 300 * MI + GI_KB


def test_overhead_arch_is_the_vmi_s_for_kvm_and_the_node_s_for_mshv() -> None:
    # kvm CalculateMemlockSize: spec.architecture, else runtime.GOARCH; mshv: runtime.GOARCH.
    assert memlock_arch("kvm", "arm64", "amd64") == "arm64"
    assert memlock_arch("kvm", "", "amd64") == "amd64"
    assert memlock_arch("mshv", "arm64", "amd64") == "amd64"


# --- main ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
@pytest.mark.parametrize(
    "domain",
    [{"devices": GPUS2}, {"cpu": {"realtime": {}}}, {"launchSecurity": {"sev": {}}}, {"memory": REQUIRED}],
)
def test_main_sets_unlimited_for_every_trigger_on_both_runtimes(
    hypervisor: str, domain: dict[str, Any]
) -> None:
    # d951a72249: AdjustResources -> common.SetProcessMemoryLockUnlimited (RLIM_INFINITY); the mshv
    # guard gained RequiresLockingMemory in the same change.
    answer = memlock(with_request(**domain), hypervisor, OVERHEAD, MAIN)
    assert (answer.applies, answer.unlimited, answer.limit_bytes, answer.reason) == (
        True,
        True,
        None,
        "unlimited",
    )
    assert answer.ignored_triggers == ()
    assert answer.components == () and not answer.includes_added_overhead


# --- plumbing ------------------------------------------------------------------------------------


def test_upstream_overhead_leaves_out_network_binding_memory() -> None:
    # CalculateMemoryOverhead adds MemoryCalculator (passt 250Mi, plugins) after GetMemoryOverhead;
    # AdjustResources calls GetMemoryOverhead alone.
    body = vmi(
        resources={"requests": {"memory": "1Gi"}}, devices={"interfaces": [{"name": "p", "passtBinding": {}}]}
    )
    pod = OverheadService(REGISTRY).compute({"vmi": body, "table": "kubevirt-v1.9.0"})
    overhead = upstream_overhead(V190_KVM, extract_features(body), "amd64", None)
    assert pod["overhead"]["bytes"] - overhead.value() == 250 * MI


def test_upstream_overhead_applies_the_ratio() -> None:
    body = vmi(resources={"requests": {"memory": "1Gi"}})
    features = extract_features(body)
    plain = upstream_overhead(V190_KVM, features, "amd64", None)
    assert upstream_overhead(V190_KVM, features, "amd64", 2.0).value() > plain.value()
    assert plain.format is Format.DECIMAL_SI and plain.value() == 283_115_520


def test_version_for_table() -> None:
    assert version_for_table("kubevirt-main") is MAIN
    assert version_for_table("fit-1", parent="kubevirt-main") is MAIN
    for table in ("kubevirt-v1.9.0", "kvm-measured-pvm-2026-11", "mshv-l1vh-provisional"):
        assert version_for_table(table) is V190


def test_unknown_hypervisor_is_refused() -> None:
    with pytest.raises(ValueError, match="kvm or mshv"):
        memlock(with_request(), "xen", OVERHEAD, V190)


def test_the_module_docstring_example() -> None:
    # kubevirt-v1.9.0, kvm, 1Gi with two GPUs: GetMemoryOverhead = 2,097,152 page tables + 268Mi
    # fixed/vCPU/IOThread/video + 1Gi VFIO = 1,356,857,344; + 1,073,742,000 + 1 × 1Gi.
    body = vmi(resources={"requests": {"memory": "1Gi"}}, devices=GPUS2)
    overhead = upstream_overhead(V190_KVM, extract_features(body), "amd64", None)
    assert overhead.value() == 1_356_857_344
    assert memlock(memlock_facts(body), "kvm", overhead, V190).limit_bytes == 3_504_341_168
    assert memlock(memlock_facts(body), "mshv", overhead, V190).limit_bytes == 2_430_599_344


def test_to_json_shape() -> None:
    answer = memlock(with_request(devices=GPUS2), "kvm", OVERHEAD, V190).to_json()
    assert answer == {
        "applies": True,
        "unlimited": False,
        "limitBytes": 300 * MI + GI_KB + GI,
        "reason": "overhead-plus-base-memory",
        "kubevirtVersion": "v1.9.0",
        "hypervisor": "kvm",
        "triggers": ["vfio"],
        "ignoredTriggers": [],
        "vfioDevices": 2,
        "baseMemory": {"bytes": GI, "source": "requests.memory"},
        "components": [
            {"name": "overhead", "bytes": 300 * MI},
            {"name": "baseMemory", "bytes": GI_KB},
            {"name": "vfioExtraBaseMemory", "bytes": GI},
        ],
        "includesAddedOverhead": False,
    }


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["cpu"].update(realtime={}),
        lambda d: d["memory"]["reservedOverhead"].update(memLock="Required"),
        lambda d: d["memory"].update(maxGuest="4Gi"),
        lambda d: d["devices"]["gpus"].append({"name": "g2"}),
        lambda d: d["devices"]["interfaces"].append({"name": "s2", "sriov": {}}),
        lambda d: d["launchSecurity"].update(snp={}),
    ],
)
def test_the_overhead_memo_key_sees_every_field_memlock_reads(change: Any) -> None:
    # Everything memlock_facts reads lies inside parts of the VMI that memo_key holds, so an answer
    # carrying a memlock field can never be served from a memo entry of a different VMI.
    domain = {
        "cpu": {"cores": 1},
        "memory": {"guest": "1Gi", "reservedOverhead": {"memLock": "NotRequired"}},
        "devices": {"gpus": [{"name": "g1"}], "interfaces": [{"name": "s1", "sriov": {}}]},
        "launchSecurity": {},
    }
    before = vmi(**domain)
    after = copy.deepcopy(before)
    change(after["spec"]["domain"])
    assert memlock_facts(before) != memlock_facts(after)
    assert memo_key({"vmi": before}, before) != memo_key({"vmi": after}, after)
