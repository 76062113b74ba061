"""Warnings: what an answer is right about but the user probably did not want.

Every answer of ``POST /v1/overhead``, ``POST /v1/render`` and each batch item carries
``warnings: [{"code", "message", "path"}]``, empty when there is nothing to say.  ``path`` is the
JSON path of the request field the warning is about.  The codes are stable strings (metric labels):

``provisional-model``
    the model behind the answer was not measured for this hypervisor.
``no-launcher-headroom``
    a memory limit not above the guest memory: the pod's limit is the guest plus KubeVirt's estimate
    exactly, so any underestimate is an OOM kill (the shape of kubevirt/kubevirt#18049).
``negative-added-overhead``
    ``reservedOverhead.addedOverhead`` below zero lowers KubeVirt's estimate (KubeVirt accepts it).
``overhead-ratio-below-one``
    ``additionalGuestMemoryOverheadRatio`` below 1 shrinks the estimate.
``request-below-guest-memory``
    the pod's memory request ends below the guest memory (``/v1/overhead``: a negative overhead).
``mshv-memlock-required-ignored``
    ``reservedOverhead.memLock: Required`` on mshv, which KubeVirt v1.9.0 ignores (#17815).
``added-overhead-in-memlock``
    ``addedOverhead`` counted into QEMU's locked-memory limit though memLock is not Required (#17619).
``rejected-by-kubevirt``
    ``/v1/overhead`` only: KubeVirt would refuse the VMI (a negative request or limit: admission;
    a negative guest memory: virt-launcher); the answer is ``GetMemoryOverhead``'s all the same.
    ``/v1/render`` answers 422 for what admission refuses.
``shared-quantity-double-overhead``
    ``/v1/render`` only: the memory request and limit are copies of one Go quantity held as a
    decimal, so the overhead lands twice in both (:mod:`overhead_service.model.goquantity`).
``hugepages-memory-overcommit``
    ``/v1/render`` only: hugepages with ``memoryOvercommit`` other than 100, which KubeVirt v1.9.0
    (and main at the ``kubevirt-main`` table's commit) applies to hugepages (#18880 changed it later).

Everything here works on facts the answer computed anyway; the common VMI costs a few attribute
tests.
"""

from __future__ import annotations

from typing import Any, Final

from overhead_service.errors import InvalidQuantity
from overhead_service.model.memlock import KubeVirtVersion
from overhead_service.model.quantity import Quantity, parse_quantity
from overhead_service.model.render_input import MEMORY, RenderSpec
from overhead_service.model.tables import Table, TableRegistry
from overhead_service.model.vmi import VmiFeatures

__all__ = ["CODES", "Code", "kubevirt_release", "overhead_warnings", "render_warnings", "warning"]


class Code:
    """The warning codes (stable strings: API enum and metric label values)."""

    PROVISIONAL = "provisional-model"
    NO_HEADROOM = "no-launcher-headroom"
    NEGATIVE_ADDED_OVERHEAD = "negative-added-overhead"
    RATIO_BELOW_ONE = "overhead-ratio-below-one"
    REQUEST_BELOW_GUEST = "request-below-guest-memory"
    MSHV_MEMLOCK_IGNORED = "mshv-memlock-required-ignored"
    ADDED_OVERHEAD_IN_MEMLOCK = "added-overhead-in-memlock"
    REJECTED = "rejected-by-kubevirt"
    SHARED_QUANTITY = "shared-quantity-double-overhead"
    HUGEPAGES_OVERCOMMIT = "hugepages-memory-overcommit"


CODES: Final = tuple(value for key, value in vars(Code).items() if key.isupper())

RELEASE: Final = KubeVirtVersion.V1_9_0.value  # KubeVirt's latest release, the default table's
MAIN: Final = KubeVirtVersion.MAIN.value

_M = "vmi.spec.domain.memory"
_RESERVED = f"{_M}.reservedOverhead"
_RATIO = "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"
_OVERCOMMIT = "kubevirtConfiguration.developerConfiguration.memoryOvercommit"
_R = "vmi.spec.domain.resources"
# What each table's KubeVirt version is, in the words of a warning.
_VERSION_TEXT: Final = {
    RELEASE: "KubeVirt v1.9.0",
    MAIN: "KubeVirt main at the kubevirt-main table's commit (d923fdb815)",
}


def warning(code: str, message: str, path: str) -> dict[str, str]:
    return {"code": code, "message": message, "path": path}


