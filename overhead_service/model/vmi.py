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

from dataclasses import dataclass
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

    flags: dict[str, bool]  # FEATURE_NAMES -> value, for table conditions

    # Read for warnings only (they change no overhead): memory locking in virt-handler, and the
    # first negative size KubeVirt refuses (the JSON path), None when there is none.
    realtime: bool = False  # cpu.realtime is set
    mem_lock_required: bool = False  # reservedOverhead.memLock is "Required"
    negative: str | None = None

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


def _vcpus(cpu: dict[str, Any] | None, requests: dict[str, Any], limits: dict[str, Any]) -> int:
    if cpu is not None:
        count = _uint32(cpu, "cores", _C)
        for key in ("sockets", "threads"):
            factor = _uint32(cpu, key, _C)
            if factor:
                count = factor if count == 0 else (count * factor) & _UINT32_MAX
    elif "cpu" in limits:
        count = read_quantity(limits["cpu"], f"{_R}.limits.cpu").value()
    elif "cpu" in requests:
        count = read_quantity(requests["cpu"], f"{_R}.requests.cpu").value()
    else:
        count = 0
    return max(count, 1)


def _quantity_at(mapping: dict[str, Any], key: str, path: str) -> Quantity:
    """A resource-list entry: zero when the key is absent (Go's map lookup)."""
    if key not in mapping:
        return ZERO
    return read_quantity(mapping[key], f"{path}.{key}")


def _not_object(path: str) -> InputError:
    return InputError(path, "must be an object or null")


def extract_features(vmi: Any) -> VmiFeatures:
    """Read and validate the fields of ``vmi`` the overhead model uses.

    Written for speed (it runs for every VMI of a 10,000-item batch): the common shapes are
    checked inline, absent sections cost one dictionary lookup, and JSON paths are only built for
    an error.
    """
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

    resources = domain.get("resources")
    requests: Any
    limits: Any
    if resources is None:
        requests = limits = EMPTY
    else:
        if type(resources) is not dict:
            raise _not_object(_R)
        requests = resources.get("requests")
        if requests is None:
            requests = EMPTY
        elif type(requests) is not dict:
            raise _not_object(f"{_R}.requests")
        limits = resources.get("limits")
        if limits is None:
            limits = EMPTY
        elif type(limits) is not dict:
            raise _not_object(f"{_R}.limits")
    mem_req = _quantity_at(requests, "memory", f"{_R}.requests") if requests else ZERO
    mem_lim = _quantity_at(limits, "memory", f"{_R}.limits") if limits else ZERO
    cpu_req = _quantity_at(requests, "cpu", f"{_R}.requests") if requests else ZERO
    cpu_lim = _quantity_at(limits, "cpu", f"{_R}.limits") if limits else ZERO

    cpu = domain.get("cpu")
    if cpu is not None and type(cpu) is not dict:
        raise _not_object(_C)
    vcpus = _vcpus(cpu, requests, limits)
    dedicated = realtime = False
    if cpu is not None:
        dedicated = read_bool(cpu, "dedicatedCpuPlacement", _C) is True
        realtime = cpu.get("realtime") is not None and read_pointer(cpu, "realtime", _C) is not None
    # Memory given only as a limit counts as requested (the API server defaults it so).
    memory_guaranteed = mem_lim.unscaled != 0 if mem_req.unscaled == 0 else mem_req.cmp(mem_lim) == 0
    guaranteed = memory_guaranteed and cpu_req.unscaled != 0 and cpu_req.cmp(cpu_lim) == 0

    devices = domain.get("devices")
    graphics = True
    vfio = passt = tpm = False
    names: tuple[str, ...] = ()
    if devices is not None:
        if type(devices) is not dict:
            raise _not_object(_V)
        graphics = read_bool(devices, "autoattachGraphicsDevice", _V) is not False
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

    sev = False
    if domain.get("launchSecurity") is not None:
        launch = read_pointer(domain, "launchSecurity", _D) or EMPTY
        path = f"{_D}.launchSecurity"
        sev = read_pointer(launch, "sev", path) is not None
        sev = read_pointer(launch, "snp", path) is not None or sev

    guest = reserved_overhead = None
    mem_lock_required = False
    memory = domain.get("memory")
    if memory is not None:
        if type(memory) is not dict:
            raise _not_object(_M)
        if memory.get("guest") is not None:
            guest = read_quantity(memory["guest"], f"{_M}.guest")
        if memory.get("reservedOverhead") is not None:
            reserved = read_pointer(memory, "reservedOverhead", _M) or EMPTY
            added = reserved.get("addedOverhead")
            if added is not None:
                reserved_overhead = read_quantity(added, f"{_M}.reservedOverhead.addedOverhead")
            mem_lock_required = read_string(reserved, "memLock", f"{_M}.reservedOverhead") == "Required"

    downward = downward_metrics_volume(spec)

    liveness = readiness = False
    if spec.get("livenessProbe") is not None:
        probe = read_pointer(spec, "livenessProbe", _S) or EMPTY
        liveness = read_pointer(probe, "exec", f"{_S}.livenessProbe") is not None
    if spec.get("readinessProbe") is not None:
        probe = read_pointer(spec, "readinessProbe", _S) or EMPTY
        readiness = read_pointer(probe, "exec", f"{_S}.readinessProbe") is not None

    architecture = spec.get("architecture")
    if architecture is None:
        architecture = ""
    elif type(architecture) is not str:
        raise InputError(f"{_S}.architecture", "must be a string")

    negative = None
    if mem_req.unscaled < 0 or mem_lim.unscaled < 0 or cpu_req.unscaled < 0 or cpu_lim.unscaled < 0:
        negative = _first_negative(mem_req, mem_lim, cpu_req, cpu_lim)
    if guest is None:
        guest = mem_req if mem_req.unscaled != 0 else mem_lim
    elif guest.unscaled < 0 and negative is None:
        negative = f"{_M}.guest"
    flags = {
        "graphics": graphics,
        "vfio": vfio,
        "downwardMetricsVolume": downward,
        "execProbe": liveness or readiness,
        "sev": sev,
        "tpm": tpm,
        "dedicatedCpu": dedicated,
        "guaranteedQos": guaranteed,
        "dedicatedCpuOrGuaranteedQos": dedicated or guaranteed,
        "reservedOverhead": reserved_overhead is not None,
        "passt": passt,
    }
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
        flags,
        realtime,
        mem_lock_required,
        negative,
    )


def _first_negative(*quantities: Quantity) -> str:
    """The path of the first negative one of requests.memory, limits.memory, requests.cpu, limits.cpu."""
    paths = (f"{_R}.requests.memory", f"{_R}.limits.memory", f"{_R}.requests.cpu", f"{_R}.limits.cpu")
    return next(path for path, q in zip(paths, quantities, strict=True) if q.unscaled < 0)


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
