"""The RLIMIT_MEMLOCK KubeVirt's virt-handler gives a VMI's QEMU, per KubeVirt release.

virt-handler calls its hypervisor runtime's ``AdjustResources(vmi, config)`` before the domain
starts (on virtqemud, whose limit QEMU inherits when it is forked) and again on the running QEMU
(SR-IOV hotplug, migration target); the runtime is chosen by the cluster's configured hypervisor
(``hypervisor.GetVirtRuntime``), not by the node.  Source read for each table's release:

* ``v1.9.0`` (commit 79d34c1762): ``pkg/hypervisor/kvm/runtime.go`` ``AdjustResources`` acts when
  ``vmitrait.HasVFIO`` or ``IsRealtimeEnabled`` or ``util.IsSEVVMI`` or
  ``util.RequiresLockingMemory``, and sets soft = hard = ``CalculateMemlockSize``: the overhead,
  plus the base memory rounded up to whole kB, plus (N − 1) × the base memory for
  N = ``util.CountVFIODevices`` > 1.  ``pkg/hypervisor/mshv/runtime.go`` acts on the first three
  only (``memLock: Required`` is ignored, kubevirt#17815) and adds no (N − 1) term.
* ``main`` (commit d923fdb815, change d951a72249 of kubevirt#17857): both runtimes act on all four
  conditions and set the limit to ``RLIM_INFINITY``.
* Otherwise virt-handler leaves the limit alone: QEMU keeps the container's default.

The number is a ceiling: when a domain needs locked memory (VFIO, ``<locked/>``), libvirt sets
QEMU's own limit at start (``qemuDomainGetMemLockLimitBytes``); it can lower the inherited limit
but, without ``CAP_SYS_RESOURCE`` in virt-launcher, not raise it ("cannot limit locked memory of
process … Operation not permitted", kubevirt commit 44c41fae4b).  :func:`version_for_table` maps a
table to the release whose virt-handler applies.

The overhead in the v1.9.0 sum is ``GetMemoryOverhead(vmi, arch, additionalGuestMemoryOverheadRatio)``
recomputed by virt-handler: no network-binding memory, and ``reservedOverhead.addedOverhead``
included whatever ``memLock`` says (kubevirt#17619).  Use :func:`upstream_overhead` for it and
:func:`memlock_arch` for its architecture.  (A migration target uses
``status.migrationState.targetMemoryOverhead`` instead; a rendered launch never has one.)

The base memory is ``getVMIBaseMemory``: ``memory.maxGuest`` if set, else a non-zero
``requests.memory``, else ``memory.guest``, else 0, read from the VMI as given.  KubeVirt's
mutating webhook normally fills ``memory.guest`` (from requests, limits or the hugepage size) and,
under the default ``LiveUpdate`` rollout strategy, ``memory.maxGuest`` (guest × maxHotplugRatio,
4 by default) for eligible amd64 VMIs of at least 1Gi (``pkg/defaults/defaults.go``); pass the
mutated VMI to get the limit a running cluster applies.

Intended field of the ``POST /v1/render`` answer, ``memlock`` (:meth:`Memlock.to_json`); here a
1Gi VMI with two GPUs on ``kubevirt-v1.9.0``, kvm (overhead 1,356,857,344 = the 1Gi VFIO term
included)::

    {"applies": true, "unlimited": false, "limitBytes": 3504341168,
     "reason": "overhead-plus-base-memory",
     "kubevirtVersion": "v1.9.0", "hypervisor": "kvm",
     "triggers": ["vfio"], "ignoredTriggers": [],
     "vfioDevices": 2,
     "baseMemory": {"bytes": 1073741824, "source": "requests.memory"},
     "components": [{"name": "overhead", "bytes": 1356857344},
                    {"name": "baseMemory", "bytes": 1073742000},
                    {"name": "vfioExtraBaseMemory", "bytes": 1073741824}],
     "includesAddedOverhead": false}

The same VMI on mshv gets 2,430,599,344 (no ``vfioExtraBaseMemory``); on main both get
``{"applies": true, "unlimited": true, "limitBytes": null, "reason": "unlimited", ...}``.

``reason`` is one of ``no-memory-locking`` (nothing asks for it: the container default stays),
``memlock-required-ignored`` (v1.9.0 mshv with ``memLock: Required`` as the only trigger),
``overhead-plus-base-memory`` (v1.9.0, a number) and ``unlimited`` (main).  ``limitBytes`` is the
value the kernel receives (Go converts the int64 sum to uint64), null unless a number is set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from overhead_service.errors import InputError
from overhead_service.model.engine import compute_overhead
from overhead_service.model.fields import EMPTY, read_items, read_object, read_pointer, read_string
from overhead_service.model.quantity import KILO, ZERO, Quantity, wrap_int64
from overhead_service.model.tables import Model
from overhead_service.model.vmi import VmiFeatures, read_quantity

__all__ = [
    "KubeVirtVersion",
    "Memlock",
    "MemlockFacts",
    "base_memory",
    "memlock",
    "memlock_arch",
    "memlock_facts",
    "upstream_overhead",
    "version_for_table",
]

RLIM_INFINITY: Final = 2**64 - 1  # unix.RLIM_INFINITY
_UINT64: Final = 2**64
_MEMLOCK_VALUES: Final = frozenset({"Required", "NotRequired"})  # the CRD's enum
_KVM: Final = "kvm"
_MSHV: Final = "mshv"

_D = "vmi.spec.domain"
_V = "vmi.spec.domain.devices"
_M = "vmi.spec.domain.memory"


class KubeVirtVersion(StrEnum):
    """The KubeVirt source a table reproduces: ``kubevirt-v1.9.0`` (and the tables built on it) or
    ``kubevirt-main``."""

    V1_9_0 = "v1.9.0"
    MAIN = "main"


def version_for_table(table_id: str, parent: str | None = None) -> KubeVirtVersion:
    """The KubeVirt source whose virt-handler applies: ``kubevirt-main`` and tables fitted on it
    follow main; every other built-in table reproduces (or was fitted on) v1.9.0."""
    return KubeVirtVersion.MAIN if "kubevirt-main" in (table_id, parent) else KubeVirtVersion.V1_9_0


@dataclass(frozen=True, slots=True)
class MemlockFacts:
    """What ``AdjustResources`` reads from a VMI."""

    vfio_devices: int  # len(gpus) + len(hostDevices) + interfaces with sriov (CountVFIODevices)
    realtime: bool  # cpu.realtime set (IsRealtimeEnabled)
    sev: bool  # launchSecurity.sev or .snp set (IsSEVVMI)
    memlock: str | None  # reservedOverhead.memLock as given
    added_overhead: bool  # reservedOverhead.addedOverhead set
    max_guest: Quantity | None
    memory_request: Quantity  # requests.memory, zero when absent
    guest: Quantity | None

    @property
    def triggers(self) -> tuple[str, ...]:
        """The conditions that hold, in upstream's order."""
        found = (
            ("vfio", self.vfio_devices > 0),
            ("realtime", self.realtime),
            ("sev", self.sev),
            ("memLockRequired", self.memlock == "Required"),
        )
        return tuple(name for name, held in found if held)


