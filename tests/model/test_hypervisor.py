"""Tests for overhead_service.model.hypervisor: which hypervisor a VMI runs on, and why.

Upstream (``pkg/hypervisor/launcherhypervisorresources.go``, ``ClusterConfig.GetHypervisor``):
``hypervisors[0]`` counts only with the ``ConfigurableHypervisor`` gate, ``hyperv-direct`` selects
the mshv backend (device ``mshv``, libvirt type ``hyperv``), anything else kvm (device ``kvm``,
type ``kvm``); the pod requests ``devices.kubevirt.io/<device>`` only when emulation is not
allowed, and the mshv converter falls back to domain type ``qemu`` when emulation is allowed and
the device is missing.  The ``HyperVL1VH`` gate is this service's plan on top of that.
"""

from __future__ import annotations

from typing import Any

import pytest

from overhead_service.errors import InputError
from overhead_service.model.hypervisor import (
    GATE_CONFIGURABLE,
    GATE_L1VH,
    HypervisorDecision,
    NodeFacts,
    Reason,
    read_node,
    select,
)
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

CONF = "ConfigurableHypervisor"
L1VH = "HyperVL1VH"
KVM_DEV = "devices.kubevirt.io/kvm"
MSHV_DEV = "devices.kubevirt.io/mshv"


def test_gate_names_and_reasons() -> None:
    assert (GATE_CONFIGURABLE, GATE_L1VH) == (CONF, L1VH)
    assert {
        Reason.REQUESTED,
        Reason.FEATURE_GATE_DISABLED,
        Reason.HYPERVISOR_CONFIGURED,
        Reason.NO_HYPERVISOR_CONFIGURED,
        Reason.L1VH_FEATURE_GATE,
        Reason.MSHV_DEVICE_UNAVAILABLE,
        Reason.EMULATION,
    } == {
        "requested",
        "feature-gate-disabled",
        "hypervisor-configured",
        "no-hypervisor-configured",
        "l1vh-feature-gate",
        "mshv-device-unavailable",
        "emulation-no-device",
    }


SELECT_CASES = [
    # explicit requests win over everything
    ("kvm", (), None, NodeFacts(), ("kvm", "requested", "kvm", KVM_DEV)),
    ("mshv", (), None, NodeFacts(), ("mshv", "requested", "hyperv", MSHV_DEV)),
    ("kvm", (CONF, L1VH), "hyperv-direct", NodeFacts(), ("kvm", "requested", "kvm", KVM_DEV)),
    ("mshv", (CONF,), "kvm", NodeFacts(), ("mshv", "requested", "hyperv", MSHV_DEV)),
    # the pod still requests the device even if the node is known to lack it (no emulation)
    ("kvm", (), None, NodeFacts(kvm_available=False), ("kvm", "requested", "kvm", KVM_DEV)),
    ("mshv", (), None, NodeFacts(mshv_available=False), ("mshv", "requested", "hyperv", MSHV_DEV)),
    # auto without gates: kvm, whatever is configured
    ("auto", (), None, NodeFacts(), ("kvm", "feature-gate-disabled", "kvm", KVM_DEV)),
    ("auto", (), "hyperv-direct", NodeFacts(), ("kvm", "feature-gate-disabled", "kvm", KVM_DEV)),
    (
        "auto",
        ("SomeOtherGate",),
        "hyperv-direct",
        NodeFacts(),
        ("kvm", "feature-gate-disabled", "kvm", KVM_DEV),
    ),
    # ConfigurableHypervisor: hypervisors[0] decides
    ("auto", (CONF,), "hyperv-direct", NodeFacts(), ("mshv", "hypervisor-configured", "hyperv", MSHV_DEV)),
    ("auto", (CONF,), "kvm", NodeFacts(), ("kvm", "hypervisor-configured", "kvm", KVM_DEV)),
    ("auto", (CONF,), None, NodeFacts(), ("kvm", "no-hypervisor-configured", "kvm", KVM_DEV)),
    # HyperVL1VH: mshv unless the node says /dev/mshv is missing
    ("auto", (L1VH,), None, NodeFacts(), ("mshv", "l1vh-feature-gate", "hyperv", MSHV_DEV)),
    (
        "auto",
        (L1VH,),
        None,
        NodeFacts(mshv_available=True),
        ("mshv", "l1vh-feature-gate", "hyperv", MSHV_DEV),
    ),
    (
        "auto",
        (L1VH,),
        None,
        NodeFacts(mshv_available=False),
        ("kvm", "mshv-device-unavailable", "kvm", KVM_DEV),
    ),
    ("auto", (L1VH, CONF), "kvm", NodeFacts(), ("mshv", "l1vh-feature-gate", "hyperv", MSHV_DEV)),
    # emulation allowed: no device resource; a missing device makes the domain TCG ("qemu")
    ("kvm", (), None, NodeFacts(emulation_allowed=True), ("kvm", "requested", "kvm", None)),
    ("mshv", (), None, NodeFacts(emulation_allowed=True), ("mshv", "requested", "hyperv", None)),
    (
        "auto",
        (),
        None,
        NodeFacts(emulation_allowed=True, kvm_available=True),
        ("kvm", "feature-gate-disabled", "kvm", None),
    ),
    (
        "kvm",
        (),
        None,
        NodeFacts(kvm_available=False, emulation_allowed=True),
        ("kvm", "emulation-no-device", "qemu", None),
    ),
    (
        "mshv",
        (),
        None,
        NodeFacts(mshv_available=False, emulation_allowed=True),
        ("mshv", "emulation-no-device", "qemu", None),
    ),
    (
        "auto",
        (CONF,),
        "hyperv-direct",
        NodeFacts(mshv_available=False, emulation_allowed=True),
        ("mshv", "emulation-no-device", "qemu", None),
    ),
    # kvm missing does not matter for an mshv domain, and vice versa
    (
        "mshv",
        (),
        None,
        NodeFacts(kvm_available=False, emulation_allowed=True),
        ("mshv", "requested", "hyperv", None),
    ),
    (
        "kvm",
        (),
        None,
        NodeFacts(mshv_available=False, emulation_allowed=True),
        ("kvm", "requested", "kvm", None),
    ),
    # L1VH fallback to kvm, then emulation
    (
        "auto",
        (L1VH,),
        None,
        NodeFacts(mshv_available=False, emulation_allowed=True),
        ("kvm", "mshv-device-unavailable", "kvm", None),
    ),
    (
        "auto",
        (L1VH,),
        None,
        NodeFacts(mshv_available=False, kvm_available=False, emulation_allowed=True),
        ("kvm", "emulation-no-device", "qemu", None),
    ),
]


