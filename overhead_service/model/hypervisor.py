"""Which hypervisor a VMI will run on, and why.

Two selection semantics are supported when the request says ``auto``:

* **upstream** (KubeVirt today): with the ``ConfigurableHypervisor`` feature gate, the first entry
  of ``spec.configuration.hypervisors`` decides; ``hyperv-direct`` is mshv, anything else kvm;
* **the L1VH plan**: with the ``HyperVL1VH`` feature gate every VMI goes to mshv, unless the node
  facts say ``/dev/mshv`` is missing, in which case it stays on kvm.

Without either gate the answer is kvm.  The libvirt domain type follows the hypervisor (``kvm`` or
``hyperv``), or ``qemu`` (TCG) when emulation is allowed and the node lacks the device; the pod
requests the device resource only when emulation is not allowed, as virt-controller renders it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from overhead_service.errors import InputError
from overhead_service.model.fields import read_bool, read_object, read_string

__all__ = [
    "FALLBACK_REASONS",
    "GATE_CONFIGURABLE",
    "GATE_L1VH",
    "REMEDIATION",
    "HypervisorDecision",
    "NodeFacts",
    "Reason",
    "read_node",
    "select",
]

GATE_CONFIGURABLE: Final = "ConfigurableHypervisor"
GATE_L1VH: Final = "HyperVL1VH"


class Reason:
    """Machine-readable reasons; stable strings (they become metric labels)."""

    REQUESTED = "requested"
    FEATURE_GATE_DISABLED = "feature-gate-disabled"
    HYPERVISOR_CONFIGURED = "hypervisor-configured"
    NO_HYPERVISOR_CONFIGURED = "no-hypervisor-configured"
    L1VH_FEATURE_GATE = "l1vh-feature-gate"
    MSHV_DEVICE_UNAVAILABLE = "mshv-device-unavailable"
    EMULATION = "emulation-no-device"


# What an operator can do about a decision that did not get the hypervisor asked for, by reason.
# Logged with every such answer; the keys are the reasons counted as fallbacks in the metrics.
REMEDIATION: Final[dict[str, str]] = {
    Reason.MSHV_DEVICE_UNAVAILABLE: (
        "the HyperVL1VH feature gate asked for mshv but the node has no /dev/mshv, so the VMI runs on "
        "kvm: the node must be an L1VH host with the mshv driver loaded, exposing /dev/mshv through "
        "the KubeVirt device plugin as the resource devices.kubevirt.io/mshv"
    ),
    Reason.EMULATION: (
        "the node exposes neither /dev/kvm nor /dev/mshv, so the VM runs under QEMU TCG (software "
        "emulation, much slower) because useEmulation is on: give the node a hypervisor device "
        "(devices.kubevirt.io/kvm or devices.kubevirt.io/mshv) or schedule the VMI elsewhere"
    ),
}
FALLBACK_REASONS: Final = frozenset(REMEDIATION)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What is known of the target node; None means unknown (assumed present).

    ``mshv_available`` / ``kvm_available``: the device file exists on the node. The other fields are
    what ``overhead-service node-check`` reports besides (:mod:`overhead_service.nodecheck`); no
    decision reads them, so equality and hashing ignore them (decisions are memoised by node facts).
    """

    mshv_available: bool | None = None
    kvm_available: bool | None = None
    emulation_allowed: bool = False
    device_status: Mapping[str, str] = field(default_factory=dict, compare=False)  # mshv/kvm -> status
    modules: Mapping[str, bool] = field(default_factory=dict, compare=False)  # mshv_root/kvm -> loaded
    l1vh_partition: bool | None = field(default=None, compare=False)
    qemu_version: str | None = field(default=None, compare=False)
    qemu_mshv_accelerator: bool | None = field(default=None, compare=False)
    libvirt_version: str | None = field(default=None, compare=False)
    libvirt_hyperv_domain: bool | None = field(default=None, compare=False)
    memlock_soft_bytes: int | None = field(default=None, compare=False)  # None: unlimited or unknown
    cgroup_version: int | None = field(default=None, compare=False)
    hugepages: Mapping[str, tuple[int, int]] = field(
        default_factory=dict, compare=False
    )  # size -> total, free


@dataclass(frozen=True, slots=True)
class HypervisorDecision:
    name: str  # "kvm" or "mshv"
    reason: str
    domain_type: str  # "kvm", "hyperv" or "qemu"
    device_resource: str | None

    @property
    def fallback(self) -> bool:
        """True when the L1VH plan wanted mshv but the node could not give it."""
        return self.reason == Reason.MSHV_DEVICE_UNAVAILABLE

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "reason": self.reason,
            "domainType": self.domain_type,
            "deviceResource": self.device_resource,
        }


def _choose(
    requested: str, gates: frozenset[str], configured: str | None, node: NodeFacts
) -> tuple[str, str]:
    if requested != "auto":
        return requested, Reason.REQUESTED
    if GATE_L1VH in gates:
        if node.mshv_available is False:
            return "kvm", Reason.MSHV_DEVICE_UNAVAILABLE
        return "mshv", Reason.L1VH_FEATURE_GATE
    if GATE_CONFIGURABLE in gates:
        if configured is None:
            return "kvm", Reason.NO_HYPERVISOR_CONFIGURED
        return ("mshv" if configured == "hyperv-direct" else "kvm"), Reason.HYPERVISOR_CONFIGURED
    return "kvm", Reason.FEATURE_GATE_DISABLED


