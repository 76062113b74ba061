"""The virt-launcher compute container's resources, as KubeVirt's virt-controller renders them.

:func:`render` answers ``POST /v1/render`` (and ``overhead-service render``): the overhead from
:class:`~overhead_service.model.service.OverheadService`, placed into the pod's requests and limits by
the same steps, in the same order, as upstream's resource renderer (``pkg/virt-controller/services``,
``renderresources.go`` and ``template.go``).  Every quantity goes through Go's ``Quantity``
arithmetic (:mod:`overhead_service.model.quantity`), so the strings are the ones the pod spec would hold.

Request: the fields of ``POST /v1/overhead``, plus ``namespace`` (what virt-controller's informers
know about the VMI's namespace)::

    {"vmi": {...}, "cpuArch": ..., "hypervisor": ..., "node": ..., "table": ...,
     "kubevirtConfiguration": {
         ...everything /v1/overhead reads...,
         "developerConfiguration": {"memoryOvercommit": 100,     # percent, default 100
                                    "cpuAllocationRatio": 10,    # default 10
                                    "useEmulation": false, "featureGates": [...]},
         "autoCPULimitNamespaceLabelSelector": {"matchLabels": {...}, "matchExpressions": [...]}},
     "namespace": {"labels": {"alpha.kubevirt.io/auto-memory-limits-ratio": "1.5"},
                   "resourceQuotaLimitsMemory": true,   # a ResourceQuota there sets limits.memory
                   "resourceQuotaLimitsCpu": false}}    # ... limits.cpu

Rendering always follows virt-controller, so the overhead is ``CalculateMemoryOverhead``'s (the
VMI's ``spec.architecture`` beats ``cpuArch``), even without ``kubevirtConfiguration``.

The steps (upstream's renderer options, in order):

1. the VMI's own requests and limits, every entry; ``ephemeral-storage`` request +50M (limit too,
   when the VMI sets one);
2. limits of ``devices.kubevirt.io/tun`` (any interface, or the pod interface auto-attached),
   ``vhost-net`` (a virtio interface, emulation not allowed), the hypervisor device (``kvm`` or
   ``mshv``, emulation not allowed) and ``vhost-vsock`` (``autoattachVSOCK``), each ``"1"``;
3. no memory request: the memory limit, else guest memory (or the hugepage size) x 100 /
   ``memoryOvercommit`` (not divided for hugepages);
4. dedicated CPUs: cpu request = limit = vCPUs (+ supplemental IO threads, + emulator thread(s)),
   memory limit = memory request; otherwise cpu request = (vCPUs + IO threads) / ``cpuAllocationRatio``
   printed as Go's ``%g`` (and a cpu limit of vCPUs + IO threads under auto CPU limits);
5. hugepages: ``hugepages-<size>`` = requests.memory (or guest memory when smaller), memory request =
   overhead + max(0, request - guest), limit (if any) = overhead + max(0, limit - guest);
   otherwise the overhead is added to the request (unless ``overcommitGuestOverhead``) and to the
   limit (if any);
6. auto memory limits (no VMI memory limit, ``namespace.resourceQuotaLimitsMemory``): limit =
   int64(request x the namespace's ratio label; 2.0 when absent, unparsable or below 1);
7. device-plugin GPUs and host devices (``deviceName``), ``devices.kubevirt.io/sev`` (SEV or SNP),
   ``tdx`` and ``pr-helper`` (a LUN disk with ``reservation``): +1 in requests and limits.

Not rendered (they need cluster objects the request does not carry): Multus network resources,
DRA resource claims and ``devices.kubevirt.io/iommufd``.

The answer::

    {"resources": {"requests": {"cpu": "200m", "ephemeral-storage": "50M", "memory": "1357828096"},
                   "limits": {"devices.kubevirt.io/kvm": "1", "devices.kubevirt.io/tun": "1", ...}},
     "annotations": {"kubevirt.io/memory-overhead-bytes": "283115520"},
     "overhead": {...}, "hypervisor": {...}, "table": {...}, "cpuArch": "amd64"}

Where upstream would compute platform-dependent garbage (a NaN or overflowing limits ratio) or
crash (a CPU request string Go cannot parse back), the request is refused with the field's path.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

from overhead_service.errors import InputError, InvalidQuantity
from overhead_service.model.engine import sum_plan
from overhead_service.model.fields import EMPTY, read_bool, read_items, read_object, read_pointer, read_string
from overhead_service.model.gofloat import GoFloatError, parse_go_float
from overhead_service.model.quantity import (
    GO_ZERO,
    INT64_FLOAT_BOUND,
    KILO,
    MAX_INT64,
    MIN_INT64,
    Format,
    Quantity,
    go_int_div,
    parse_quantity,
    wrap_int64,
)
from overhead_service.model.service import OverheadService
from overhead_service.model.vmi import extract_features, read_quantity

__all__ = [
    "AUTO_MEMORY_LIMITS_RATIO_LABEL",
    "EVEN_PARITY_ANNOTATION",
    "OVERHEAD_ANNOTATION",
    "go_format_g",
    "render",
]

OVERHEAD_ANNOTATION: Final = "kubevirt.io/memory-overhead-bytes"
AUTO_MEMORY_LIMITS_RATIO_LABEL: Final = "alpha.kubevirt.io/auto-memory-limits-ratio"
EVEN_PARITY_ANNOTATION: Final = "alpha.kubevirt.io/EmulatorThreadCompleteToEvenParity"

_OVERHEAD_FIELDS: Final = frozenset(
    {"vmi", "cpuArch", "hypervisor", "kubevirtConfiguration", "node", "table"}
)
_FIELDS: Final = _OVERHEAD_FIELDS | {"namespace"}
_NAMESPACE_FIELDS: Final = frozenset({"labels", "resourceQuotaLimitsMemory", "resourceQuotaLimitsCpu"})

MEMORY: Final = "memory"
CPU: Final = "cpu"
EPHEMERAL: Final = "ephemeral-storage"
_DEVICES: Final = "devices.kubevirt.io/"

_ZERO_BINARY: Final = Quantity(0, 0, Format.BINARY_SI)  # ResourceList.Memory() of a missing entry
_ONE: Final = Quantity(1, 0, Format.DECIMAL_SI)  # resource.MustParse("1") and NewQuantity(1, DecimalSI)
_EPHEMERAL_OVERHEAD: Final = Quantity(50, 6, Format.DECIMAL_SI)  # resource.MustParse("50M")
_DEFAULT_LIMITS_RATIO: Final = 2.0
_UINT32_MAX: Final = 2**32 - 1

_V = "vmi.spec.domain"
_KV = "kubevirtConfiguration"
_DEV = f"{_KV}.developerConfiguration"
_SELECTOR = f"{_KV}.autoCPULimitNamespaceLabelSelector"


# --- reading the request ------------------------------------------------------------------------


def _int(parent: dict[str, Any], key: str, path: str, low: int, high: int) -> int | None:
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
    path = f"{_V}.resources.{key}"
    entries = read_object(resources.get(key), path)
    return {name: read_quantity(value, f"{path}.{name}") for name, value in entries.items()}


class _Namespace:
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


class _Config:
    """The parts of KubeVirt's ``spec.configuration`` that rendering reads beyond the overhead."""

    __slots__ = ("cpu_allocation_ratio", "cpu_limit_selector", "memory_overcommit")

    def __init__(self, body: Any) -> None:
        config = read_object(body, _KV)
        dev = read_object(config.get("developerConfiguration"), _DEV)
        overcommit = _int(dev, "memoryOvercommit", _DEV, 1, MAX_INT64)  # upstream divides by it
        self.memory_overcommit = 100 if overcommit is None else overcommit
        ratio = _int(dev, "cpuAllocationRatio", _DEV, MIN_INT64, MAX_INT64)
        self.cpu_allocation_ratio = 10 if ratio is None else ratio
        selector = config.get("autoCPULimitNamespaceLabelSelector")
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