@pytest.mark.parametrize(("requested", "gates", "configured", "node", "expected"), SELECT_CASES)
def test_select(
    requested: str, gates: tuple[str, ...], configured: str | None, node: NodeFacts, expected: tuple[Any, ...]
) -> None:
    decision = select(requested, frozenset(gates), configured, node)
    assert isinstance(decision, HypervisorDecision)
    assert (decision.name, decision.reason, decision.domain_type, decision.device_resource) == expected
    assert decision.fallback is (expected[1] == "mshv-device-unavailable")
    assert decision.to_json() == {
        "name": expected[0],
        "reason": expected[1],
        "domainType": expected[2],
        "deviceResource": expected[3],
    }


# --------------------------------------------------------------------------------------------------
# Through OverheadService.compute
# --------------------------------------------------------------------------------------------------

VMI = {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}


@pytest.fixture(scope="module")
def service() -> OverheadService:
    return OverheadService(TableRegistry.builtin())


def _config(
    gates: list[str] | None = None, hypervisors: list[str] | None = None, **dev: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    developer: dict[str, Any] = dict(dev)
    if gates is not None:
        developer["featureGates"] = gates
    if developer:
        config["developerConfiguration"] = developer
    if hypervisors is not None:
        config["hypervisors"] = [{"name": name} for name in hypervisors]
    return config


SERVICE_CASES = [
    ({}, ("kvm", "feature-gate-disabled", "kvm", KVM_DEV), False),
    ({"hypervisor": "auto"}, ("kvm", "feature-gate-disabled", "kvm", KVM_DEV), False),
    ({"hypervisor": "kvm"}, ("kvm", "requested", "kvm", KVM_DEV), False),
    ({"hypervisor": "mshv"}, ("mshv", "requested", "hyperv", MSHV_DEV), True),
    ({"hypervisor": "hyperv-direct"}, ("mshv", "requested", "hyperv", MSHV_DEV), True),
    (
        {"kubevirtConfiguration": _config([CONF], ["hyperv-direct"])},
        ("mshv", "hypervisor-configured", "hyperv", MSHV_DEV),
        True,
    ),
    (
        {"kubevirtConfiguration": _config([CONF], ["kvm"])},
        ("kvm", "hypervisor-configured", "kvm", KVM_DEV),
        False,
    ),
    # only the first entry counts
    (
        {"kubevirtConfiguration": _config([CONF], ["kvm", "hyperv-direct"])},
        ("kvm", "hypervisor-configured", "kvm", KVM_DEV),
        False,
    ),
    (
        {"kubevirtConfiguration": _config([CONF], ["hyperv-direct", "kvm"])},
        ("mshv", "hypervisor-configured", "hyperv", MSHV_DEV),
        True,
    ),
    ({"kubevirtConfiguration": _config([CONF])}, ("kvm", "no-hypervisor-configured", "kvm", KVM_DEV), False),
    (
        {"kubevirtConfiguration": _config([CONF], [])},
        ("kvm", "no-hypervisor-configured", "kvm", KVM_DEV),
        False,
    ),
    # virt-config's JSON merge decodes entry 0 into the default {name: kvm}: an empty or missing
    # name is omitted on the way, so the entry stays kvm
    *[
        (
            {"kubevirtConfiguration": {**_config([CONF]), "hypervisors": [entry]}},
            ("kvm", "hypervisor-configured", "kvm", KVM_DEV),
            False,
        )
        for entry in ({}, {"name": ""}, {"name": None})
    ],
    (
        {"kubevirtConfiguration": {**_config([CONF]), "hypervisors": [{}, {"name": "hyperv-direct"}]}},
        ("kvm", "hypervisor-configured", "kvm", KVM_DEV),
        False,
    ),
    # hyperv-direct without the gate stays on kvm
    (
        {"kubevirtConfiguration": _config(None, ["hyperv-direct"])},
        ("kvm", "feature-gate-disabled", "kvm", KVM_DEV),
        False,
    ),
    (
        {"kubevirtConfiguration": _config([], ["hyperv-direct"])},
        ("kvm", "feature-gate-disabled", "kvm", KVM_DEV),
        False,
    ),
    ({"kubevirtConfiguration": _config([L1VH])}, ("mshv", "l1vh-feature-gate", "hyperv", MSHV_DEV), True),
    (
        {"kubevirtConfiguration": _config([L1VH]), "node": {"mshvAvailable": True}},
        ("mshv", "l1vh-feature-gate", "hyperv", MSHV_DEV),
        True,
    ),
    (
        {"kubevirtConfiguration": _config([L1VH]), "node": {"mshvAvailable": False}},
        ("kvm", "mshv-device-unavailable", "kvm", KVM_DEV),
        False,
    ),
    # emulation from the node facts or from developerConfiguration.useEmulation
    ({"node": {"emulationAllowed": True}}, ("kvm", "feature-gate-disabled", "kvm", None), False),
    (
        {"kubevirtConfiguration": _config(useEmulation=True)},
        ("kvm", "feature-gate-disabled", "kvm", None),
        False,
    ),
    (
        {"kubevirtConfiguration": _config(useEmulation=True), "node": {"kvmAvailable": False}},
        ("kvm", "emulation-no-device", "qemu", None),
        False,
    ),
    (
        {"hypervisor": "mshv", "node": {"emulationAllowed": True, "mshvAvailable": False}},
        ("mshv", "emulation-no-device", "qemu", None),
        True,
    ),
    (
        {"node": {"emulationAllowed": False, "kvmAvailable": False}},
        ("kvm", "feature-gate-disabled", "kvm", KVM_DEV),
        False,
    ),
    ({"node": None, "kubevirtConfiguration": None}, ("kvm", "feature-gate-disabled", "kvm", KVM_DEV), False),
]


@pytest.mark.parametrize(("extra", "expected", "provisional"), SERVICE_CASES)
def test_service_selects_hypervisor(
    service: OverheadService, extra: dict[str, Any], expected: tuple[Any, ...], provisional: bool
) -> None:
    answer = service.compute({"vmi": VMI, "table": "kubevirt-main", **extra})
    assert answer["hypervisor"] == dict(
        zip(("name", "reason", "domainType", "deviceResource"), expected, strict=True)
    )
    assert answer["table"] == {"id": "kubevirt-main", "provisional": provisional}
    # upstream's mshv backend is a line-for-line copy of kvm's: 1Gi on main is 304,087,040 either way
    assert answer["overhead"] == {"quantity": "304087040", "bytes": 304087040}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"hypervisor": "xen"}, "hypervisor"),
        ({"hypervisor": "KVM"}, "hypervisor"),
        ({"hypervisor": 1}, "hypervisor"),
        (
            {"kubevirtConfiguration": {"hypervisors": [{"name": "xen"}]}},
            "kubevirtConfiguration.hypervisors[0].name",
        ),
        (
            {"kubevirtConfiguration": {"hypervisors": [{"name": "kvm"}, {"name": "xen"}]}},
            "kubevirtConfiguration.hypervisors[1].name",
        ),
        ({"kubevirtConfiguration": {"hypervisors": ["kvm"]}}, "kubevirtConfiguration.hypervisors[0]"),
        ({"kubevirtConfiguration": {"hypervisors": {"name": "kvm"}}}, "kubevirtConfiguration.hypervisors"),
        (
            {"kubevirtConfiguration": {"developerConfiguration": {"featureGates": "ConfigurableHypervisor"}}},
            "kubevirtConfiguration.developerConfiguration.featureGates",
        ),
        (
            {"kubevirtConfiguration": {"developerConfiguration": {"featureGates": [1]}}},
            "kubevirtConfiguration.developerConfiguration.featureGates",
        ),
        (
            {"kubevirtConfiguration": {"developerConfiguration": {"useEmulation": "yes"}}},
            "kubevirtConfiguration.developerConfiguration.useEmulation",
        ),
        (
            {"kubevirtConfiguration": {"developerConfiguration": []}},
            "kubevirtConfiguration.developerConfiguration",
        ),
        ({"node": {"mshvAvailable": "yes"}}, "node.mshvAvailable"),
        ({"node": {"kvmAvailable": 1}}, "node.kvmAvailable"),
        ({"node": {"emulationAllowed": 0}}, "node.emulationAllowed"),
        ({"node": []}, "node"),
    ],
)
def test_service_hypervisor_errors(service: OverheadService, body: dict[str, Any], path: str) -> None:
    with pytest.raises(InputError) as raised:
        service.compute({"vmi": VMI, **body})
    assert raised.value.path == path