def select(
    requested: str, gates: frozenset[str], configured: str | None, node: NodeFacts
) -> HypervisorDecision:
    """Decide the hypervisor.

    ``requested`` is ``auto``, ``kvm`` or ``mshv``; ``gates`` the enabled feature gates;
    ``configured`` the name of ``hypervisors[0]`` (None when the list is empty or absent).
    """
    name, reason = _choose(requested, gates, configured, node)
    device = name  # the device plugin resource is named after /dev/<device>
    available = node.mshv_available if name == "mshv" else node.kvm_available
    domain_type = "hyperv" if name == "mshv" else "kvm"
    if node.emulation_allowed:
        if available is False:
            domain_type, reason = "qemu", Reason.EMULATION
        return HypervisorDecision(name, reason, domain_type, None)
    return HypervisorDecision(name, reason, domain_type, f"devices.kubevirt.io/{device}")


# --- the request's ``node`` object ----------------------------------------------------------------

DEVICE_STATUSES: Final = ("present", "missing", "permission-denied", "not-a-device", "error")
_DEVICES: Final = {"mshv": "mshvAvailable", "kvm": "kvmAvailable"}


def _section(parent: dict[str, Any], key: str, path: str = "node") -> dict[str, Any]:
    return read_object(parent.get(key), f"{path}.{key}")


def _count(parent: dict[str, Any], key: str, path: str) -> int | None:
    value = parent.get(key)
    if value is not None and (type(value) is not int or value < 0):
        raise InputError(f"{path}.{key}", "must be a non-negative integer or null")
    return value


def read_node(body: dict[str, Any], use_emulation: bool) -> NodeFacts:
    """The request's ``node`` object (``overhead-service node-check --json`` prints one), validated.

    ``emulationAllowed`` or the cluster's ``useEmulation`` allows emulation. ``mshvAvailable`` and
    ``kvmAvailable`` decide; node-check derives them from the device statuses (present or
    permission denied: the file exists), which are informational here like everything else.
    """
    available = {key: read_bool(body, key, "node") for key in _DEVICES.values()}
    statuses = {}
    devices = _section(body, "devices")
    for name, device in devices.items():
        path = f"node.devices.{name}"
        if name not in _DEVICES:
            raise InputError(path, "unknown device; known: kvm, mshv")
        device = _section(devices, name, "node.devices")
        for key in ("path", "remediation"):
            read_string(device, key, path)
        status = read_string(device, "status", path)
        if status is None:
            continue
        if status not in DEVICE_STATUSES:
            raise InputError(f"{path}.status", f"must be one of {', '.join(DEVICE_STATUSES)}")
        statuses[name] = status
    modules = _section(body, "modules")
    for name in modules:
        read_bool(modules, name, "node.modules")
    qemu, libvirt, memlock = _section(body, "qemu"), _section(body, "libvirt"), _section(body, "memlock")
    for key in ("binary", "version"):
        read_string(qemu, key, "node.qemu")
    accelerators = qemu.get("accelerators")
    if accelerators is not None and (
        type(accelerators) is not list or any(type(item) is not str for item in accelerators)
    ):
        raise InputError("node.qemu.accelerators", "must be an array of strings or null")
    for key in ("version", "detail"):
        read_string(libvirt, key, "node.libvirt")
    cgroup = body.get("cgroupVersion")
    if cgroup is not None and (type(cgroup) is not int or cgroup not in (1, 2)):
        raise InputError("node.cgroupVersion", "must be 1, 2 or null")
    _count(memlock, "hardBytes", "node.memlock")
    return NodeFacts(
        mshv_available=available["mshvAvailable"],
        kvm_available=available["kvmAvailable"],
        emulation_allowed=bool(read_bool(body, "emulationAllowed", "node")) or use_emulation,
        device_status=statuses,
        modules={name: loaded for name, loaded in modules.items() if loaded is not None},
        l1vh_partition=read_bool(body, "l1vhPartition", "node"),
        qemu_version=qemu.get("version"),
        qemu_mshv_accelerator=read_bool(qemu, "mshvAccelerator", "node.qemu"),
        libvirt_version=libvirt.get("version"),
        libvirt_hyperv_domain=read_bool(libvirt, "hypervDomain", "node.libvirt"),
        memlock_soft_bytes=_count(memlock, "softBytes", "node.memlock"),
        cgroup_version=cgroup,
        hugepages=_hugepages(body),
    )


def _hugepages(body: dict[str, Any]) -> dict[str, tuple[int, int]]:
    pages = {}
    sizes = _section(body, "hugepages")
    for size in sizes:
        path = f"node.hugepages.{size}"
        entry = _section(sizes, size, "node.hugepages")
        pages[size] = (_count(entry, "total", path) or 0, _count(entry, "free", path) or 0)
    return pages
