"""``render``: the compute container's resources as KubeVirt's virt-controller renders them.

Expected values are worked out by hand from upstream's renderer (``renderresources.go``,
``template.go``) and Go's ``Quantity`` rules, on table ``kubevirt-v1.9.0``, amd64:

* fixed per-process overhead 220Mi; 8Mi per vCPU; 8Mi IOThread; 32Mi video;
* page tables from ``requests.memory`` only: 1Gi -> 2,097,152 bytes;
* so 1Gi and 2 cores: 2,097,152 + (220 + 16 + 8 + 32) Mi = 291,504,128 (DecimalSI, page tables
  first); no memory request and 2 cores: 276Mi = 289,406,976 (BinarySI).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overhead_service.errors import InputError
from overhead_service.model.quantity import parse_quantity
from overhead_service.model.render import go_format_g, render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

MI = 1 << 20
GI = 1 << 30
OVERHEAD_1GI_2CPU = 2_097_152 + 276 * MI  # 291,504,128
OVERHEAD_NO_MEMORY_2CPU = 276 * MI  # 289,406,976
DEDICATED_EXTRA = 100 * MI  # dedicated CPUs or guaranteed QoS
KVM = "devices.kubevirt.io/kvm"
TUN = "devices.kubevirt.io/tun"
VHOST_NET = "devices.kubevirt.io/vhost-net"
RATIO_LABEL = "alpha.kubevirt.io/auto-memory-limits-ratio"

SERVICE = OverheadService(TableRegistry.builtin())


def vmi(**domain: Any) -> dict[str, Any]:
    """A VMI with 2 cores and 1Gi requested, ``domain`` merged over that."""
    base: dict[str, Any] = {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}, "devices": {}}
    base.update(domain)
    return {"metadata": {"name": "vm1", "namespace": "default"}, "spec": {"domain": base}}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    return render({"table": "kubevirt-v1.9.0", **body}, SERVICE)


def resources(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    rendered = answer(body)["resources"]
    return rendered["requests"], rendered["limits"]


# --- the whole answer ---------------------------------------------------------------------------


def test_typical_vmi_whole_answer() -> None:
    got = answer({"vmi": vmi()})
    assert got["resources"] == {
        # 1Gi + 291,504,128 = 1,365,245,952 = 1302Mi, printed in the request's (BinarySI) format
        "requests": {"cpu": "200m", "ephemeral-storage": "50M", "memory": "1302Mi"},
        "limits": {KVM: "1", TUN: "1"},
    }
    assert got["annotations"] == {"kubevirt.io/memory-overhead-bytes": "291504128"}
    assert got["overhead"] == {"quantity": "291504128", "bytes": OVERHEAD_1GI_2CPU}
    assert got["hypervisor"] == {
        "name": "kvm",
        "reason": "feature-gate-disabled",
        "domainType": "kvm",
        "deviceResource": KVM,
    }
    assert got["table"] == {"id": "kubevirt-v1.9.0", "provisional": False}
    assert got["cpuArch"] == "amd64"


def test_overhead_block_is_the_overhead_services_as_virt_controller_asks() -> None:
    body = {"vmi": vmi(), "cpuArch": "amd64", "table": "kubevirt-main"}
    expected = SERVICE.compute({**body, "kubevirtConfiguration": {}})
    got = render(body, SERVICE)
    assert {key: got[key] for key in ("overhead", "hypervisor", "table", "cpuArch")} == {
        key: expected[key] for key in ("overhead", "hypervisor", "table", "cpuArch")
    }
    assert got["annotations"]["kubevirt.io/memory-overhead-bytes"] == str(expected["overhead"]["bytes"])


def test_vmi_architecture_beats_cpu_arch_as_in_virt_controller() -> None:
    spec = vmi()
    spec["spec"]["architecture"] = "arm64"
    got = answer({"vmi": spec, "cpuArch": "amd64"})
    assert got["cpuArch"] == "arm64"
    assert got["overhead"]["bytes"] == OVERHEAD_1GI_2CPU + 128 * MI  # arm64 pflash


# --- memory: non-hugepages ----------------------------------------------------------------------

MEMORY_CASES = [
    pytest.param({"requests": {"memory": "1Gi"}}, "1302Mi", None, id="request"),
    # 1e9 bytes: page tables 1e9/512 = 1,953,125; overhead 291,360,101; DecimalSI stays DecimalSI
    pytest.param({"requests": {"memory": "1G"}}, "1291360101", None, id="decimal-request"),
    # the limit gets the overhead too: 2Gi + 291,504,128 = 2,438,987,776 = 2326Mi
    pytest.param(
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}, "1302Mi", "2326Mi", id="limit"
    ),
    # overcommitGuestOverhead: the request stays, the limit still gets the overhead
    pytest.param(
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}, "overcommitGuestOverhead": True},
        "1Gi",
        "2326Mi",
        id="overcommit-guest-overhead-limit",
    ),
    pytest.param(
        {"requests": {"memory": "1Gi"}, "overcommitGuestOverhead": True},
        "1Gi",
        None,
        id="overcommit-guest-overhead",
    ),
    # no request: it becomes the limit; no page tables (requests only): overhead 276Mi
    pytest.param({"limits": {"memory": "1Gi"}}, "1300Mi", "1300Mi", id="limit-only"),
    pytest.param(
        {"requests": {"memory": "0"}, "limits": {"memory": "1Gi"}}, "1300Mi", "1300Mi", id="zero-request"
    ),
    # nothing at all: Quantity{} + 276Mi takes the overhead's format
    pytest.param({}, "276Mi", None, id="no-memory"),
    pytest.param({"overcommitGuestOverhead": True}, "0", None, id="no-memory-overcommitted"),
    # an explicit zero request and no limit: the request key exists, so it stays and gets the overhead
    pytest.param({"requests": {"memory": "0"}}, "276Mi", None, id="explicit-zero-request"),
]


@pytest.mark.parametrize(("vmi_resources", "request_text", "limit_text"), MEMORY_CASES)
def test_memory_without_hugepages(
    vmi_resources: dict[str, Any], request_text: str, limit_text: str | None
) -> None:
    requests, limits = resources({"vmi": vmi(resources=vmi_resources)})
    assert requests["memory"] == request_text
    assert limits.get("memory") == limit_text


@pytest.mark.parametrize(
    ("guest", "overcommit", "request_text"),
    [
        # 1Gi x 100 / 150 = 715,827,882 (truncated), BinarySI but not a multiple of 1024; + 276Mi
        ("1Gi", 150, "1005234858"),
        ("1Gi", 100, "1300Mi"),  # not divided: the guest quantity itself, + 276Mi
        # 1e9 x 100 / 200 = 500M (DecimalSI, NewQuantity keeps the guest's format) + 289,406,976
        ("1G", 200, "789406976"),
        ("1Gi", 50, "2324Mi"),  # 2Gi + 276Mi
    ],
)
def test_missing_request_from_guest_memory_and_memory_overcommit(
    guest: str, overcommit: int, request_text: str
) -> None:
    body = {
        "vmi": vmi(resources={}, memory={"guest": guest}),
        "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": overcommit}},
    }
    requests, limits = resources(body)
    assert requests["memory"] == request_text
    assert "memory" not in limits


def test_memory_overcommit_is_ignored_when_a_request_is_given() -> None:
    body = {"vmi": vmi(), "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": 150}}}
    assert resources(body)[0]["memory"] == "1302Mi"


@pytest.mark.parametrize(
    "developer",
    [
        {"memoryOvercommit": 0, "cpuAllocationRatio": 0},
        {"memoryOvercommit": None, "cpuAllocationRatio": None},
        {},
    ],
)
def test_zero_valued_configuration_keeps_the_defaults(developer: dict[str, Any]) -> None:
    """virt-config merges the CR over its defaults through JSON, and both fields are ``omitempty``:
    a 0 never arrives, so memoryOvercommit stays 100 and cpuAllocationRatio 10."""
    body = {
        "vmi": vmi(resources={}, memory={"guest": "1Gi"}),
        "kubevirtConfiguration": {"developerConfiguration": developer},
    }
    requests, _ = resources(body)
    assert requests["memory"] == resources({"vmi": body["vmi"]})[0]["memory"]
    assert _value(requests["memory"]) == GI + OVERHEAD_NO_MEMORY_2CPU
    assert requests["cpu"] == "200m"  # 2 vCPUs / 10


# --- memory: hugepages --------------------------------------------------------------------------

HUGEPAGES_CASES = [
    # hugepages hold the request; the memory request is the overhead alone, in its (DecimalSI) format
    pytest.param({"requests": {"memory": "1Gi"}}, None, "2Mi", "1Gi", "291504128", None, id="request"),
    pytest.param({"requests": {"memory": "1Gi"}}, None, "1Gi", "1Gi", "291504128", None, id="1Gi-pages"),
    # guest smaller than the request: hugepages hold the guest, the rest goes to memory:
    # (1Gi - 512Mi) + 291,504,128 = 828,375,040 = 790Mi
    pytest.param({"requests": {"memory": "1Gi"}}, "512Mi", "2Mi", "512Mi", "790Mi", None, id="guest"),
    # and the limit: (2Gi - 512Mi) + 291,504,128 = 1,902,116,864 = 1814Mi
    pytest.param(
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "512Mi",
        "2Mi",
        "512Mi",
        "790Mi",
        "1814Mi",
        id="guest-limit",
    ),
    # a limit not above the guest: the limit is the overhead alone
    pytest.param(
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        None,
        "2Mi",
        "1Gi",
        "291504128",
        "291504128",
        id="limit",
    ),
    # no request and no guest: the request becomes the page size (upstream), overhead 276Mi
    pytest.param({}, None, "2Mi", "2Mi", "276Mi", None, id="page-size-request"),
    # overcommitGuestOverhead does not apply to hugepages
    pytest.param(
        {"requests": {"memory": "1Gi"}, "overcommitGuestOverhead": True},
        None,
        "2Mi",
        "1Gi",
        "291504128",
        None,
        id="overcommit-guest-overhead",
    ),
]


@pytest.mark.parametrize(
    ("vmi_resources", "guest", "page_size", "pages", "memory_request", "memory_limit"), HUGEPAGES_CASES
)
def test_hugepages(
    vmi_resources: dict[str, Any],
    guest: str | None,
    page_size: str,
    pages: str,
    memory_request: str,
    memory_limit: str | None,
) -> None:
    memory: dict[str, Any] = {"hugepages": {"pageSize": page_size}}
    if guest is not None:
        memory["guest"] = guest
    requests, limits = resources({"vmi": vmi(resources=vmi_resources, memory=memory)})
    name = f"hugepages-{page_size}"
    assert requests[name] == limits[name] == pages  # hugepages: limit = request, always
    assert requests["memory"] == memory_request
    assert limits.get("memory") == memory_limit


@pytest.mark.parametrize(
    ("memory", "overcommit", "pages", "memory_request"),
    [
        # v1.9.0's WithMemoryRequests divides hugepages memory too: 1Gi x 100 / 150 = 715,827,882
        # bytes, not a whole number of 2Mi pages; memory is the overhead (276Mi)
        ({"guest": "1Gi"}, 150, "715827882", "276Mi"),
        # below 100 the request exceeds the guest: hugepages hold the guest, the surplus
        # 1,193,046,471 - 1Gi = 119,304,647 joins the overhead (289,406,976) in regular memory
        ({"guest": "1Gi"}, 90, "1Gi", str(119_304_647 + OVERHEAD_NO_MEMORY_2CPU)),
        # no guest: the page size, divided (2Mi x 100 / 200 = 1Mi, kept BinarySI)
        ({}, 200, "1Mi", "276Mi"),
        ({"guest": "1Gi"}, 100, "1Gi", "276Mi"),
    ],
)
def test_hugepages_memory_overcommit_divides_the_memory(
    memory: dict[str, str], overcommit: int, pages: str, memory_request: str
) -> None:
    body = {
        "vmi": vmi(resources={}, memory={"hugepages": {"pageSize": "2Mi"}, **memory}),
        "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": overcommit}},
    }
    requests, _ = resources(body)
    assert (requests["hugepages-2Mi"], requests["memory"]) == (pages, memory_request)


# --- CPU ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "ratio", "request_text"),
    [
        ({"cores": 2}, None, "200m"),  # 2 / 10 = 0.2 -> "%gm" of 200
        ({"cores": 4}, 10, "400m"),
        ({"cores": 16}, 10, "1600m"),  # "1.6" parses to 1.6, printed canonically
        ({"cores": 3}, 1, "3"),
        ({"cores": 1, "sockets": 2, "threads": 2}, 8, "500m"),
        ({"cores": 1}, 3, "333333334n"),  # "333.3333333333333m", rounded up to nano by ParseQuantity
        ({"cores": 1000000}, 1, "1e6"),  # %g: "1e+06", a DecimalExponent quantity
        ({"cores": 4294967295}, 1, "4294967295"),  # "4.294967295e+09"
        (None, 10, "100m"),  # no cpu struct: one vCPU
        ({"cores": 0}, 10, None),  # a present all-zero topology: no CPU request
        # 0 is omitted by virt-config's JSON merge (omitempty), so the default 10 stays
        ({"cores": 2}, 0, "200m"),
    ],
)
def test_cpu_request_from_cpu_allocation_ratio(
    cpu: dict[str, int] | None, ratio: int | None, request_text: str | None
) -> None:
    domain: dict[str, Any] = {"cpu": cpu} if cpu is not None else {"cpu": None}
    config = {} if ratio is None else {"developerConfiguration": {"cpuAllocationRatio": ratio}}
    requests, limits = resources({"vmi": vmi(**domain), "kubevirtConfiguration": config})
    assert requests.get("cpu") == request_text
    assert "cpu" not in limits


def test_supplemental_io_threads_count_towards_the_cpu_request() -> None:
    spec = vmi(ioThreadsPolicy="supplementalPool", ioThreads={"supplementalPoolThreadCount": 2})
    assert resources({"vmi": spec})[0]["cpu"] == "400m"  # (2 + 2) / 10


def test_explicit_cpu_requests_and_limits_win() -> None:
    requests, limits = resources({"vmi": vmi(resources={"requests": {"memory": "1Gi", "cpu": "1500m"}})})
    assert requests["cpu"] == "1500m"
    assert "cpu" not in limits
    requests, limits = resources(
        {"vmi": vmi(resources={"requests": {"memory": "1Gi"}, "limits": {"cpu": "3"}})}
    )
    assert (requests["cpu"], limits["cpu"]) == ("200m", "3")


def test_unparsable_cpu_request_is_refused() -> None:
    # 1 / 10^12 x 1000 = 1e-09 -> "1e-09m", which ParseQuantity refuses (virt-controller would panic)
    body = {
        "vmi": vmi(cpu={"cores": 1}),
        "kubevirtConfiguration": {"developerConfiguration": {"cpuAllocationRatio": 10**12}},
    }
    with pytest.raises(InputError) as err:
        answer(body)
    assert err.value.path == "kubevirtConfiguration.developerConfiguration.cpuAllocationRatio"


@pytest.mark.parametrize(
    ("cpu", "annotations", "extra", "cpu_text"),
    [
        ({"cores": 2}, {}, {}, "2"),
        ({"cores": 2, "sockets": 2}, {}, {}, "4"),
        ({"cores": 2, "isolateEmulatorThread": True}, {}, {}, "3"),
        # even parity: 2 vCPUs + 0 -> even, so two emulator threads
        (
            {"cores": 2, "isolateEmulatorThread": True},
            {"alpha.kubevirt.io/EmulatorThreadCompleteToEvenParity": ""},
            {},
            "4",
        ),
        (
            {"cores": 3, "isolateEmulatorThread": True},
            {"alpha.kubevirt.io/EmulatorThreadCompleteToEvenParity": ""},
            {},
            "4",
        ),
        # supplemental IO threads: 2 + 2 = 4, parity 4 + 2 = 6 is even -> + 2
        (
            {"cores": 2, "isolateEmulatorThread": True},
            {"alpha.kubevirt.io/EmulatorThreadCompleteToEvenParity": ""},
            {"ioThreadsPolicy": "supplementalPool", "ioThreads": {"supplementalPoolThreadCount": 2}},
            "6",
        ),
        ({"cores": 1024}, {}, {}, "1Ki"),  # NewQuantity(1024, BinarySI) prints so
    ],
)
def test_dedicated_cpus(
    cpu: dict[str, Any], annotations: dict[str, str], extra: dict[str, Any], cpu_text: str
) -> None:
    spec = vmi(cpu={**cpu, "dedicatedCpuPlacement": True}, **extra)
    spec["metadata"]["annotations"] = annotations
    requests, limits = resources({"vmi": spec})
    assert requests["cpu"] == limits["cpu"] == cpu_text
    assert requests["memory"] == limits["memory"]


def test_dedicated_cpus_memory_limit_is_the_request() -> None:
    requests, limits = resources({"vmi": vmi(cpu={"cores": 2, "dedicatedCpuPlacement": True})})
    # overhead + 100Mi: 396,361,728; 1Gi + that = 1,470,103,552 = 1402Mi, request and limit
    assert (requests["memory"], limits["memory"]) == ("1402Mi", "1402Mi")
    assert (requests["cpu"], limits["cpu"]) == ("2", "2")


def test_dedicated_cpus_with_overcommit_guest_overhead_limit_keeps_the_overhead() -> None:
    spec = vmi(
        cpu={"cores": 2, "dedicatedCpuPlacement": True},
        resources={"requests": {"memory": "1Gi"}, "overcommitGuestOverhead": True},
    )
    requests, limits = resources({"vmi": spec})
    assert (requests["memory"], limits["memory"]) == ("1Gi", "1402Mi")


def test_dedicated_cpus_without_topology_keep_the_vmi_cpu() -> None:
    spec = vmi(
        cpu={"dedicatedCpuPlacement": True, "cores": 0},
        resources={"requests": {"memory": "1Gi", "cpu": "2"}, "limits": {"memory": "1Gi", "cpu": "2"}},
        ioThreads={"supplementalPoolThreadCount": 1},
    )
    requests, limits = resources({"vmi": spec})
    assert (requests["cpu"], limits["cpu"]) == ("3", "3")  # 2 + 1 IO thread


# --- auto limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "limit_text"),
    [
        ({}, "2604Mi"),  # 1,365,245,952 x 2.0 = 2,730,491,904 = 2604Mi (the request's BinarySI)
        ({RATIO_LABEL: "1.5"}, "1953Mi"),  # 2,047,868,928
        ({RATIO_LABEL: "3"}, "3906Mi"),
        ({RATIO_LABEL: "1.1"}, "1501770547"),  # 1,501,770,547.2 truncated; not a 1024 multiple
        ({RATIO_LABEL: "0.5"}, "2604Mi"),  # below 1: the default 2.0
        ({RATIO_LABEL: "abc"}, "2604Mi"),  # unparsable: 2.0
        ({RATIO_LABEL: " 1.5"}, "2604Mi"),  # Go's ParseFloat refuses spaces
        ({RATIO_LABEL: "0x1.8p0"}, "1953Mi"),  # ... and accepts hex floats (1.5)
    ],
)
def test_auto_memory_limits_ratio(labels: dict[str, str], limit_text: str) -> None:
    body = {"vmi": vmi(), "namespace": {"labels": labels, "resourceQuotaLimitsMemory": True}}
    requests, limits = resources(body)
    assert requests["memory"] == "1302Mi"
    assert limits["memory"] == limit_text


def test_auto_memory_limits_need_a_quota_and_no_vmi_limit() -> None:
    assert "memory" not in resources({"vmi": vmi(), "namespace": {"labels": {RATIO_LABEL: "3"}}})[1]
    with_limit = vmi(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}})
    body = {"vmi": with_limit, "namespace": {"resourceQuotaLimitsMemory": True}}
    assert resources(body)[1]["memory"] == "2326Mi"


def test_auto_memory_limit_keeps_the_overheads_format() -> None:
    # No memory request: the request is Quantity{} + overhead, in the overhead's format (BinarySI,
    # from the 25Mi constant), even though 276Mi + 512 bytes = 289,407,488 prints as plain digits.
    # Doubled: 578,814,976 = 565249Ki, which only a BinarySI quantity prints so.
    spec = vmi(resources={}, memory={"reservedOverhead": {"addedOverhead": "512"}})
    requests, limits = resources({"vmi": spec, "namespace": {"resourceQuotaLimitsMemory": True}})
    assert (requests["memory"], limits["memory"]) == ("289407488", "565249Ki")


def test_dedicated_memory_limit_beats_the_auto_limit() -> None:
    spec = vmi(cpu={"cores": 2, "dedicatedCpuPlacement": True})
    _, limits = resources({"vmi": spec, "namespace": {"resourceQuotaLimitsMemory": True}})
    assert limits["memory"] == "1402Mi"


@pytest.mark.parametrize("ratio", ["NaN", "inf", "1e300"])
def test_auto_memory_limits_ratio_with_platform_dependent_result_is_refused(ratio: str) -> None:
    body = {"vmi": vmi(), "namespace": {"labels": {RATIO_LABEL: ratio}, "resourceQuotaLimitsMemory": True}}
    with pytest.raises(InputError) as err:
        answer(body)
    assert err.value.path == f"namespace.labels.{RATIO_LABEL}"


@pytest.mark.parametrize(
    ("namespace", "selector", "limit"),
    [
        ({"resourceQuotaLimitsCpu": True}, None, "2"),
        ({"resourceQuotaLimitsCpu": False}, None, None),
        (None, None, None),
        ({"labels": {"team": "a"}}, {"matchLabels": {"team": "a"}}, "2"),
        ({"labels": {"team": "b"}}, {"matchLabels": {"team": "a"}}, None),
        ({"labels": {}}, {}, "2"),  # an empty selector matches everything
        (None, {}, None),  # ... but an unknown namespace is not in the informer
        (
            {"labels": {"team": "b"}},
            {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
            "2",
        ),
        (
            {"labels": {"team": "a"}},
            {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
            None,
        ),
        ({"labels": {}}, {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, "2"),
        ({"labels": {"team": "a"}}, {"matchExpressions": [{"key": "team", "operator": "Exists"}]}, "2"),
        (
            {"labels": {"team": "a"}},
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
            "2",
        ),
        # selectors Kubernetes refuses to build match nothing
        (
            {"labels": {"team": "a"}},
            {"matchExpressions": [{"key": "team", "operator": "in", "values": ["a"]}]},
            None,
        ),
        (
            {"labels": {"team": "a"}},
            {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]},
            None,
        ),
        (
            {"labels": {}},
            {"matchExpressions": [{"key": "team", "operator": "DoesNotExist", "values": ["a"]}]},
            None,
        ),
        ({"labels": {"team!": "a"}}, {"matchLabels": {"team!": "a"}}, None),
    ],
)
def test_auto_cpu_limits(
    namespace: dict[str, Any] | None, selector: dict[str, Any] | None, limit: str | None
) -> None:
    body: dict[str, Any] = {"vmi": vmi(), "namespace": namespace}
    if selector is not None:
        body["kubevirtConfiguration"] = {"autoCPULimitNamespaceLabelSelector": selector}
    requests, limits = resources(body)
    assert requests["cpu"] == "200m"
    assert limits.get("cpu") == limit


def test_auto_cpu_limits_not_with_a_vmi_cpu_limit() -> None:
    spec = vmi(resources={"requests": {"memory": "1Gi"}, "limits": {"cpu": "4"}})
    assert resources({"vmi": spec, "namespace": {"resourceQuotaLimitsCpu": True}})[1]["cpu"] == "4"


# --- devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "device"),
    [
        ({}, KVM),
        ({"hypervisor": "mshv"}, "devices.kubevirt.io/mshv"),
        ({"hypervisor": "hyperv-direct"}, "devices.kubevirt.io/mshv"),
        (
            {
                "kubevirtConfiguration": {
                    "developerConfiguration": {"featureGates": ["ConfigurableHypervisor"]},
                    "hypervisors": [{"name": "hyperv-direct"}],
                }
            },
            "devices.kubevirt.io/mshv",
        ),
        ({"kubevirtConfiguration": {"developerConfiguration": {"useEmulation": True}}}, None),
        ({"hypervisor": "mshv", "node": {"emulationAllowed": True}}, None),
    ],
)
def test_hypervisor_device(body: dict[str, Any], device: str | None) -> None:
    got = answer({"vmi": vmi(devices={"interfaces": [{"name": "default", "masquerade": {}}]}), **body})
    limits = got["resources"]["limits"]
    devices = {name for name in limits if name in (KVM, "devices.kubevirt.io/mshv")}
    assert devices == ({device} if device else set())
    assert got["hypervisor"]["deviceResource"] == device
    assert (VHOST_NET in limits) is (device is not None)  # no /dev/vhost-net under emulation
    assert limits[TUN] == "1"
    assert not any(name.startswith("devices.kubevirt.io/") for name in got["resources"]["requests"])


@pytest.mark.parametrize(
    ("devices", "present", "absent"),
    [
        ({}, {TUN}, {VHOST_NET, "devices.kubevirt.io/vhost-vsock"}),
        ({"autoattachPodInterface": False}, set(), {TUN, VHOST_NET}),
        (
            {"autoattachPodInterface": False, "interfaces": [{"name": "a", "model": "e1000"}]},
            {TUN},
            {VHOST_NET},
        ),
        ({"interfaces": [{"name": "a", "model": "virtio"}]}, {TUN, VHOST_NET}, set()),
        ({"interfaces": [None]}, {TUN, VHOST_NET}, set()),  # a null element is a zero struct: model ""
        ({"autoattachVSOCK": True}, {"devices.kubevirt.io/vhost-vsock"}, set()),
    ],
)
def test_network_and_vsock_devices(devices: dict[str, Any], present: set[str], absent: set[str]) -> None:
    _, limits = resources({"vmi": vmi(devices=devices)})
    assert present <= limits.keys()
    assert not absent & limits.keys()
    assert all(limits[name] == "1" for name in present)


def test_device_plugin_resources_in_requests_and_limits() -> None:
    spec = vmi(
        devices={
            "gpus": [
                {"name": "g1", "deviceName": "nvidia.com/GP100"},
                {"name": "g2", "deviceName": "nvidia.com/GP100"},
                {"name": "g3", "claimRequest": {"claimName": "c", "requestName": "r"}},
            ],
            "hostDevices": [{"name": "h1", "deviceName": "intel.com/qat"}],
            "disks": [{"name": "d1", "lun": {"reservation": True}}],
        },
        launchSecurity={"snp": {}},
    )
    requests, limits = resources({"vmi": spec})
    expected = {
        "nvidia.com/GP100": "2",
        "intel.com/qat": "1",
        "devices.kubevirt.io/sev": "1",  # SNP counts as SEV
        "devices.kubevirt.io/pr-helper": "1",
    }
    for name, count in expected.items():
        assert (requests[name], limits[name]) == (count, count)


def test_vmi_entries_win_over_bumped_device_counts() -> None:
    # The VMI's own limit overlays the calculated one; the request (absent in the VMI) is counted.
    spec = vmi(
        devices={"gpus": [{"name": "g1", "deviceName": "nvidia.com/GP100"}]},
        resources={"requests": {"memory": "1Gi"}, "limits": {"nvidia.com/GP100": "5"}},
    )
    requests, limits = resources({"vmi": spec})
    assert (requests["nvidia.com/GP100"], limits["nvidia.com/GP100"]) == ("1", "5")


def test_tdx_device() -> None:
    requests, limits = resources({"vmi": vmi(launchSecurity={"tdx": {}})})
    assert requests["devices.kubevirt.io/tdx"] == limits["devices.kubevirt.io/tdx"] == "1"
    assert "devices.kubevirt.io/sev" not in limits


def test_ephemeral_storage_and_other_vmi_entries() -> None:
    spec = vmi(
        resources={
            "requests": {"memory": "1Gi", "ephemeral-storage": "1Gi", "example.com/foo": "3"},
            "limits": {"ephemeral-storage": "2Gi"},
        }
    )
    requests, limits = resources({"vmi": spec})
    # 1Gi + 50M = 1,123,741,824: BinarySI, not a multiple of 1024, so plain digits
    assert requests["ephemeral-storage"] == "1123741824"
    assert limits["ephemeral-storage"] == "2197483648"
    assert requests["example.com/foo"] == "3"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"vmi": vmi(), "extra": 1}, "extra"),
        ({"vmi": vmi(), "namespace": {"label": {}}}, "namespace.label"),
        ({"vmi": vmi(), "namespace": []}, "namespace"),
        ({"vmi": vmi(), "namespace": {"labels": {"a": 5}}}, "namespace.labels.a"),
        (
            {"vmi": vmi(), "namespace": {"resourceQuotaLimitsMemory": "yes"}},
            "namespace.resourceQuotaLimitsMemory",
        ),
        (
            {"vmi": vmi(), "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": -1}}},
            "kubevirtConfiguration.developerConfiguration.memoryOvercommit",
        ),
        (
            {"vmi": vmi(), "kubevirtConfiguration": {"developerConfiguration": {"cpuAllocationRatio": -4}}},
            "kubevirtConfiguration.developerConfiguration.cpuAllocationRatio",
        ),
        (
            {"vmi": vmi(resources={"requests": {"memory": "-1Gi"}})},
            "vmi.spec.domain.resources.requests.memory",
        ),
        (
            {"vmi": vmi(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "-0.5"}})},
            "vmi.spec.domain.resources.limits.memory",
        ),
        (
            {"vmi": vmi(resources={"requests": {"memory": "1Gi", "cpu": "-100m"}})},
            "vmi.spec.domain.resources.requests.cpu",
        ),
        (
            {"vmi": vmi(resources={"requests": {"memory": "1Gi"}, "limits": {"cpu": "-0.0001"}})},
            "vmi.spec.domain.resources.limits.cpu",
        ),
        (
            {"vmi": vmi(), "kubevirtConfiguration": {"developerConfiguration": {"cpuAllocationRatio": "10"}}},
            "kubevirtConfiguration.developerConfiguration.cpuAllocationRatio",
        ),
        (
            {
                "vmi": vmi(),
                "kubevirtConfiguration": {"autoCPULimitNamespaceLabelSelector": {"matchLabels": {"a": 1}}},
            },
            "kubevirtConfiguration.autoCPULimitNamespaceLabelSelector.matchLabels.a",
        ),
        ({"vmi": vmi(resources={"requests": {"foo": "abc"}})}, "vmi.spec.domain.resources.requests.foo"),
        (
            {"vmi": vmi(resources={"overcommitGuestOverhead": 1})},
            "vmi.spec.domain.resources.overcommitGuestOverhead",
        ),
        ({"vmi": vmi(memory={"hugepages": {"pageSize": 2}})}, "vmi.spec.domain.memory.hugepages.pageSize"),
        ({"vmi": vmi(devices={"interfaces": [{"model": 1}]})}, "vmi.spec.domain.devices.interfaces[0].model"),
        ({"vmi": vmi(devices={"disks": [{"lun": []}]})}, "vmi.spec.domain.devices.disks[0].lun"),
        ({"vmi": {"metadata": {"annotations": {"a": None}}}}, "vmi.metadata.annotations.a"),
        ({"vmi": vmi(cpu={"cores": -1})}, "vmi.spec.domain.cpu.cores"),  # the service's own check
        ({}, "vmi"),
    ],
)
def test_bad_input_names_the_path(body: dict[str, Any], path: str) -> None:
    with pytest.raises(InputError) as err:
        render(body, SERVICE)
    assert err.value.path == path


def test_body_must_be_an_object() -> None:
    with pytest.raises(InputError) as err:
        render([], SERVICE)
    assert err.value.path == ""


def test_the_request_is_not_modified() -> None:
    body = {"vmi": vmi(), "namespace": {"resourceQuotaLimitsMemory": True}}
    before = copy.deepcopy(body)
    render(body, SERVICE)
    assert body == before


# --- Go's %g ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (0.2, "0.2"),
        (200.0, "200"),
        (1.5, "1.5"),
        (123456.0, "123456"),
        (999999.5, "999999.5"),
        (1e6, "1e+06"),
        (1.5e6, "1.5e+06"),
        (4294967295.0, "4.294967295e+09"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e-9, "1e-09"),
        (1 / 3, "0.3333333333333333"),
        (-2.5, "-2.5"),
        (1e100, "1e+100"),
    ],
)
def test_go_format_g(value: float, text: str) -> None:
    assert go_format_g(value) == text


# --- properties ---------------------------------------------------------------------------------

MEMORY_TEXTS = ["512Mi", "1Gi", "1.5Gi", "2G", "3000M", "4096Mi", "123456789", "16Gi"]
# Of those, the one Go's ParseQuantity keeps as an inf.Dec (a binary suffix with a fraction).
DECIMAL_FORM = {"1.5Gi"}


@st.composite
def render_bodies(draw: st.DrawFn) -> dict[str, Any]:
    request = draw(st.sampled_from(MEMORY_TEXTS))
    resources_spec: dict[str, Any] = {"requests": {"memory": request}}
    if draw(st.booleans()):
        resources_spec["limits"] = {"memory": draw(st.sampled_from(MEMORY_TEXTS))}
    resources_spec["overcommitGuestOverhead"] = draw(st.booleans())
    domain: dict[str, Any] = {
        "cpu": {"cores": draw(st.integers(1, 64)), "dedicatedCpuPlacement": draw(st.booleans())},
        "resources": resources_spec,
        "devices": {},
    }
    if draw(st.booleans()):
        domain["memory"] = {"hugepages": {"pageSize": draw(st.sampled_from(["2Mi", "1Gi"]))}}
    return {
        "vmi": {"spec": {"domain": domain}},
        "table": draw(st.sampled_from(["kubevirt-v1.9.0", "kubevirt-main"])),
        "hypervisor": draw(st.sampled_from(["kvm", "mshv"])),
        "namespace": {"resourceQuotaLimitsMemory": draw(st.booleans())},
    }


def _value(text: str) -> int:
    return parse_quantity(text).value()


@settings(max_examples=150, deadline=None)
@given(render_bodies())
def test_property_memory_placement(body: dict[str, Any]) -> None:
    got = render(body, SERVICE)
    overhead = got["overhead"]["bytes"]
    assert got["annotations"]["kubevirt.io/memory-overhead-bytes"] == str(overhead)
    requests, limits = got["resources"]["requests"], got["resources"]["limits"]
    domain = body["vmi"]["spec"]["domain"]
    resources_spec = domain["resources"]
    guest_request = _value(resources_spec["requests"]["memory"])
    hugepages = "memory" in domain
    dedicated = domain["cpu"]["dedicatedCpuPlacement"]
    # dedicated CPUs copy the request into the limit; a decimal-form copy shares its value
    shared = dedicated and not hugepages and resources_spec["requests"]["memory"] in DECIMAL_FORM
    codes = {w["code"] for w in got["warnings"]}
    assert ("shared-quantity-double-overhead" in codes) == shared
    if hugepages:
        size = domain["memory"]["hugepages"]["pageSize"]
        assert requests[f"hugepages-{size}"] == limits[f"hugepages-{size}"]
        assert _value(requests[f"hugepages-{size}"]) == guest_request
        assert _value(requests["memory"]) == overhead
    elif shared:
        twice = 1 if resources_spec["overcommitGuestOverhead"] else 2
        assert requests["memory"] == limits["memory"]
        assert _value(requests["memory"]) == guest_request + twice * overhead
    elif resources_spec["overcommitGuestOverhead"]:
        assert _value(requests["memory"]) == guest_request
    else:
        assert _value(requests["memory"]) >= guest_request + overhead
    if "limits" in resources_spec and not dedicated and not hugepages:
        assert _value(limits["memory"]) == _value(resources_spec["limits"]["memory"]) + overhead
    if dedicated:
        assert requests["cpu"] == limits["cpu"] == str(domain["cpu"]["cores"])
        if not resources_spec["overcommitGuestOverhead"] and not hugepages:
            assert requests["memory"] == limits["memory"]
    device = f"devices.kubevirt.io/{body['hypervisor']}"
    assert limits[device] == "1"
    if "memory" not in limits:
        assert (
            "limits" not in resources_spec
            and not dedicated
            and not body["namespace"]["resourceQuotaLimitsMemory"]
        )