# --- the node object node-check prints ------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "path"),
    [
        ({"devices": {"xen": {}}}, "node.devices.xen"),
        ({"devices": {"mshv": []}}, "node.devices.mshv"),
        ({"devices": {"mshv": {"status": "gone"}}}, "node.devices.mshv.status"),
        ({"devices": {"kvm": {"remediation": 1}}}, "node.devices.kvm.remediation"),
        ({"modules": {"kvm": "yes"}}, "node.modules.kvm"),
        ({"l1vhPartition": "no"}, "node.l1vhPartition"),
        ({"qemu": {"accelerators": ["tcg", 1]}}, "node.qemu.accelerators"),
        ({"qemu": {"mshvAccelerator": 1}}, "node.qemu.mshvAccelerator"),
        ({"libvirt": {"hypervDomain": "true"}}, "node.libvirt.hypervDomain"),
        ({"memlock": {"softBytes": -1}}, "node.memlock.softBytes"),
        ({"memlock": {"hardBytes": 1.5}}, "node.memlock.hardBytes"),
        ({"cgroupVersion": 3}, "node.cgroupVersion"),
        ({"hugepages": {"2Mi": {"total": "4"}}}, "node.hugepages.2Mi.total"),
        ({"hugepages": {"2Mi": 4}}, "node.hugepages.2Mi"),
    ],
)
def test_node_check_fields_are_validated(service: OverheadService, node: dict[str, Any], path: str) -> None:
    with pytest.raises(InputError) as raised:
        service.compute({"vmi": VMI, "node": node})
    assert raised.value.path == path


