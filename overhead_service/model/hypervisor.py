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

from dataclasses import dataclass
from typing import Final

__all__ = [
    "FALLBACK_REASONS",
    "GATE_CONFIGURABLE",
    "GATE_L1VH",
    "REMEDIATION",
    "HypervisorDecision",
    "NodeFacts",
    "Reason",
    "select",
]

GATE_CONFIGURABLE: Final = "ConfigurableHypervisor"
GATE_L1VH: Final = "HyperVL1VH"
UPSTREAM_NAMES: Final = {"kvm": "kvm", "mshv": "hyperv-direct"}


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
    """What is known of the target node; None means unknown (assumed present)."""

    mshv_available: bool | None = None
    kvm_available: bool | None = None
    emulation_allowed: bool = False


@dataclass(frozen=True, slots=True)
class HypervisorDecision:
    name: str  # "kvm" or "mshv"
    reason: str
    domain_type: str  # "kvm", "hyperv" or "qemu"
    device_resource: str | None

    @property
    def upstream_name(self) -> str:
        return UPSTREAM_NAMES[self.name]

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