def kubevirt_release(table: Table, tables: TableRegistry) -> str:
    """The KubeVirt version whose virt-controller and virt-handler go with ``table``.

    An upstream table names its ref (``v1.9.0`` or ``main``); a measured table follows its parent
    (read from the provenance, so a fitted table's chain is followed); any other table is taken for
    the latest release, as the service's default table is. Same answers as
    :func:`overhead_service.model.memlock.version_for_table` for the built-in tables.
    """
    seen: set[str] = set()
    while table.id not in seen:
        seen.add(table.id)
        provenance = table.document.get("provenance")
        if not isinstance(provenance, dict):
            break
        if provenance.get("kind") == "upstream" and provenance.get("ref") == MAIN:
            return MAIN
        parent = provenance.get("parent")
        if provenance.get("kind") == "upstream" or not isinstance(parent, str) or parent not in tables:
            break
        table = tables.get(parent)
    return RELEASE


def overhead_warnings(
    features: VmiFeatures,
    hypervisor: str,
    table: dict[str, Any],
    release: str,
    overhead: Quantity,
    ratio: float | None,
) -> list[dict[str, str]]:
    """The warnings an overhead answer carries (``table`` is the answer's ``{"id", "provisional"}``)."""
    limit = features.memory_limit
    if not (
        table["provisional"]
        or limit.unscaled > 0
        or features.reserved_overhead is not None
        or features.mem_lock_required
        or features.negative is not None
        or ratio is not None
        or overhead.unscaled < 0
    ):
        return []
    found: list[dict[str, str]] = []
    if table["provisional"]:
        found.append(_provisional(table["id"], hypervisor))
    if features.negative is not None:
        found.append(_rejected(features.negative))
    if limit.unscaled > 0 and limit.cmp(features.guest_memory) <= 0:
        found.append(no_headroom(limit, features.guest_memory, overhead))
    added = features.reserved_overhead
    if added is not None and added.unscaled < 0:
        found.append(_negative_added(added))
    if ratio is not None and ratio < 1.0:
        found.append(
            warning(
                Code.RATIO_BELOW_ONE,
                f"additionalGuestMemoryOverheadRatio {ratio!r} is below 1, so it shrinks KubeVirt's "
                "overhead estimate instead of adding headroom; virt-operator's KubeVirt update webhook "
                "rejects such a ratio (only a newly created KubeVirt CR can carry it)",
                _RATIO,
            )
        )
    if overhead.unscaled < 0:
        found.append(
            warning(
                Code.REQUEST_BELOW_GUEST,
                f"the overhead is negative ({overhead}), so the pod's memory request (and limit) end "
                "below the guest memory: the guest can use more than the scheduler reserves and the "
                "pod's limit allows; remove the negative addedOverhead or the ratio below 1",
                _RESERVED + ".addedOverhead" if added is not None and added.unscaled < 0 else _RATIO,
            )
        )
    if release == RELEASE:
        found.extend(_memlock(features, hypervisor, added))
    return found


def _provisional(table_id: str, hypervisor: str) -> dict[str, str]:
    return warning(
        Code.PROVISIONAL,
        f"table {table_id!r} has only a provisional {hypervisor} model: nothing behind its numbers was "
        f"measured on {hypervisor}, so treat the overhead as an estimate and leave headroom "
        "(measure the hypervisor and fit a table to replace it)",
        "table",
    )


def _rejected(path: str) -> dict[str, str]:
    field = path.removeprefix("vmi.spec.domain.")
    if field == "memory.guest":
        why = (
            "KubeVirt admits it, but virt-launcher refuses to start the domain "
            "(a memory size must be greater than or equal to 0)"
        )
    else:
        why = "KubeVirt's VMI admission rejects it (must be greater than or equal to 0)"
    return warning(
        Code.REJECTED,
        f"{field} is negative: {why}. This is the overhead KubeVirt's GetMemoryOverhead computes for "
        "it, but no such VMI runs (POST /v1/render refuses what admission rejects)",
        path,
    )


