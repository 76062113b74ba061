"""What ``POST /v1/render`` reads beyond the overhead request, read as KubeVirt reads it.

* the cluster configuration (:class:`RenderConfig`) as virt-config merges a KubeVirt CR over its
  defaults (``setConfigFromKubeVirt`` in ``pkg/virt-config/configuration.go``): the CR's
  ``spec.configuration`` is marshalled to JSON and unmarshalled onto the default configuration.
  Fields declared ``omitempty`` are dropped on the way when zero, so a zero
  ``memoryOvercommit`` or ``cpuAllocationRatio`` keeps its default (100 and 10); a configuration
  ``validateConfig`` refuses (a negative ratio) is ignored as a whole by virt-config, which keeps
  its last valid one, so the answer would depend on history: that is an input error here;
* the VMI's namespace (:class:`NamespaceFacts`), as virt-controller's informers know it;
* the VMI fields the renderer reads (:class:`RenderSpec`), with the checks of KubeVirt's VMI
  admission that concern them (:func:`check_admission`): a VMI that admission refuses never gets
  a pod, so it gets a problem document instead of negative figures.
"""

from __future__ import annotations

import re
from typing import Any, Final

from overhead_service.errors import InputError, RejectedByKubeVirt
from overhead_service.model.fields import EMPTY, read_bool, read_items, read_object, read_pointer, read_string
from overhead_service.model.gofloat import GoFloatError, parse_go_float
from overhead_service.model.quantity import MAX_INT64, MIN_INT64, Quantity
from overhead_service.model.vmi import read_quantity

__all__ = [
    "AUTO_MEMORY_LIMITS_RATIO_LABEL",
    "CPU",
    "MEMORY",
    "NamespaceFacts",
    "RenderConfig",
    "RenderSpec",
    "check_admission",
]

AUTO_MEMORY_LIMITS_RATIO_LABEL: Final = "alpha.kubevirt.io/auto-memory-limits-ratio"
MEMORY: Final = "memory"
CPU: Final = "cpu"

_NAMESPACE_FIELDS: Final = frozenset({"labels", "resourceQuotaLimitsMemory", "resourceQuotaLimitsCpu"})
_DEFAULT_LIMITS_RATIO: Final = 2.0
_UINT32_MAX: Final = 2**32 - 1
_DEFAULT_MEMORY_OVERCOMMIT: Final = 100  # DefaultMemoryOvercommit, pkg/virt-config/virt-config.go
_DEFAULT_CPU_ALLOCATION_RATIO: Final = 10  # DefaultCPUAllocationRatio, same file

V: Final = "vmi.spec.domain"
_KV = "kubevirtConfiguration"
DEV: Final = f"{_KV}.developerConfiguration"
_SELECTOR = f"{_KV}.autoCPULimitNamespaceLabelSelector"


def read_int(parent: dict[str, Any], key: str, path: str, low: int, high: int) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise InputError(f"{path}.{key}", f"must be an integer between {low} and {high}")
    return value


def _string_map(value: Any, path: str) -> dict[str, str]:
    mapping = read_object(value, path)
    for key, item in mapping.items():
        if type(item) is not str:
            raise InputError(f"{path}.{key}", "must be a string")
    return mapping


def _resource_list(resources: dict[str, Any], key: str) -> dict[str, Quantity]:
    """A ResourceList, every entry a quantity (a null entry is Go's zero ``Quantity{}``)."""
    path = f"{V}.resources.{key}"
    entries = read_object(resources.get(key), path)
    return {name: read_quantity(value, f"{path}.{name}") for name, value in entries.items()}


class NamespaceFacts:
    """What virt-controller's namespace and ResourceQuota informers know about the VMI's namespace."""

    __slots__ = ("known", "labels", "quota_cpu", "quota_memory")

    def __init__(self, body: Any) -> None:
        self.known = body is not None
        namespace = read_object(body, "namespace")
        for key in namespace:
            if key not in _NAMESPACE_FIELDS:
                raise InputError(
                    f"namespace.{key}", f"unknown field; allowed: {', '.join(sorted(_NAMESPACE_FIELDS))}"
                )
        self.labels = _string_map(namespace.get("labels"), "namespace.labels")
        self.quota_memory = bool(read_bool(namespace, "resourceQuotaLimitsMemory", "namespace"))
        self.quota_cpu = bool(read_bool(namespace, "resourceQuotaLimitsCpu", "namespace"))

    def limits_ratio(self) -> float:
        """``getMemoryLimitsRatio``: the namespace label parsed by Go's ParseFloat, else 2.0."""
        text = self.labels.get(AUTO_MEMORY_LIMITS_RATIO_LABEL)
        if text is None:
            return _DEFAULT_LIMITS_RATIO
        try:
            ratio = parse_go_float(text)
        except GoFloatError:
            return _DEFAULT_LIMITS_RATIO
        return _DEFAULT_LIMITS_RATIO if ratio < 1.0 else ratio  # NaN passes, as upstream