class _Spec:
    """The VMI fields the renderer reads (the overhead's own fields are validated by the service)."""

    def __init__(self, vmi: dict[str, Any]) -> None:
        metadata = read_object(vmi.get("metadata"), "vmi.metadata")
        self.annotations = _string_map(metadata.get("annotations"), "vmi.metadata.annotations")
        spec = read_object(vmi.get("spec"), "vmi.spec")
        domain = read_object(spec.get("domain"), _V)

        resources = read_object(domain.get("resources"), f"{_V}.resources")
        self.requests = _resource_list(resources, "requests")
        self.limits = _resource_list(resources, "limits")
        self.overcommit_guest_overhead = bool(
            read_bool(resources, "overcommitGuestOverhead", f"{_V}.resources")
        )

        memory = read_pointer(domain, "memory", _V) or EMPTY
        guest = memory.get("guest")
        self.guest = None if guest is None else read_quantity(guest, f"{_V}.memory.guest")
        hugepages = read_pointer(memory, "hugepages", f"{_V}.memory")
        self.page_size = (
            None if hugepages is None else read_string(hugepages, "pageSize", f"{_V}.memory.hugepages") or ""
        )

        cpu = read_pointer(domain, "cpu", _V)
        self.cpu_present = cpu is not None
        cpu = cpu or EMPTY
        self.topology = _topology(cpu)
        self.dedicated = bool(read_bool(cpu, "dedicatedCpuPlacement", f"{_V}.cpu"))
        self.isolate_emulator = bool(read_bool(cpu, "isolateEmulatorThread", f"{_V}.cpu"))

        io_threads = read_pointer(domain, "ioThreads", _V) or EMPTY
        count = _int(io_threads, "supplementalPoolThreadCount", f"{_V}.ioThreads", 0, _UINT32_MAX)
        self.io_thread_cpus = count or 0  # read whatever the policy (getIOThreadsCount)
        policy = read_string(domain, "ioThreadsPolicy", _V)
        self.additional_cpus = (
            self.io_thread_cpus if policy == "supplementalPool" and count is not None else 0
        )

        devices = read_object(domain.get("devices"), f"{_V}.devices")
        d = f"{_V}.devices"
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

        launch = read_pointer(domain, "launchSecurity", _V) or EMPTY
        ls = f"{_V}.launchSecurity"
        sev, snp = read_pointer(launch, "sev", ls), read_pointer(launch, "snp", ls)
        self.sev = sev is not None or snp is not None
        self.tdx = read_pointer(launch, "tdx", ls) is not None


