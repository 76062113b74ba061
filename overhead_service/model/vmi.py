"""What the overhead model reads from a VirtualMachineInstance, with KubeVirt's quirks.

Only the fields upstream's ``GetMemoryOverhead`` and the network-binding calculator read are
looked at; everything else in the VMI is ignored.  The fields that are read are validated the way
Go's JSON decoding would reject them (wrong type, integer out of range, illegal quantity), and the
error names the JSON path.  ``null`` is accepted wherever Go would decode it (it means "absent").

Upstream quirks kept on purpose (``GetMemoryOverhead`` in ``pkg/hypervisor/{kvm,mshv}/hypervisorbackend.go``):

* page tables come from ``resources.requests.memory`` only;
* a present ``domain.cpu`` decides the vCPU count from its topology alone (uint32 product that
  wraps), otherwise the *presence* of ``limits.cpu`` beats ``requests.cpu``; at least one vCPU;
* only ``exec`` probes count; only a downward-metrics *volume* counts;
* TPM counts unless ``enabled: false``; SEV counts for ``sev`` or ``snp``, not TDX;
* guaranteed QoS is tested on exact quantity equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from overhead_service.errors import InputError, InvalidQuantity
from overhead_service.model.fields import EMPTY, read_bool, read_items, read_pointer, read_string
from overhead_service.model.quantity import GO_ZERO, ZERO, Quantity, quantity_from_json

__all__ = ["VmiFeatures", "downward_metrics_volume", "extract_features", "memo_key", "read_quantity"]

_UINT32_MAX: Final = 2**32 - 1


FEATURE_NAMES: Final = (
    "graphics",
    "vfio",
    "downwardMetricsVolume",
    "execProbe",
    "sev",
    "tpm",
    "dedicatedCpu",
    "guaranteedQos",
    "dedicatedCpuOrGuaranteedQos",
    "reservedOverhead",
    "passt",
)


@dataclass(slots=True)
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

    # Read for warnings only (they change no overhead): memory locking in virt-handler, and the
    # first negative size KubeVirt refuses (the JSON path), None when there is none.
    realtime: bool = False  # cpu.realtime is set
    mem_lock_required: bool = False  # reservedOverhead.memLock is "Required"
    negative: str | None = None

    # FEATURE_NAMES -> value, for table conditions. Derived from the fields above, so that a copy
    # made with dataclasses.replace always agrees with its fields.
    flags: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dedicated, guaranteed = self.dedicated_cpu, self.guaranteed_qos
        self.flags = {
            "graphics": self.graphics,
            "vfio": self.vfio,
            "downwardMetricsVolume": self.downward_metrics_volume,
            "execProbe": self.liveness_exec or self.readiness_exec,
            "sev": self.sev,
            "tpm": self.tpm,
            "dedicatedCpu": dedicated,
            "guaranteedQos": guaranteed,
            "dedicatedCpuOrGuaranteedQos": dedicated or guaranteed,
            "reservedOverhead": self.reserved_overhead is not None,
            "passt": self.passt,
        }

    @property
    def exec_probes(self) -> int:
        return int(self.liveness_exec) + int(self.readiness_exec)


def _uint32(parent: dict[str, Any], key: str, path: str) -> int:
    value = parent.get(key)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= _UINT32_MAX:
        raise InputError(f"{path}.{key}", "must be an integer between 0 and 4294967295")
    return value


def read_quantity(value: Any, path: str) -> Quantity:
    """A quantity field; ``null`` decodes to Go's zero ``Quantity{}``."""
    if value is None:
        return GO_ZERO
    try:
        return quantity_from_json(value)
    except InvalidQuantity as err:
        raise type(err)(path, err.detail) from None