def no_headroom(limit: Quantity, guest: Quantity, overhead: Quantity) -> dict[str, str]:
    return warning(
        Code.NO_HEADROOM,
        f"limits.memory ({limit}) is not above the guest memory ({guest}): KubeVirt adds its overhead "
        f"estimate ({overhead}) to the pod's memory limit, and that estimate is all the room "
        "virt-launcher, QEMU and the kernel get, so any underestimate is an OOM kill (the shape of "
        "kubevirt/kubevirt#18049). Set only memory.guest (and requests.memory) and no memory limit, "
        "or a limit above the guest memory by a margin; additionalGuestMemoryOverheadRatio or "
        "reservedOverhead.addedOverhead also raise the estimate",
        "vmi.spec.domain.resources.limits.memory",
    )


def _negative_added(added: Quantity) -> dict[str, str]:
    return warning(
        Code.NEGATIVE_ADDED_OVERHEAD,
        f"reservedOverhead.addedOverhead is negative ({added}): KubeVirt accepts it and subtracts it "
        "from its overhead estimate (and from QEMU's locked-memory limit where one is set), leaving "
        "the pod less memory than its own estimate",
        _RESERVED + ".addedOverhead",
    )


def _memlock(features: VmiFeatures, hypervisor: str, added: Quantity | None) -> list[dict[str, str]]:
    """KubeVirt v1.9.0 virt-handler's RLIMIT_MEMLOCK (pkg/hypervisor/{kvm,mshv}/runtime.go)."""
    found = []
    locks = features.vfio or features.realtime or features.sev
    if hypervisor == "mshv" and features.mem_lock_required:
        effect = (
            "the limit still comes from its VFIO devices, realtime or SEV"
            if locks
            else "QEMU keeps the container's default locked-memory limit"
        )
        found.append(
            warning(
                Code.MSHV_MEMLOCK_IGNORED,
                "reservedOverhead.memLock: Required is ignored on mshv by KubeVirt v1.9.0's virt-handler "
                f"(kubevirt/kubevirt#17815): {effect}. KubeVirt main sets an unlimited limit for it "
                "(kubevirt/kubevirt#17857); on mshv the mshv_root driver pins the guest's memory itself",
                _RESERVED + ".memLock",
            )
        )
    if added is not None and not features.mem_lock_required and locks and not added.is_zero():
        found.append(
            warning(
                Code.ADDED_OVERHEAD_IN_MEMLOCK,
                f"reservedOverhead.addedOverhead ({added}) is counted into QEMU's locked-memory limit "
                "although memLock is not Required: KubeVirt v1.9.0's virt-handler sets it to "
                "GetMemoryOverhead (which includes addedOverhead) plus the guest memory for VFIO, "
                "realtime and SEV VMIs (kubevirt/kubevirt#17619); KubeVirt main sets it unlimited",
                _RESERVED + ".addedOverhead",
            )
        )
    return found


# --- /v1/render ---------------------------------------------------------------------------------


def render_warnings(
    spec: RenderSpec,
    overcommit: int,
    shared: bool,
    requests: dict[str, Quantity],
    overhead: Quantity,
    release: str,
) -> list[dict[str, str]]:
    """The warnings only the rendered pod shows (``requests`` are the pod's final requests)."""
    found = []
    if shared:
        found.append(_shared_quantity(spec, requests[MEMORY], overhead))
    if spec.page_size is not None:
        if overcommit != 100:
            hugepages = _hugepages_overcommit(spec, overcommit, requests, release)
            if hugepages is not None:
                found.append(hugepages)
    else:
        below = _request_below_guest(spec, overcommit, requests.get(MEMORY), overhead)
        if below is not None:
            found.append(below)
    return found


