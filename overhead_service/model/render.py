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
         "developerConfiguration": {"memoryOvercommit": 100,     # percent, default (and 0) 100
                                    "cpuAllocationRatio": 10,    # default (and 0) 10
                                    "useEmulation": false, "featureGates": [...]},
         "autoCPULimitNamespaceLabelSelector": {"matchLabels": {...}, "matchExpressions": [...]}},
     "namespace": {"labels": {"alpha.kubevirt.io/auto-memory-limits-ratio": "1.5"},
                   "resourceQuotaLimitsMemory": true,   # a ResourceQuota there sets limits.memory
                   "resourceQuotaLimitsCpu": false}}    # ... limits.cpu

Rendering always follows virt-controller, so the overhead is ``CalculateMemoryOverhead``'s (the
VMI's ``spec.architecture`` beats ``cpuArch``), even without ``kubevirtConfiguration``.  The
configuration is read as virt-config merges it over its defaults, and a VMI KubeVirt's admission
refuses (a negative request or limit) is refused (:mod:`overhead_service.model.render_input`).

The steps (upstream's renderer options, in order):

1. the VMI's own requests and limits, every entry; ``ephemeral-storage`` request +50M (limit too,
   when the VMI sets one);
2. limits of ``devices.kubevirt.io/tun`` (any interface, or the pod interface auto-attached),
   ``vhost-net`` (a virtio interface, emulation not allowed), the hypervisor device (``kvm`` or
   ``mshv``, emulation not allowed) and ``vhost-vsock`` (``autoattachVSOCK``), each ``"1"``;