def _config_ratio(dev: dict[str, Any], key: str, default: int, what: str) -> int:
    """An ``int`` ratio declared ``omitempty``: 0 keeps the default, a negative one is refused.

    virt-config's ``validateConfig`` refuses a configuration whose ratio is 0 or less and keeps the
    last valid one; a 0 never reaches it (the JSON merge dropped it).
    """
    value = read_int(dev, key, DEV, MIN_INT64, MAX_INT64)
    if value is None or value == 0:
        return default
    if value < 0:
        raise RejectedByKubeVirt(
            f"{DEV}.{key}",
            f"must not be negative: virt-config refuses a KubeVirt configuration with a negative "
            f"{what} and keeps using its last valid one, so the pod would depend on that history",
        )
    return value


class RenderConfig:
    """The parts of KubeVirt's ``spec.configuration`` that rendering reads beyond the overhead."""

    __slots__ = ("cpu_allocation_ratio", "cpu_limit_selector", "memory_overcommit")

    def __init__(self, body: Any) -> None:
        config = read_object(body, _KV)
        dev = read_object(config.get("developerConfiguration"), DEV)
        self.memory_overcommit = _config_ratio(
            dev, "memoryOvercommit", _DEFAULT_MEMORY_OVERCOMMIT, "memoryOvercommit"
        )
        self.cpu_allocation_ratio = _config_ratio(
            dev, "cpuAllocationRatio", _DEFAULT_CPU_ALLOCATION_RATIO, "cpuAllocationRatio"
        )
        selector = config.get("autoCPULimitNamespaceLabelSelector")
        # A pointer: {} survives the merge and matches every namespace.
        self.cpu_limit_selector = None if selector is None else _Selector(selector)


_QUALIFIED_NAME: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