@dataclass(frozen=True, slots=True)
class Memlock:
    """One answer; :meth:`to_json` is the ``memlock`` field of a render answer."""

    applies: bool
    unlimited: bool
    limit_bytes: int | None
    reason: str
    version: KubeVirtVersion
    hypervisor: str
    triggers: tuple[str, ...]
    ignored_triggers: tuple[str, ...]
    vfio_devices: int
    base_bytes: int
    base_source: str
    components: tuple[tuple[str, int], ...]
    includes_added_overhead: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "applies": self.applies,
            "unlimited": self.unlimited,
            "limitBytes": self.limit_bytes,
            "reason": self.reason,
            "kubevirtVersion": self.version.value,
            "hypervisor": self.hypervisor,
            "triggers": list(self.triggers),
            "ignoredTriggers": list(self.ignored_triggers),
            "vfioDevices": self.vfio_devices,
            "baseMemory": {"bytes": self.base_bytes, "source": self.base_source},
            "components": [{"name": name, "bytes": value} for name, value in self.components],
            "includesAddedOverhead": self.includes_added_overhead,
        }


def memlock_facts(vmi: Any) -> MemlockFacts:
    """Read and validate the VMI fields ``AdjustResources`` depends on.

    Only the render path needs these, so they are read here rather than on the ``/v1/overhead``
    hot path; every one of them already lies inside a part of the VMI that
    :func:`overhead_service.model.vmi.memo_key` keys on.
    """
    if type(vmi) is not dict:
        raise InputError("vmi", "must be an object")
    spec = read_object(vmi.get("spec"), "vmi.spec")
    domain = read_object(spec.get("domain"), _D)
    devices = read_object(domain.get("devices"), _V)
    count = len(read_items(devices, "gpus", _V)) + len(read_items(devices, "hostDevices", _V))
    for index, iface in enumerate(read_items(devices, "interfaces", _V)):
        if read_pointer(iface, "sriov", f"{_V}.interfaces[{index}]") is not None:
            count += 1
    cpu = read_object(domain.get("cpu"), f"{_D}.cpu")
    realtime = read_pointer(cpu, "realtime", f"{_D}.cpu") is not None
    launch = read_pointer(domain, "launchSecurity", _D) or EMPTY
    sev = any(read_pointer(launch, key, f"{_D}.launchSecurity") is not None for key in ("sev", "snp"))

    memory = read_object(domain.get("memory"), _M)
    reserved = read_pointer(memory, "reservedOverhead", _M) or EMPTY
    setting = read_string(reserved, "memLock", f"{_M}.reservedOverhead")
    if setting is not None and setting not in _MEMLOCK_VALUES:
        raise InputError(f"{_M}.reservedOverhead.memLock", "must be one of NotRequired, Required")
    added = reserved.get("addedOverhead")
    if added is not None:
        read_quantity(added, f"{_M}.reservedOverhead.addedOverhead")
    max_guest = memory.get("maxGuest")
    guest = memory.get("guest")

    resources = read_object(domain.get("resources"), f"{_D}.resources")
    requests = read_object(resources.get("requests"), f"{_D}.resources.requests")
    request = requests.get("memory")
    return MemlockFacts(
        vfio_devices=count,
        realtime=realtime,
        sev=sev,
        memlock=setting,
        added_overhead=added is not None,
        max_guest=None if max_guest is None else read_quantity(max_guest, f"{_M}.maxGuest"),
        memory_request=ZERO if request is None else read_quantity(request, f"{_D}.resources.requests.memory"),
        guest=None if guest is None else read_quantity(guest, f"{_M}.guest"),
    )


