"""What the overhead model reads from a VirtualMachineInstance, with KubeVirt's quirks.

Only the fields upstream's ``GetMemoryOverhead`` and the network-binding calculator read are
looked at; everything else in the VMI is ignored.  The fields that are read are validated the way
Go's JSON decoding would reject them (wrong type, integer out of range, illegal quantity), and the
error names the JSON path.  ``null`` is accepted wherever Go would decode it (it means "absent").

Upstream quirks kept on purpose (see ``shared/notes/kubevirt-overhead-algorithm.md`` §2):

* page tables come from ``resources.requests.memory`` only;
* a present ``domain.cpu`` decides the vCPU count from its topology alone (uint32 product that
  wraps), otherwise the *presence* of ``limits.cpu`` beats ``requests.cpu``; at least one vCPU;
* only ``exec`` probes count; only a downward-metrics *volume* counts;
* TPM counts unless ``enabled: false``; SEV counts for ``sev`` or ``snp``, not TDX;
* guaranteed QoS is tested on exact quantity equality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .errors import InputError, InvalidQuantity
from .quantity import ZERO, Format, Quantity, quantity_from_json

__all__ = ["VmiFeatures", "extract_features", "read_quantity"]

_UINT32_MAX: Final = 2**32 - 1
_EMPTY: Final[dict[str, Any]] = {}
_NULL_QUANTITY: Final = Quantity(0, 0, Format.NONE)


@dataclass(frozen=True, slots=True)
class VmiFeatures:
    """The facts about one VMI that the overhead model can depend on."""

    memory_request: Quantity  # requests.memory, zero when absent
    memory_limit: Quantity  # limits.memory, zero when absent
    guest_memory: Quantity  # memory.guest, else requests.memory, else limits.memory
    vcpus: int  # upstream's count, at least 1 (may be huge for a wild limits.cpu)
    graphics: bool
    vfio: bool
    downward_metrics_volume: bool
    liveness_exec: bool
    readiness_exec: bool
    sev: bool
    tpm: bool
    dedicated_cpu: bool
    guaranteed_qos: bool
    reserved_overhead: Quantity | None
    architecture: str  # spec.architecture, "" when unset
    passt: bool  # some interface uses the passt binding
    binding_names: tuple[str, ...]  # distinct interfaces[].binding.name in order

    @property
    def exec_probes(self) -> int:
        return int(self.liveness_exec) + int(self.readiness_exec)


def _object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return _EMPTY
    if type(value) is not dict:
        raise InputError(path, "must be an object")
    return value


def _present(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    """A pointer-to-struct field: None when absent or null, else the object."""
    value = parent.get(key)
    if value is None:
        return None
    if type(value) is not dict:
        raise InputError(f"{path}.{key}", "must be an object or null")
    return value


def _array(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise InputError(f"{path}.{key}", "must be an array or null")
    return value


def _bool(parent: dict[str, Any], key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None or type(value) is bool:
        return value
    raise InputError(f"{path}.{key}", "must be a boolean")


def _uint32(parent: dict[str, Any], key: str, path: str) -> int:
    value = parent.get(key)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= _UINT32_MAX:
        raise InputError(f"{path}.{key}", "must be an integer between 0 and 4294967295")
    return value


def _string(parent: dict[str, Any], key: str, path: str) -> str:
    value = parent.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise InputError(f"{path}.{key}", "must be a string")
    return value


def read_quantity(value: Any, path: str) -> Quantity:
    """A quantity field; ``null`` decodes to Go's zero ``Quantity{}``."""
    if value is None:
        return _NULL_QUANTITY
    try:
        return quantity_from_json(value)
    except InvalidQuantity as err:
        raise InvalidQuantity(path, err.detail) from None