def _valid_key(key: str) -> bool:
    """A label key Kubernetes accepts: ``[prefix/]name`` (qualified name)."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def _valid_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value) is not None)


class _Selector:
    """A ``metav1.LabelSelector`` as ``LabelSelectorAsSelector`` reads it.

    A selector Kubernetes refuses to build (bad operator, key or value) matches nothing, as
    virt-controller logs "invalid ... assuming none"; ``{}`` matches every namespace.
    """

    __slots__ = ("requirements", "valid")

    def __init__(self, body: Any) -> None:
        selector = read_object(body, _SELECTOR)
        labels = _string_map(selector.get("matchLabels"), f"{_SELECTOR}.matchLabels")
        requirements: list[tuple[str, str, frozenset[str]]] = [
            (key, "In", frozenset({value})) for key, value in labels.items()
        ]
        for index, expression in enumerate(read_items(selector, "matchExpressions", _SELECTOR)):
            path = f"{_SELECTOR}.matchExpressions[{index}]"
            values = expression.get("values")
            if values is not None and (type(values) is not list or any(type(v) is not str for v in values)):
                raise InputError(f"{path}.values", "must be an array of strings or null")
            operator = read_string(expression, "operator", path) or ""
            requirements.append(
                (read_string(expression, "key", path) or "", operator, frozenset(values or ()))
            )
        self.requirements = requirements
        self.valid = all(self._valid(*requirement) for requirement in requirements)

    @staticmethod
    def _valid(key: str, operator: str, values: frozenset[str]) -> bool:
        if operator not in _OPERATORS or not _valid_key(key) or not all(map(_valid_value, values)):
            return False
        return bool(values) if operator in ("In", "NotIn") else not values

    def matches(self, labels: dict[str, str]) -> bool:
        if not self.valid:
            return False
        for key, operator, values in self.requirements:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


class RenderSpec:
    """The VMI fields the renderer reads (the overhead's own fields are validated by the service)."""

    def __init__(self, vmi: dict[str, Any]) -> None:
        metadata = read_object(vmi.get("metadata"), "vmi.metadata")
        self.annotations = _string_map(metadata.get("annotations"), "vmi.metadata.annotations")
        spec = read_object(vmi.get("spec"), "vmi.spec")
        domain = read_object(spec.get("domain"), V)

        resources = read_object(domain.get("resources"), f"{V}.resources")
        self.requests = _resource_list(resources, "requests")
        self.limits = _resource_list(resources, "limits")
        self.overcommit_guest_overhead = bool(
            read_bool(resources, "overcommitGuestOverhead", f"{V}.resources")
        )

        memory = read_pointer(domain, "memory", V) or EMPTY
        guest = memory.get("guest")
        self.guest = None if guest is None else read_quantity(guest, f"{V}.memory.guest")
        # The memory sizes as written (warnings quote them: Go's form depends on the spelling).
        self.written = {
            "requests": read_object(resources.get("requests"), "").get(MEMORY),
            "limits": read_object(resources.get("limits"), "").get(MEMORY),
            "guest": guest,
        }
        hugepages = read_pointer(memory, "hugepages", f"{V}.memory")
        self.page_size = (
            None if hugepages is None else read_string(hugepages, "pageSize", f"{V}.memory.hugepages") or ""
        )

        cpu = read_pointer(domain, "cpu", V)
        self.cpu_present = cpu is not None
        cpu = cpu or EMPTY
        self.topology = _topology(cpu)
        self.dedicated = bool(read_bool(cpu, "dedicatedCpuPlacement", f"{V}.cpu"))
        self.isolate_emulator = bool(read_bool(cpu, "isolateEmulatorThread", f"{V}.cpu"))

        io_threads = read_pointer(domain, "ioThreads", V) or EMPTY
        count = read_int(io_threads, "supplementalPoolThreadCount", f"{V}.ioThreads", 0, _UINT32_MAX)
        self.io_thread_cpus = count or 0  # read whatever the policy (getIOThreadsCount)
        policy = read_string(domain, "ioThreadsPolicy", V)
        self.additional_cpus = (
            self.io_thread_cpus if policy == "supplementalPool" and count is not None else 0
        )
        self._devices(read_object(domain.get("devices"), f"{V}.devices"))

        launch = read_pointer(domain, "launchSecurity", V) or EMPTY
        ls = f"{V}.launchSecurity"
        sev, snp = read_pointer(launch, "sev", ls), read_pointer(launch, "snp", ls)
        self.sev = sev is not None or snp is not None
        self.tdx = read_pointer(launch, "tdx", ls) is not None

    def _devices(self, devices: dict[str, Any]) -> None:
        d = f"{V}.devices"
        interfaces = read_items(devices, "interfaces", d)
        pod_interface = read_bool(devices, "autoattachPodInterface", d)
        self.tun = bool(interfaces) or pod_interface is not False
        self.virtio_net = any(
            (read_string(iface, "model", f"{d}.interfaces[{i}]") or "") in ("", "virtio")
            for i, iface in enumerate(interfaces)
        )
        self.vsock = read_bool(devices, "autoattachVSOCK", d) is True
        self.gpus = _device_plugins(devices, "gpus", d)
        self.host_devices = _device_plugins(devices, "hostDevices", d)
        self.reservation = False
        for index, disk in enumerate(read_items(devices, "disks", d)):
            lun = read_pointer(disk, "lun", f"{d}.disks[{index}]")
            if lun is not None and read_bool(lun, "reservation", f"{d}.disks[{index}].lun"):
                self.reservation = True

    def guest_memory(self) -> Quantity | None:
        """The guest's memory as KubeVirt sizes it: ``memory.guest``, else the request, else the limit."""
        if self.guest is not None:
            return self.guest
        for resources in (self.requests, self.limits):
            memory = resources.get(MEMORY)
            if memory is not None and not memory.is_zero():
                return memory
        return None


def _topology(cpu: dict[str, Any]) -> int:
    """``hardware.GetNumberOfVCPUs``: cores x sockets x threads, zeros skipped, in uint32 (wraps)."""
    count = read_int(cpu, "cores", f"{V}.cpu", 0, _UINT32_MAX) or 0
    for key in ("sockets", "threads"):
        factor = read_int(cpu, key, f"{V}.cpu", 0, _UINT32_MAX) or 0
        if factor:
            count = factor if count == 0 else (count * factor) & _UINT32_MAX
    return count


def _device_plugins(devices: dict[str, Any], key: str, path: str) -> list[str]:
    """The ``deviceName`` of each device a device plugin provides (DRA claims excluded)."""
    names = []
    for index, device in enumerate(read_items(devices, key, path)):
        name = read_string(device, "deviceName", f"{path}.{key}[{index}]") or ""
        if name and device.get("claimRequest") is None:
            names.append(name)
    return names


# (resource, list, Go's accessor scale, upstream check): the sign checks of KubeVirt's VMI create
# admitter (pkg/virt-api/webhooks/validating-webhook/admitters/vmi-create-admitter.go).
_SIGN_CHECKS: Final = (
    (MEMORY, "requests", 0, "validateMemoryRequestsNegativeOrNull"),
    (MEMORY, "limits", 0, "validateMemoryLimitsNegativeOrNull"),
    (CPU, "requests", -3, "validateCPURequestNotNegative"),
    (CPU, "limits", -3, "validateCPULimitNotNegative"),
)


def check_admission(spec: RenderSpec) -> None:
    """Refuse the negative requests and limits KubeVirt's VMI admission refuses (no pod exists).

    Memory is compared by ``Value()``, CPU by ``MilliValue()``, as upstream does.
    """
    for name, key, scale, check in _SIGN_CHECKS:
        quantity = (spec.requests if key == "requests" else spec.limits).get(name)
        if quantity is not None and quantity.scaled_value(scale) < 0:
            raise RejectedByKubeVirt(
                f"{V}.resources.{key}.{name}",
                f"must be greater than or equal to 0: KubeVirt's VMI admission ({check}) rejects "
                f"'{quantity}', so no pod is rendered",
            )