_S = "vmi.spec"
_D = "vmi.spec.domain"
_R = "vmi.spec.domain.resources"
_C = "vmi.spec.domain.cpu"
_V = "vmi.spec.domain.devices"
_M = "vmi.spec.domain.memory"
_REQUESTS = f"{_R}.requests"
_LIMITS = f"{_R}.limits"
_GUEST = f"{_M}.guest"
# The four resource sizes, in the order the first negative one is reported.
_SIZES = (f"{_REQUESTS}.memory", f"{_LIMITS}.memory", f"{_REQUESTS}.cpu", f"{_LIMITS}.cpu")
_REQUESTS_MEMORY, _LIMITS_MEMORY, _REQUESTS_CPU, _LIMITS_CPU = _SIZES


def _not_object(path: str) -> InputError:
    return InputError(path, "must be an object or null")


def _quantity_at(mapping: dict[str, Any], key: str, path: str) -> Quantity:
    """The resource-list entry ``key`` (at ``path``): zero when the key is absent (Go's map lookup)."""
    if key not in mapping:
        return ZERO
    return read_quantity(mapping[key], path)


def extract_features(vmi: Any) -> VmiFeatures:
    """Read and validate the fields of ``vmi`` the overhead model uses, one section after another in
    a fixed order (so the first error reported is always the same).

    Written for speed (it runs for every VMI of a 10,000-item batch): an absent section costs one
    dictionary lookup, and JSON paths are only built for an error."""
    if type(vmi) is not dict:
        raise InputError("vmi", "must be an object")
    spec = vmi.get("spec")
    if spec is None:
        spec = EMPTY
    elif type(spec) is not dict:
        raise _not_object(_S)
    domain = spec.get("domain")
    if domain is None:
        domain = EMPTY
    elif type(domain) is not dict:
        raise _not_object(_D)

    requests, limits, mem_req, mem_lim, guaranteed, negative = _resources(domain.get("resources"))
    vcpus, dedicated, realtime = _cpu(domain.get("cpu"), requests, limits)
    devices = domain.get("devices")
    graphics, vfio, passt, tpm, names = _NO_DEVICES if devices is None else _devices(devices)
    sev = False if domain.get("launchSecurity") is None else _sev(domain)
    memory = domain.get("memory")
    guest, reserved_overhead, mem_lock_required = _NO_MEMORY if memory is None else _memory(memory)
    downward = downward_metrics_volume(spec)
    liveness = spec.get("livenessProbe") is not None and _exec_probe(spec, "livenessProbe")
    readiness = spec.get("readinessProbe") is not None and _exec_probe(spec, "readinessProbe")
    architecture = spec.get("architecture")
    if architecture is None:
        architecture = ""
    elif type(architecture) is not str:
        raise InputError(f"{_S}.architecture", "must be a string")
    if guest is None:
        guest = mem_req if mem_req.unscaled != 0 else mem_lim
    elif guest.unscaled < 0 and negative is None:
        negative = _GUEST
    return VmiFeatures(
        mem_req,
        mem_lim,
        guest,
        vcpus,
        graphics,
        vfio,
        downward,
        liveness,
        readiness,
        sev,
        tpm,
        dedicated,
        guaranteed,
        reserved_overhead,
        architecture,
        passt,
        names,
        realtime,
        mem_lock_required,
        negative,
    )


_Resources = tuple[dict[str, Any], dict[str, Any], Quantity, Quantity, bool, str | None]


def _resources(resources: Any) -> _Resources:
    """``domain.resources``: (requests, limits, requests.memory, limits.memory, guaranteed QoS, the
    path of the first negative size or None); an absent size is zero."""
    if resources is None:
        return EMPTY, EMPTY, ZERO, ZERO, False, None
    if type(resources) is not dict:
        raise _not_object(_R)
    requests = resources.get("requests")
    if requests is None:
        requests = EMPTY
    elif type(requests) is not dict:
        raise _not_object(_REQUESTS)
    limits = resources.get("limits")
    if limits is None:
        limits = EMPTY
    elif type(limits) is not dict:
        raise _not_object(_LIMITS)
    mem_req = _quantity_at(requests, "memory", _REQUESTS_MEMORY) if requests else ZERO
    mem_lim = _quantity_at(limits, "memory", _LIMITS_MEMORY) if limits else ZERO
    cpu_req = _quantity_at(requests, "cpu", _REQUESTS_CPU) if requests else ZERO
    cpu_lim = _quantity_at(limits, "cpu", _LIMITS_CPU) if limits else ZERO
    # Memory given only as a limit counts as requested (the API server defaults it so).
    memory_guaranteed = mem_lim.unscaled != 0 if mem_req.unscaled == 0 else mem_req.cmp(mem_lim) == 0
    guaranteed = memory_guaranteed and cpu_req.unscaled != 0 and cpu_req.cmp(cpu_lim) == 0
    negative = None
    if mem_req.unscaled < 0 or mem_lim.unscaled < 0 or cpu_req.unscaled < 0 or cpu_lim.unscaled < 0:
        negative = _first_negative(mem_req, mem_lim, cpu_req, cpu_lim)
    return requests, limits, mem_req, mem_lim, guaranteed, negative