def base_memory(facts: MemlockFacts) -> tuple[Quantity, str]:
    """``getVMIBaseMemory``: maxGuest, else a non-zero requests.memory, else guest, else 0 (kB)."""
    if facts.max_guest is not None:
        return facts.max_guest, "maxGuest"
    if not facts.memory_request.is_zero():
        return facts.memory_request, "requests.memory"
    if facts.guest is not None:
        return facts.guest, "guest"
    return Quantity.scaled(0, KILO), "none"


def memlock_arch(hypervisor: str, vmi_architecture: str, node_arch: str) -> str:
    """The ``cpuArch`` v1.9.0's ``GetMemoryOverhead`` gets inside ``AdjustResources``.

    kvm's ``CalculateMemlockSize`` uses ``spec.architecture`` and falls back to virt-handler's
    ``runtime.GOARCH`` (the node's); mshv's ``AdjustResources`` always uses ``runtime.GOARCH``.
    """
    if hypervisor == _MSHV:
        return node_arch
    return vmi_architecture or node_arch


def upstream_overhead(model: Model, features: VmiFeatures, arch: str, ratio: float | None) -> Quantity:
    """``GetMemoryOverhead``: ``model``'s overhead with the ratio but without network-binding memory.

    ``CalculateMemoryOverhead`` (what the pod gets) adds passt and binding-plugin memory after the
    ratio; virt-handler's memlock sum calls ``GetMemoryOverhead`` directly and so never has it.
    """
    if features.passt or features.binding_names:
        features = dataclasses.replace(features, passt=False, binding_names=())
    return compute_overhead(model, features, arch, ratio, {}).overhead


def memlock(facts: MemlockFacts, hypervisor: str, overhead: Quantity, version: KubeVirtVersion) -> Memlock:
    """The limit virt-handler sets for ``facts`` under ``hypervisor`` (``kvm`` or ``mshv``).

    ``overhead`` is :func:`upstream_overhead` for the VMI (only the v1.9.0 sum uses it).
    """
    if hypervisor not in (_KVM, _MSHV):
        raise ValueError(f"hypervisor must be kvm or mshv, not {hypervisor!r}")
    triggers = facts.triggers
    ignored: tuple[str, ...] = ()
    if version is KubeVirtVersion.V1_9_0 and hypervisor == _MSHV and "memLockRequired" in triggers:
        ignored = ("memLockRequired",)  # mshv's AdjustResources has no RequiresLockingMemory check
    acting = tuple(name for name in triggers if name not in ignored)
    base, source = base_memory(facts)
    answer = Memlock(
        applies=bool(acting),
        unlimited=False,
        limit_bytes=None,
        reason="no-memory-locking" if not triggers else "memlock-required-ignored",
        version=version,
        hypervisor=hypervisor,
        triggers=triggers,
        ignored_triggers=ignored,
        vfio_devices=facts.vfio_devices,
        base_bytes=base.value(),
        base_source=source,
        components=(),
        includes_added_overhead=False,
    )
    if not acting:
        return answer
    if version is KubeVirtVersion.MAIN:
        return dataclasses.replace(answer, unlimited=True, reason="unlimited")
    return _calculated(answer, facts, base, overhead)


def _calculated(answer: Memlock, facts: MemlockFacts, base: Quantity, overhead: Quantity) -> Memlock:
    """v1.9.0's sum, in Go's Quantity arithmetic (``CalculateMemlockSize`` and the mshv copy)."""
    base_kb = Quantity.scaled(base.scaled_value(KILO), KILO)
    total = overhead.add(base_kb)
    components = [("overhead", overhead.value()), ("baseMemory", base_kb.value())]
    if answer.hypervisor == _KVM and facts.vfio_devices > 1:
        # extra := base.DeepCopy(); extra.Set(extra.Value() * int64(N-1)): an int64 product.
        extra = Quantity(wrap_int64(base.value() * (facts.vfio_devices - 1)), 0, base.format)
        total = total.add(extra)
        components.append(("vfioExtraBaseMemory", extra.value()))
    limit = total.value() % _UINT64  # SetProcessMemoryLockRLimit passes uint64(size)
    return dataclasses.replace(
        answer,
        unlimited=limit == RLIM_INFINITY,
        limit_bytes=limit,
        reason="overhead-plus-base-memory",
        components=tuple(components),
        includes_added_overhead=facts.added_overhead,
    )