def _integer_spelling(value: Quantity) -> str:
    """``value`` written so that Go keeps it as an int64: a whole binary unit, else plain bytes."""
    num, den = value.as_fraction()
    if num % den:
        return str(value.exact_ceil())
    whole = num // den
    for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if whole % size == 0 and len(str(whole // size)) <= 5:
            return f"{whole // size}{suffix}"
    return str(whole)


def _shared_quantity(spec: RenderSpec, request: Quantity, overhead: Quantity) -> dict[str, str]:
    if not spec.requests.get(MEMORY, _ZERO).is_zero():
        field, source = "requests", spec.requests[MEMORY]
        how = "dedicated CPUs copy the memory request into the limit"
    elif not spec.limits.get(MEMORY, _ZERO).is_zero():
        field, source = "limits", spec.limits[MEMORY]
        how = "the missing memory request is a copy of the limit"
        if spec.dedicated:
            how += ", and dedicated CPUs copy it back into the limit"
    else:
        field, source = "guest", spec.guest or _ZERO
        how = "the guest memory becomes the request and dedicated CPUs copy it into the limit"
    path = f"{_M}.guest" if field == "guest" else f"{_R}.{field}.memory"
    written = spec.written[field]
    if spec.overcommit_guest_overhead:
        effect = (
            f"overcommitGuestOverhead keeps the overhead out of the request, yet the limit's addition "
            f"reaches it: request = limit = {request}, the memory plus the overhead"
        )
    else:
        effect = f"request = limit = {request}, the memory plus twice the overhead ({overhead})"
    return warning(
        Code.SHARED_QUANTITY,
        f"{path.removeprefix('vmi.spec.domain.')} '{str(written)[:40]}' is a quantity Go holds as a "
        f"decimal, and "
        f"{how}; the copies share that decimal, so KubeVirt's renderer adds the overhead to one value "
        f"through both (a Go aliasing quirk, but what the pod gets): {effect}. Write the memory so "
        f"that Go keeps it as an integer: '{_integer_spelling(source)}' (a whole binary unit), a "
        "decimal quantity such as 1.5G, or plain bytes",
        path,
    )


def _hugepages_overcommit(
    spec: RenderSpec, overcommit: int, requests: dict[str, Quantity], release: str
) -> dict[str, str] | None:
    size = spec.page_size or ""
    hugepages = requests.get("hugepages-" + size)
    if hugepages is None or not (spec.requests.get(MEMORY, _ZERO).is_zero()):
        return None
    if not spec.limits.get(MEMORY, _ZERO).is_zero():
        return None  # the request is the limit: memoryOvercommit does not apply
    try:
        page = parse_quantity(size).value()
    except InvalidQuantity:
        return None
    guest = spec.guest
    version = _VERSION_TEXT[release]
    if overcommit > 100 and page > 0 and hugepages.value() % page:
        effect = (
            f"hugepages-{size} = {hugepages}, not a whole number of {size} pages, so Kubernetes "
            "rejects the pod"
        )
    elif overcommit > 100:
        effect = f"hugepages-{size} = {hugepages}, less than the guest memory the pages must hold"
    else:
        effect = (
            f"hugepages-{size} = the guest memory ({guest}) and the surplus memoryOvercommit asks for "
            "lands in the pod's regular memory request"
        )
    future = f"hugepages-{size} = the guest memory" if guest is not None else f"hugepages-{size} = {size}"
    return warning(
        Code.HUGEPAGES_OVERCOMMIT,
        f"memoryOvercommit {overcommit} also divides hugepages-backed memory in {version} "
        f"(virt-controller's WithMemoryRequests): {effect}. Upstream stopped applying memoryOvercommit "
        f"to hugepages after that (kubevirt/kubevirt#18880, not in either kubevirt-* table): there the "
        f"pod gets {future} and memory = the overhead. Set memoryOvercommit to 100 for hugepages VMIs "
        "or give them requests.memory",
        _OVERCOMMIT,
    )


def _request_below_guest(
    spec: RenderSpec, overcommit: int, request: Quantity | None, overhead: Quantity
) -> dict[str, str] | None:
    guest = spec.guest_memory()
    if guest is None or request is None or request.cmp(guest) >= 0:
        return None
    asked = spec.requests.get(MEMORY, _ZERO)
    if overhead.unscaled < 0:
        why, path = f"the overhead is negative ({overhead})", f"{_RESERVED}.addedOverhead"
    elif not asked.is_zero() and asked.cmp(guest) < 0:
        why, path = f"requests.memory ({asked}) is below the guest memory", f"{_R}.requests.memory"
    elif asked.is_zero() and not spec.limits.get(MEMORY, _ZERO).is_zero():
        why = f"it is the memory limit ({spec.limits[MEMORY]}), below the guest memory"
        path = f"{_R}.limits.memory"
    elif overcommit > 100:
        why, path = f"memoryOvercommit {overcommit} makes the request guest x 100 / {overcommit}", _OVERCOMMIT
    else:
        why, path = "the overhead does not make up the difference", f"{_M}.guest"
    return warning(
        Code.REQUEST_BELOW_GUEST,
        f"the pod's memory request ({request}) is below the guest memory ({guest}) because {why}: the "
        "scheduler reserves less than the guest can use, so a busy node can run out of memory and "
        "the kernel's OOM killer picks among its pods",
        path,
    )


_ZERO: Final = Quantity(0)