def _cpu(cpu: Any, requests: dict[str, Any], limits: dict[str, Any]) -> tuple[int, bool, bool]:
    """(vCPUs, dedicated CPU placement, realtime) from ``domain.cpu`` and the resource lists.

    A present ``cpu`` decides the count from its topology alone; otherwise the presence of
    ``limits.cpu`` beats ``requests.cpu``.  At least one vCPU.
    """
    if cpu is None:
        if "cpu" in limits:
            count = read_quantity(limits["cpu"], _LIMITS_CPU).value()
        elif "cpu" in requests:
            count = read_quantity(requests["cpu"], _REQUESTS_CPU).value()
        else:
            count = 0
        return max(count, 1), False, False
    if type(cpu) is not dict:
        raise _not_object(_C)
    count = _uint32(cpu, "cores", _C)
    for key in ("sockets", "threads"):
        factor = _uint32(cpu, key, _C)
        if factor:
            count = factor if count == 0 else (count * factor) & _UINT32_MAX
    dedicated = read_bool(cpu, "dedicatedCpuPlacement", _C) is True
    realtime = cpu.get("realtime") is not None and read_pointer(cpu, "realtime", _C) is not None
    return max(count, 1), dedicated, realtime


_NO_DEVICES: Final[tuple[bool, bool, bool, bool, tuple[str, ...]]] = (True, False, False, False, ())


def _devices(devices: Any) -> tuple[bool, bool, bool, bool, tuple[str, ...]]:
    """(graphics, VFIO, passt, TPM, distinct binding names) from a present ``domain.devices``."""
    if type(devices) is not dict:
        raise _not_object(_V)
    graphics = read_bool(devices, "autoattachGraphicsDevice", _V) is not False
    vfio = passt = tpm = False
    names: tuple[str, ...] = ()
    if "hostDevices" in devices or "gpus" in devices:
        host_devices, gpus = read_items(devices, "hostDevices", _V), read_items(devices, "gpus", _V)
        vfio = bool(host_devices or gpus)
    if devices.get("interfaces") is not None:
        vfio, passt, names = _interfaces(read_items(devices, "interfaces", _V), vfio)
    tpm_spec = devices.get("tpm")
    if tpm_spec is not None:
        if type(tpm_spec) is not dict:
            raise _not_object(f"{_V}.tpm")
        tpm = read_bool(tpm_spec, "enabled", f"{_V}.tpm") is not False
    return graphics, vfio, passt, tpm, names


def _sev(domain: dict[str, Any]) -> bool:
    """Whether ``domain.launchSecurity`` asks for SEV or SEV-SNP (TDX does not count)."""
    launch = read_pointer(domain, "launchSecurity", _D) or EMPTY
    path = f"{_D}.launchSecurity"
    sev = read_pointer(launch, "sev", path) is not None
    return read_pointer(launch, "snp", path) is not None or sev


_NO_MEMORY: Final[tuple[None, None, bool]] = (None, None, False)