def _topology(cpu: dict[str, Any]) -> int:
    """``hardware.GetNumberOfVCPUs``: cores x sockets x threads, zeros skipped, in uint32 (wraps)."""
    count = _int(cpu, "cores", f"{_V}.cpu", 0, _UINT32_MAX) or 0
    for key in ("sockets", "threads"):
        factor = _int(cpu, key, f"{_V}.cpu", 0, _UINT32_MAX) or 0
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


# --- Go helpers ---------------------------------------------------------------------------------


def go_format_g(value: float) -> str:
    """Go's ``fmt.Sprintf("%g", value)`` for a finite float: the shortest digits that round-trip,
    in exponent form (``1e+06``) when the decimal exponent is below -4 or at least 6."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() gives the same shortest round-trip digits as Go's strconv.
    digits_tuple = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    point = len(digits) + int(digits_tuple.exponent)  # digits before the decimal point
    digits = digits.rstrip("0")
    exponent = point - 1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


# --- the renderer -------------------------------------------------------------------------------


class _Renderer:
    """Upstream's ``ResourceRenderer``: the VMI's own lists and the calculated ones.

    The pod gets the calculated entries overlaid by the VMI's (so a VMI entry always wins), which
    is why the two are kept apart exactly as upstream keeps them.
    """

    def __init__(self, spec: _Spec) -> None:
        self.vm_requests = dict(spec.requests)
        self.vm_limits = dict(spec.limits)
        self.calc_requests: dict[str, Quantity] = {}
        self.calc_limits: dict[str, Quantity] = {}

    def requests(self) -> dict[str, Quantity]:
        return {**self.calc_requests, **self.vm_requests}

    def limits(self) -> dict[str, Quantity]:
        return {**self.calc_limits, **self.vm_limits}

    def request_resource(self, names: list[str]) -> None:
        """``requestResource`` for each name: +1 in both lists, on a merged copy kept as calculated."""
        requests, limits = self.requests(), self.limits()
        for name in names:
            for resources in (limits, requests):
                resources[name] = resources[name].add(_ONE) if name in resources else _ONE
        self.calc_limits.update(limits)
        self.calc_requests.update(requests)


def _memory_requests(r: _Renderer, spec: _Spec, overcommit: int) -> None:
    """``WithMemoryRequests`` (only called when the VMI requests no memory)."""
    limit, request = r.vm_limits.get(MEMORY), r.vm_requests.get(MEMORY)
    if limit is not None and not limit.is_zero() and (request is None or request.is_zero()):
        r.vm_requests[MEMORY] = limit
    if MEMORY in r.vm_requests:
        return
    memory = spec.guest
    if memory is None and spec.page_size is not None:
        try:
            memory = parse_quantity(spec.page_size)
        except InvalidQuantity:
            memory = None  # upstream ignores a page size ParseQuantity refuses
    if memory is not None and memory.value() > 0:
        if overcommit == 100 or spec.page_size is not None:
            r.vm_requests[MEMORY] = memory
        else:
            value = go_int_div(wrap_int64(memory.value() * 100), overcommit)
            r.vm_requests[MEMORY] = Quantity.from_int(value, memory.format)


def _cpu_pinning(r: _Renderer, spec: _Spec) -> None:
    """``WithCPUPinning``: whole CPUs, request = limit; the memory limit follows the request."""
    binary = Format.BINARY_SI
    if spec.topology != 0:
        total = Quantity.from_int(spec.topology + spec.io_thread_cpus, binary)
        r.vm_limits[CPU] = r.vm_requests[CPU] = total
    else:
        io_threads = Quantity.from_int(spec.io_thread_cpus, binary)
        if CPU in r.vm_limits:
            r.vm_limits[CPU] = r.vm_limits[CPU].add(io_threads)
        if CPU in r.vm_requests:
            r.vm_requests[CPU] = r.vm_requests[CPU].add(io_threads)
    if spec.isolate_emulator:
        limits = r.vm_limits.get(CPU, GO_ZERO)
        emulator = 1
        if (
            EVEN_PARITY_ANNOTATION in spec.annotations
            and wrap_int64(limits.value() + spec.additional_cpus) % 2 == 0
        ):
            emulator = 2
        r.vm_limits[CPU] = limits.add(Quantity.from_int(emulator, binary))
        if CPU in r.vm_requests:
            r.vm_requests[CPU] = r.vm_requests[CPU].add(Quantity.from_int(emulator, binary))
    if MEMORY in r.vm_requests:
        r.vm_limits[MEMORY] = r.vm_requests[MEMORY]


def _without_dedicated_cpu(r: _Renderer, spec: _Spec, ratio: int, with_limits: bool) -> None:
    """``WithoutDedicatedCPU``: (vCPUs + IO threads) / cpuAllocationRatio, printed by ``%g``."""
    vcpus = spec.topology if spec.cpu_present else 1
    total = vcpus + spec.io_thread_cpus
    if total == 0 or ratio <= 0:
        return
    value = float(total) / float(ratio)
    text = go_format_g(value) if value >= 1 else go_format_g(value * 1000) + "m"
    try:
        r.calc_requests[CPU] = parse_quantity(text)
    except InvalidQuantity:
        raise InputError(
            f"{_DEV}.cpuAllocationRatio",
            f"gives a CPU request of {text!r}, which Kubernetes cannot parse (virt-controller would fail)",
        ) from None
    if with_limits:
        r.calc_limits[CPU] = Quantity.from_int(total)


def _hugepages(r: _Renderer, spec: _Spec, page_size: str, overhead: Quantity) -> None:
    """``WithHugePages``: hugepages hold the guest; the memory request is the overhead and the rest."""
    requested = r.vm_requests.get(MEMORY, _ZERO_BINARY)
    pages = requested
    guest = spec.guest
    if guest is not None and requested.value() > guest.value():
        pages = guest
    name = "hugepages-" + page_size
    r.calc_requests[name] = r.calc_limits[name] = pages
    request_rest = limit_rest = Quantity.scaled(0, KILO)
    if guest is not None:
        limited = r.vm_limits.get(MEMORY, _ZERO_BINARY)
        if requested.value() > guest.value():
            request_rest = request_rest.add(requested).sub(guest)
        if limited.value() > guest.value():
            limit_rest = limit_rest.add(limited).sub(guest)
    r.vm_requests[MEMORY] = request_rest.add(overhead)
    if MEMORY in r.vm_limits:
        r.vm_limits[MEMORY] = limit_rest.add(overhead)


def _memory_overhead(r: _Renderer, spec: _Spec, overhead: Quantity) -> None:
    """``WithMemoryOverhead``: the limit always gets the overhead; the request unless overcommitted."""
    request = r.vm_requests.get(MEMORY, GO_ZERO)
    if not spec.overcommit_guest_overhead:
        request = request.add(overhead)
    r.vm_requests[MEMORY] = request
    if MEMORY in r.vm_limits:
        r.vm_limits[MEMORY] = r.vm_limits[MEMORY].add(overhead)


def _auto_memory_limits(r: _Renderer, ratio: float) -> None:
    """``WithAutoMemoryLimits``: limit = int64(float64(request) x ratio), in the request's format."""
    request = r.vm_requests.get(MEMORY, GO_ZERO)
    product = float(request.value()) * ratio
    if (
        not -INT64_FLOAT_BOUND <= product < INT64_FLOAT_BOUND
    ):  # NaN too: Go's conversion is platform-dependent
        raise InputError(
            f"namespace.labels.{AUTO_MEMORY_LIMITS_RATIO_LABEL}",
            "makes the memory limit overflow 64-bit bytes (or is NaN)",
        )
    r.calc_limits[MEMORY] = Quantity.from_int(int(product), request.format)