def test_node_check_fields_change_no_decision(service: OverheadService) -> None:
    informational = {
        "devices": {"mshv": {"path": "/dev/mshv", "status": "missing", "remediation": "load it"}},
        "modules": {"mshv_root": False, "kvm": None},
        "l1vhPartition": None,
        "qemu": {
            "binary": "/usr/libexec/qemu-kvm",
            "version": "10.1.0",
            "accelerators": [],
            "mshvAccelerator": False,
        },
        "libvirt": {"version": "11.10.0", "hypervDomain": False, "detail": "refused"},
        "memlock": {"softBytes": 8388608, "hardBytes": None},
        "cgroupVersion": 2,
        "hugepages": {"2Mi": {"total": 4, "free": 4}},
    }
    l1vh = {"developerConfiguration": {"featureGates": [L1VH]}}
    plain = service.compute({"vmi": VMI, "kubevirtConfiguration": l1vh, "node": {"mshvAvailable": True}})
    full = service.compute(
        {"vmi": VMI, "kubevirtConfiguration": l1vh, "node": {"mshvAvailable": True, **informational}}
    )
    assert full == plain  # mshvAvailable decides, even against a device status (informational)
    facts = read_node({"mshvAvailable": True, **informational}, use_emulation=False)
    assert facts == NodeFacts(mshv_available=True) and hash(facts) == hash(NodeFacts(mshv_available=True))
    assert (facts.device_status, facts.modules, facts.cgroup_version) == (
        {"mshv": "missing"},
        {"mshv_root": False},
        2,
    )