def _memory(memory: Any) -> tuple[Quantity | None, Quantity | None, bool]:
    """(memory.guest, reservedOverhead.addedOverhead, memLock is "Required") from a present
    ``domain.memory``; None for an absent quantity."""
    if type(memory) is not dict:
        raise _not_object(_M)
    guest = reserved_overhead = None
    mem_lock_required = False
    if memory.get("guest") is not None:
        guest = read_quantity(memory["guest"], _GUEST)
    if memory.get("reservedOverhead") is not None:
        reserved = read_pointer(memory, "reservedOverhead", _M) or EMPTY
        added = reserved.get("addedOverhead")
        if added is not None:
            reserved_overhead = read_quantity(added, f"{_M}.reservedOverhead.addedOverhead")
        mem_lock_required = read_string(reserved, "memLock", f"{_M}.reservedOverhead") == "Required"
    return guest, reserved_overhead, mem_lock_required


def _exec_probe(spec: dict[str, Any], key: str) -> bool:
    """Whether the probe ``spec[key]`` is an ``exec`` probe (the only kind that costs memory)."""
    probe = read_pointer(spec, key, _S) or EMPTY
    return read_pointer(probe, "exec", f"{_S}.{key}") is not None


def _first_negative(*quantities: Quantity) -> str:
    """The path of the first negative one of requests.memory, limits.memory, requests.cpu, limits.cpu."""
    return next(path for path, size in zip(_SIZES, quantities, strict=True) if size.unscaled < 0)


def downward_metrics_volume(spec: dict[str, Any]) -> bool:
    """Whether ``spec.volumes`` has a downward-metrics volume (validating the list as it goes)."""
    downward = False
    if spec.get("volumes") is not None:
        for index, volume in enumerate(read_items(spec, "volumes", _S)):
            if volume.get("downwardMetrics") is not None:
                path = f"{_S}.volumes[{index}]"
                downward = read_pointer(volume, "downwardMetrics", path) is not None or downward
    return downward


def memo_key(body: dict[str, Any], vmi: Any) -> tuple[Any, ...] | None:
    """Everything an answer depends on, from a request body, or None when it cannot be had cheaply.

    The tuple holds exactly the VMI fields :func:`extract_features` reads (the volumes reduced to
    the one fact read from them) and the request's other fields; equal tuples give equal answers.
    """
    if type(vmi) is not dict:
        return None
    spec = vmi.get("spec")
    if spec is None:
        spec = EMPTY
    elif type(spec) is not dict:
        return None
    domain = spec.get("domain")
    if domain is None:
        domain = EMPTY
    elif type(domain) is not dict:
        return None
    devices = domain.get("devices")
    if devices is None:
        devices = EMPTY
    elif type(devices) is not dict:
        return None
    try:
        downward = downward_metrics_volume(spec)
    except InputError:
        return None
    return (
        body.get("cpuArch"),
        body.get("hypervisor"),
        body.get("table"),
        body.get("kubevirtConfiguration"),
        body.get("node"),
        domain.get("resources"),
        domain.get("cpu"),
        devices.get("autoattachGraphicsDevice"),
        devices.get("hostDevices"),
        devices.get("gpus"),
        devices.get("interfaces"),
        devices.get("tpm"),
        domain.get("launchSecurity"),
        domain.get("memory"),
        spec.get("livenessProbe"),
        spec.get("readinessProbe"),
        spec.get("architecture"),
        downward,
    )


def _interfaces(interfaces: list[dict[str, Any]], vfio: bool) -> tuple[bool, bool, tuple[str, ...]]:
    """(VFIO from SR-IOV, passt, distinct binding names) from ``devices.interfaces``."""
    passt = False
    names: list[str] = []
    for index, iface in enumerate(interfaces):
        if not iface:
            continue
        if iface.get("sriov") is not None:
            vfio = read_pointer(iface, "sriov", f"{_V}.interfaces[{index}]") is not None or vfio
        if iface.get("passtBinding") is not None:
            passt = read_pointer(iface, "passtBinding", f"{_V}.interfaces[{index}]") is not None or passt
        if iface.get("binding") is not None:
            binding = read_pointer(iface, "binding", f"{_V}.interfaces[{index}]") or EMPTY
            name = read_string(binding, "name", f"{_V}.interfaces[{index}].binding") or ""
            if name not in names:
                names.append(name)
    return vfio, passt, tuple(names)