def _overhead_quantity(answer: dict[str, Any], vmi: Any, service: OverheadService) -> Quantity:
    """The overhead as the Go ``Quantity`` it was: the exact value from the answer, the format its sum
    had (a BinarySI sum can print as plain digits, and the format decides how later sums print)."""
    value = parse_quantity(answer["overhead"]["quantity"])
    table = service.tables.get(answer["table"]["id"])
    model = table.model_for(answer["hypervisor"]["name"], answer["cpuArch"])
    if model is None:  # the service answered with this model a moment ago
        return value
    total, _ = sum_plan(model.plan, extract_features(vmi), answer["cpuArch"], Quantity.scaled(0, KILO))
    return value if total.is_zero() else value.with_format(total.format)


def render(body: Any, service: OverheadService) -> dict[str, Any]:
    """The compute container's resources for one render request (see the module docstring).

    Raises :class:`~overhead_service.errors.InputError` with the JSON path of bad input.
    """
    if type(body) is not dict:
        raise InputError("", "the request must be a JSON object")
    for key in body:
        if key not in _FIELDS:
            raise InputError(key, f"unknown field; allowed: {', '.join(sorted(_FIELDS))}")
    request = {key: value for key, value in body.items() if key in _OVERHEAD_FIELDS}
    if request.get("kubevirtConfiguration") is None:
        request["kubevirtConfiguration"] = {}  # virt-controller's CalculateMemoryOverhead, always
    answer = service.compute(request)

    config = _Config(body.get("kubevirtConfiguration"))
    namespace = _Namespace(body.get("namespace"))
    vmi = body["vmi"]
    spec = _Spec(vmi)
    overhead = _overhead_quantity(answer, vmi, service)
    device = answer["hypervisor"]["deviceResource"]
    emulation = device is None

    r = _Renderer(spec)
    # WithEphemeralStorageRequest
    r.vm_requests[EPHEMERAL] = r.vm_requests.get(EPHEMERAL, GO_ZERO).add(_EPHEMERAL_OVERHEAD)
    if EPHEMERAL in r.vm_limits:
        r.vm_limits[EPHEMERAL] = r.vm_limits[EPHEMERAL].add(_EPHEMERAL_OVERHEAD)
    # WithVirtualizationResources(getRequiredResources(...)): limits only
    required = [
        (spec.tun, _DEVICES + "tun"),
        (spec.virtio_net and not emulation, _DEVICES + "vhost-net"),
        (device is not None, device or ""),
        (spec.vsock, _DEVICES + "vhost-vsock"),
    ]
    r.vm_limits.update({name: _ONE for wanted, name in required if wanted})

    if spec.requests.get(MEMORY, GO_ZERO).is_zero():
        _memory_requests(r, spec, config.memory_overcommit)
    if spec.dedicated:
        _cpu_pinning(r, spec)
    else:
        _without_dedicated_cpu(
            r, spec, config.cpu_allocation_ratio, _auto_cpu_limits(spec, config, namespace)
        )
    if spec.page_size is not None:
        _hugepages(r, spec, spec.page_size, overhead)
    else:
        _memory_overhead(r, spec, overhead)
    if MEMORY not in spec.limits and namespace.quota_memory:
        _auto_memory_limits(r, namespace.limits_ratio())
    for names in (spec.gpus, spec.host_devices):
        if names:
            r.request_resource(names)
    for wanted, name in ((spec.sev, "sev"), (spec.tdx, "tdx"), (spec.reservation, "pr-helper")):
        if wanted:
            r.request_resource([_DEVICES + name])

    return {
        "resources": {
            "requests": {name: str(q) for name, q in sorted(r.requests().items())},
            "limits": {name: str(q) for name, q in sorted(r.limits().items())},
        },
        "annotations": {OVERHEAD_ANNOTATION: str(answer["overhead"]["bytes"])},
        "overhead": answer["overhead"],
        "hypervisor": answer["hypervisor"],
        "table": answer["table"],
        "cpuArch": answer["cpuArch"],
    }


def _auto_cpu_limits(spec: _Spec, config: _Config, namespace: _Namespace) -> bool:
    """``doesVMIRequireAutoCPULimits``: no VMI cpu limit, and a quota or the namespace selector."""
    if CPU in spec.limits:
        return False
    if namespace.quota_cpu:
        return True
    selector = config.cpu_limit_selector
    return selector is not None and namespace.known and selector.matches(namespace.labels)