3. no memory request: the memory limit, else guest memory (or the hugepage size) x 100 /
   ``memoryOvercommit`` (hugepages included, as in v1.9.0 and main at the ``kubevirt-main``
   table's commit; upstream stopped dividing hugepages later, kubevirt/kubevirt#18880);
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

Copies are Go's: where upstream copies one ``Quantity`` struct into another slot (steps 3 and 4)
and the value is held as a decimal (``1.5Gi``), both slots share it and step 5 adds the overhead to
it twice (:mod:`overhead_service.model.goquantity`); the answer then warns
(:mod:`overhead_service.model.warnings`).

Not rendered (they need cluster objects the request does not carry): Multus network resources,
DRA resource claims and ``devices.kubevirt.io/iommufd``.

The answer::

    {"resources": {"requests": {"cpu": "200m", "ephemeral-storage": "50M", "memory": "1357828096"},
                   "limits": {"devices.kubevirt.io/kvm": "1", "devices.kubevirt.io/tun": "1", ...}},
     "annotations": {"kubevirt.io/memory-overhead-bytes": "283115520"},
     "overhead": {...}, "hypervisor": {...}, "table": {...}, "cpuArch": "amd64",
     "memlock": {...the RLIMIT_MEMLOCK virt-handler sets, overhead_service.model.memlock...},
     "warnings": [{"code": ..., "message": ..., "path": ...}, ...]}

Where upstream would compute platform-dependent garbage (a NaN or overflowing limits ratio) or
crash (a CPU request string Go cannot parse back), the request is refused with the field's path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from overhead_service.errors import InputError, InvalidQuantity
from overhead_service.model.engine import parse_ratio, sum_plan
from overhead_service.model.goquantity import QuantityVar
from overhead_service.model.memlock import (
    KubeVirtVersion,
    memlock,
    memlock_arch,
    memlock_facts,
    upstream_overhead,
)
from overhead_service.model.quantity import (
    GO_ZERO,
    INT64_FLOAT_BOUND,
    KILO,
    Format,
    Quantity,
    go_int_div,
    parse_quantity,
    wrap_int64,
)
from overhead_service.model.render_input import (
    AUTO_MEMORY_LIMITS_RATIO_LABEL,
    CPU,
    DEV,
    MEMORY,
    NamespaceFacts,
    RenderConfig,
    RenderSpec,
    check_admission,
)
from overhead_service.model.service import OverheadService
from overhead_service.model.vmi import extract_features
from overhead_service.model.warnings import Code, render_warnings

__all__ = [
    "AUTO_MEMORY_LIMITS_RATIO_LABEL",
    "EVEN_PARITY_ANNOTATION",
    "OVERHEAD_ANNOTATION",
    "go_format_g",
    "render",
]

OVERHEAD_ANNOTATION: Final = "kubevirt.io/memory-overhead-bytes"
EVEN_PARITY_ANNOTATION: Final = "alpha.kubevirt.io/EmulatorThreadCompleteToEvenParity"

_OVERHEAD_FIELDS: Final = frozenset(
    {"vmi", "cpuArch", "hypervisor", "kubevirtConfiguration", "node", "table"}
)
_FIELDS: Final = _OVERHEAD_FIELDS | {"namespace"}

EPHEMERAL: Final = "ephemeral-storage"
_DEVICES: Final = "devices.kubevirt.io/"

_ZERO_BINARY: Final = Quantity(0, 0, Format.BINARY_SI)  # ResourceList.Memory() of a missing entry
_ONE: Final = Quantity(1, 0, Format.DECIMAL_SI)  # resource.MustParse("1") and NewQuantity(1, DecimalSI)
_EPHEMERAL_OVERHEAD: Final = Quantity(50, 6, Format.DECIMAL_SI)  # resource.MustParse("50M")
# The tables that reproduce each KubeVirt version's own formula (virt-handler's memlock sum uses it).
_UPSTREAM_TABLES: Final = {KubeVirtVersion.V1_9_0: "kubevirt-v1.9.0", KubeVirtVersion.MAIN: "kubevirt-main"}


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


def _add_to(resources: dict[str, QuantityVar], name: str, amount: Quantity) -> None:
    """Go's ``q := m[name]; q.Add(amount); m[name] = q`` (a missing entry is the zero ``Quantity{}``)."""
    found = resources.get(name)
    value = QuantityVar(GO_ZERO) if found is None else found.copy()
    value.add(amount)
    resources[name] = value


class _Renderer:
    """Upstream's ``ResourceRenderer``: the VMI's own lists and the calculated ones.

    The pod gets the calculated entries overlaid by the VMI's (so a VMI entry always wins), which
    is why the two are kept apart exactly as upstream keeps them.  Entries are Go variables
    (:class:`QuantityVar`): every place upstream copies a ``Quantity`` struct copies one here, so
    copies that share a decimal change together, as in Go.
    """

    def __init__(self, spec: RenderSpec) -> None:
        # NewResourceRenderer copies the VMI's entries (each parsed field has a decimal of its own).
        self.vm_requests = {name: QuantityVar(q) for name, q in spec.requests.items()}
        self.vm_limits = {name: QuantityVar(q) for name, q in spec.limits.items()}
        self.calc_requests: dict[str, QuantityVar] = {}
        self.calc_limits: dict[str, QuantityVar] = {}
        # The VMI's spec.domain.memory.guest (a pointer upstream; WithMemoryRequests copies it).
        self.guest = None if spec.guest is None else QuantityVar(spec.guest)
        self.shared_memory = False  # the memory request and limit shared one decimal at the overhead

    def requests(self) -> dict[str, QuantityVar]:
        """``Requests()``: copies of the calculated entries, overlaid by copies of the VMI's."""
        return {name: q.copy() for name, q in {**self.calc_requests, **self.vm_requests}.items()}

    def limits(self) -> dict[str, QuantityVar]:
        return {name: q.copy() for name, q in {**self.calc_limits, **self.vm_limits}.items()}

    def memory(self, resources: dict[str, QuantityVar]) -> Quantity:
        """``ResourceList.Memory().Value()``'s quantity: a missing entry is a BinarySI zero."""
        found = resources.get(MEMORY)
        return _ZERO_BINARY if found is None else found.get()

    def request_resource(self, names: list[str]) -> None:
        """``requestResource`` for each name: +1 in both lists, on a merged copy kept as calculated."""
        requests, limits = self.requests(), self.limits()
        for name in names:
            for resources in (limits, requests):
                if name in resources:
                    _add_to(resources, name, _ONE)
                else:
                    resources[name] = QuantityVar(_ONE)
        self.calc_limits.update(limits)
        self.calc_requests.update(requests)


def _memory_requests(r: _Renderer, spec: RenderSpec, overcommit: int) -> None:
    """``WithMemoryRequests`` (only called when the VMI requests no memory).

    KubeVirt v1.9.0 (and main at the ``kubevirt-main`` table's commit) divides by
    ``memoryOvercommit`` whatever the memory is, hugepages included.
    """
    limit, request = r.vm_limits.get(MEMORY), r.vm_requests.get(MEMORY)
    if limit is not None and not limit.get().is_zero() and (request is None or request.get().is_zero()):
        r.vm_requests[MEMORY] = limit.copy()
    if MEMORY in r.vm_requests:
        return
    memory = r.guest
    if memory is None and spec.page_size is not None:
        try:
            memory = QuantityVar(parse_quantity(spec.page_size))
        except InvalidQuantity:
            memory = None  # upstream ignores a page size ParseQuantity refuses
    if memory is not None and memory.get().value() > 0:
        if overcommit == 100:
            r.vm_requests[MEMORY] = memory.copy()
        else:
            value = go_int_div(wrap_int64(memory.get().value() * 100), overcommit)
            r.vm_requests[MEMORY] = QuantityVar(Quantity.from_int(value, memory.format))


def _cpu_pinning(r: _Renderer, spec: RenderSpec) -> None:
    """``WithCPUPinning``: whole CPUs, request = limit; the memory limit is a copy of the request."""
    binary = Format.BINARY_SI
    if spec.topology != 0:
        total = Quantity.from_int(spec.topology + spec.io_thread_cpus, binary)
        r.vm_limits[CPU], r.vm_requests[CPU] = QuantityVar(total), QuantityVar(total)
    else:
        io_threads = Quantity.from_int(spec.io_thread_cpus, binary)
        for resources in (r.vm_limits, r.vm_requests):
            if CPU in resources:
                _add_to(resources, CPU, io_threads)
    if spec.isolate_emulator:
        limits = r.vm_limits[CPU].get() if CPU in r.vm_limits else GO_ZERO
        emulator = 1
        if (
            EVEN_PARITY_ANNOTATION in spec.annotations
            and wrap_int64(limits.value() + spec.additional_cpus) % 2 == 0
        ):
            emulator = 2
        _add_to(r.vm_limits, CPU, Quantity.from_int(emulator, binary))
        if CPU in r.vm_requests:
            _add_to(r.vm_requests, CPU, Quantity.from_int(emulator, binary))
    if MEMORY in r.vm_requests:
        r.vm_limits[MEMORY] = r.vm_requests[MEMORY].copy()


def _without_dedicated_cpu(r: _Renderer, spec: RenderSpec, ratio: int, with_limits: bool) -> None:
    """``WithoutDedicatedCPU``: (vCPUs + IO threads) / cpuAllocationRatio, printed by ``%g``."""
    vcpus = spec.topology if spec.cpu_present else 1
    total = vcpus + spec.io_thread_cpus
    if total == 0:
        return
    value = float(total) / float(ratio)
    text = go_format_g(value) if value >= 1 else go_format_g(value * 1000) + "m"
    try:
        r.calc_requests[CPU] = QuantityVar(parse_quantity(text))
    except InvalidQuantity:
        raise InputError(
            f"{DEV}.cpuAllocationRatio",
            f"gives a CPU request of {text!r}, which Kubernetes cannot parse (virt-controller would fail)",
        ) from None
    if with_limits:
        r.calc_limits[CPU] = QuantityVar(Quantity.from_int(total))


def _hugepages(r: _Renderer, page_size: str, overhead: Quantity) -> None:
    """``WithHugePages``: hugepages hold the guest; the memory request is the overhead and the rest."""
    requested = r.memory(r.vm_requests)
    pages = r.vm_requests[MEMORY] if MEMORY in r.vm_requests else QuantityVar(_ZERO_BINARY)
    guest = r.guest
    if guest is not None and requested.value() > guest.get().value():
        pages = guest
    name = "hugepages-" + page_size
    r.calc_requests[name], r.calc_limits[name] = pages.copy(), pages.copy()
    request_rest = QuantityVar(Quantity.scaled(0, KILO))
    limit_rest = QuantityVar(Quantity.scaled(0, KILO))
    if guest is not None:
        limited = r.memory(r.vm_limits)
        if requested.value() > guest.get().value():
            request_rest.add(requested)
            request_rest.sub(guest.get())
        if limited.value() > guest.get().value():
            limit_rest.add(limited)
            limit_rest.sub(guest.get())
    request_rest.add(overhead)
    r.vm_requests[MEMORY] = request_rest
    if MEMORY in r.vm_limits:
        limit_rest.add(overhead)
        r.vm_limits[MEMORY] = limit_rest


def _memory_overhead(r: _Renderer, spec: RenderSpec, overhead: Quantity) -> None:
    """``WithMemoryOverhead``: the limit always gets the overhead; the request unless overcommitted.

    A request and limit that are copies of one decimal-backed quantity both see both additions.
    """
    request, limit = r.vm_requests.get(MEMORY), r.vm_limits.get(MEMORY)
    r.shared_memory = request is not None and limit is not None and request.shares_value_with(limit)
    if not spec.overcommit_guest_overhead:
        _add_to(r.vm_requests, MEMORY, overhead)
    else:
        r.vm_requests[MEMORY] = QuantityVar(GO_ZERO) if request is None else request.copy()
    if limit is not None:
        _add_to(r.vm_limits, MEMORY, overhead)


def _auto_memory_limits(r: _Renderer, ratio: float) -> None:
    """``WithAutoMemoryLimits``: limit = int64(float64(request) x ratio), in the request's format."""
    request = r.vm_requests[MEMORY].get() if MEMORY in r.vm_requests else GO_ZERO
    product = float(request.value()) * ratio
    if (
        not -INT64_FLOAT_BOUND <= product < INT64_FLOAT_BOUND
    ):  # NaN too: Go's conversion is platform-dependent
        raise InputError(
            f"namespace.labels.{AUTO_MEMORY_LIMITS_RATIO_LABEL}",
            "makes the memory limit overflow 64-bit bytes (or is NaN)",
        )
    r.calc_limits[MEMORY] = QuantityVar(Quantity.from_int(int(product), request.format))


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

    config = RenderConfig(body.get("kubevirtConfiguration"))
    namespace = NamespaceFacts(body.get("namespace"))
    vmi = body["vmi"]
    spec = RenderSpec(vmi)
    check_admission(spec)
    overhead = _overhead_quantity(answer, vmi, service)
    r = _render(spec, config, namespace, overhead, answer["hypervisor"]["deviceResource"])
    requests, limits = r.requests(), r.limits()

    release = service.release_of(answer["table"]["id"])
    locked = _memlock(body, vmi, answer, service, release)
    found = [w for w in answer["warnings"] if w["code"] != Code.REQUEST_BELOW_GUEST]
    values = {name: q.get() for name, q in requests.items()}
    found.extend(render_warnings(spec, config.memory_overcommit, r.shared_memory, values, overhead, release))
    return {
        "resources": {
            "requests": {name: str(q) for name, q in sorted(requests.items())},
            "limits": {name: str(q) for name, q in sorted(limits.items())},
        },
        "annotations": {OVERHEAD_ANNOTATION: str(answer["overhead"]["bytes"])},
        "overhead": answer["overhead"],
        "hypervisor": answer["hypervisor"],
        "table": answer["table"],
        "cpuArch": answer["cpuArch"],
        "memlock": locked,
        "warnings": found,
    }


def _memlock(
    body: dict[str, Any], vmi: Any, answer: dict[str, Any], service: OverheadService, release: str
) -> dict[str, Any] | None:
    """The RLIMIT_MEMLOCK virt-handler of the table's KubeVirt version gives QEMU (model/memlock.py).

    virt-handler computes its own ``GetMemoryOverhead`` with upstream's formula whatever table the
    answer used, so the sum takes the upstream table of that version (no network-binding memory).
    """
    version = KubeVirtVersion(release)
    hypervisor = answer["hypervisor"]["name"]
    features = extract_features(vmi)
    node_arch = body.get("cpuArch") or service.default_arch  # virt-handler's runtime.GOARCH
    arch = memlock_arch(hypervisor, features.architecture, node_arch)
    table_id = _UPSTREAM_TABLES[version]
    model = service.tables.get(table_id).model_for(hypervisor, arch) if table_id in service.tables else None
    if model is None:  # no upstream formula to sum (a registry without it, an unknown architecture)
        return None
    config = body.get("kubevirtConfiguration") or {}
    ratio = parse_ratio(config.get("additionalGuestMemoryOverheadRatio"))  # validated by compute
    overhead = upstream_overhead(model, features, arch, ratio)
    return memlock(memlock_facts(vmi), hypervisor, overhead, version).to_json()


def _render(
    spec: RenderSpec, config: RenderConfig, namespace: NamespaceFacts, overhead: Quantity, device: str | None
) -> _Renderer:
    """Upstream's renderer options, in ``RenderLaunchManifest``'s order."""
    emulation = device is None
    r = _Renderer(spec)
    # WithEphemeralStorageRequest
    _add_to(r.vm_requests, EPHEMERAL, _EPHEMERAL_OVERHEAD)
    if EPHEMERAL in r.vm_limits:
        _add_to(r.vm_limits, EPHEMERAL, _EPHEMERAL_OVERHEAD)
    # WithVirtualizationResources(getRequiredResources(...)): limits only
    required = [
        (spec.tun, _DEVICES + "tun"),
        (spec.virtio_net and not emulation, _DEVICES + "vhost-net"),
        (device is not None, device or ""),
        (spec.vsock, _DEVICES + "vhost-vsock"),
    ]
    r.vm_limits.update({name: QuantityVar(_ONE) for wanted, name in required if wanted})

    if spec.requests.get(MEMORY, GO_ZERO).is_zero():
        _memory_requests(r, spec, config.memory_overcommit)
    if spec.dedicated:
        _cpu_pinning(r, spec)
    else:
        _without_dedicated_cpu(
            r, spec, config.cpu_allocation_ratio, _auto_cpu_limits(spec, config, namespace)
        )
    if spec.page_size is not None:
        _hugepages(r, spec.page_size, overhead)
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
    return r


def _auto_cpu_limits(spec: RenderSpec, config: RenderConfig, namespace: NamespaceFacts) -> bool:
    """``doesVMIRequireAutoCPULimits``: no VMI cpu limit, and a quota or the namespace selector."""
    if CPU in spec.limits:
        return False
    if namespace.quota_cpu:
        return True
    selector = config.cpu_limit_selector
    return selector is not None and namespace.known and selector.matches(namespace.labels)