def _items(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    items = _array(parent, key, path)
    for index, item in enumerate(items):
        if item is not None and type(item) is not dict:
            raise InputError(f"{path}.{key}[{index}]", "must be an object")
    # A null element still decodes to a (zero) struct and counts toward the slice's length.
    return [_EMPTY if item is None else item for item in items]


def _vcpus(cpu: dict[str, Any] | None, requests: dict[str, Any], limits: dict[str, Any], path: str) -> int:
    if cpu is not None:
        cpu_path = f"{path}.domain.cpu"
        count = _uint32(cpu, "cores", cpu_path)
        for key in ("sockets", "threads"):
            factor = _uint32(cpu, key, cpu_path)
            if factor:
                count = factor if count == 0 else (count * factor) & _UINT32_MAX
    elif "cpu" in limits:
        count = read_quantity(limits["cpu"], f"{path}.domain.resources.limits.cpu").value()
    elif "cpu" in requests:
        count = read_quantity(requests["cpu"], f"{path}.domain.resources.requests.cpu").value()
    else:
        count = 0
    return max(count, 1)


def extract_features(vmi: Any, path: str = "vmi") -> VmiFeatures:
    """Read and validate the fields of ``vmi`` the overhead model uses."""
    vmi = _object(vmi, path)
    sp = f"{path}.spec"
    spec = _object(vmi.get("spec"), sp)
    dp = f"{sp}.domain"
    domain = _object(spec.get("domain"), dp)

    rp = f"{dp}.resources"
    resources = _object(domain.get("resources"), rp)
    requests = _object(resources.get("requests"), f"{rp}.requests")
    limits = _object(resources.get("limits"), f"{rp}.limits")
    mem_req = read_quantity(requests["memory"], f"{rp}.requests.memory") if "memory" in requests else ZERO
    mem_lim = read_quantity(limits["memory"], f"{rp}.limits.memory") if "memory" in limits else ZERO
    cpu_req = read_quantity(requests["cpu"], f"{rp}.requests.cpu") if "cpu" in requests else ZERO
    cpu_lim = read_quantity(limits["cpu"], f"{rp}.limits.cpu") if "cpu" in limits else ZERO

    cpu = _present(domain, "cpu", dp)
    vcpus = _vcpus(cpu, requests, limits, sp)
    dedicated = bool(cpu is not None and _bool(cpu, "dedicatedCpuPlacement", f"{dp}.cpu"))
    memory_guaranteed = (mem_lim.sign() != 0) if mem_req.is_zero() else mem_req.cmp(mem_lim) == 0
    guaranteed = memory_guaranteed and not cpu_req.is_zero() and cpu_req.cmp(cpu_lim) == 0

    vp = f"{dp}.devices"
    devices = _object(domain.get("devices"), vp)
    graphics = _bool(devices, "autoattachGraphicsDevice", vp) is not False
    host_devices = _items(devices, "hostDevices", vp)
    gpus = _items(devices, "gpus", vp)
    interfaces = _items(devices, "interfaces", vp)
    sriov = passt = False
    names: list[str] = []
    for index, iface in enumerate(interfaces):
        ip = f"{vp}.interfaces[{index}]"
        sriov = _present(iface, "sriov", ip) is not None or sriov
        passt = _present(iface, "passtBinding", ip) is not None or passt
        binding = _present(iface, "binding", ip)
        if binding is not None:
            name = _string(binding, "name", f"{ip}.binding")
            if name not in names:
                names.append(name)
    tpm_spec = _present(devices, "tpm", vp)
    tpm = tpm_spec is not None and _bool(tpm_spec, "enabled", f"{vp}.tpm") is not False

    lp = f"{dp}.launchSecurity"
    launch = _present(domain, "launchSecurity", dp) or _EMPTY
    sev = _present(launch, "sev", lp) is not None
    sev = _present(launch, "snp", lp) is not None or sev

    mp = f"{dp}.memory"
    memory = _present(domain, "memory", dp) or _EMPTY
    guest = read_quantity(memory.get("guest"), f"{mp}.guest") if memory.get("guest") is not None else None
    reserved = _present(memory, "reservedOverhead", mp) or _EMPTY
    added = reserved.get("addedOverhead")
    reserved_overhead = read_quantity(added, f"{mp}.reservedOverhead.addedOverhead") if added is not None else None

    downward = False
    for index, volume in enumerate(_items(spec, "volumes", sp)):
        downward = _present(volume, "downwardMetrics", f"{sp}.volumes[{index}]") is not None or downward

    probes = []
    for key in ("livenessProbe", "readinessProbe"):
        probe = _present(spec, key, sp)
        probes.append(probe is not None and _present(probe, "exec", f"{sp}.{key}") is not None)

    if guest is None:
        guest = mem_req if not mem_req.is_zero() else mem_lim
    return VmiFeatures(
        memory_request=mem_req,
        memory_limit=mem_lim,
        guest_memory=guest,
        vcpus=vcpus,
        graphics=graphics,
        vfio=bool(host_devices or gpus or sriov),
        downward_metrics_volume=downward,
        liveness_exec=probes[0],
        readiness_exec=probes[1],
        sev=sev,
        tpm=tpm,
        dedicated_cpu=dedicated,
        guaranteed_qos=guaranteed,
        reserved_overhead=reserved_overhead,
        architecture=_string(spec, "architecture", sp),
        passt=passt,
        binding_names=tuple(names),
    )
