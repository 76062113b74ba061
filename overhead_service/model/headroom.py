"""Steering KubeVirt's own pod sizing towards the service's overhead, without patching KubeVirt.

Two levers on a VMI, both read by the unmodified virt-controller (``renderresources.go``):

- **headroom**: raise ``resources.requests.memory`` (and ``limits.memory``) above the guest's RAM,
  pinned in ``memory.guest``; the renderer adds its overhead on top, so the pod grows by the raise,
  plus the page-table term upstream derives from ``requests.memory`` (whole kB, x ratio);
- **reserved overhead**: ``memory.reservedOverhead.addedOverhead``, added to upstream's overhead
  before the ``additionalGuestMemoryOverheadRatio`` multiplies it (``GetMemoryOverhead`` in
  ``pkg/hypervisor/{kvm,mshv}/hypervisorbackend.go``).

Both are solved with the engine on the upstream model (the smallest raise that reaches the target:
the upstream figure is monotone in either field), then checked by rendering the pod before and
after (:func:`overhead_service.model.render.render`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from overhead_service.errors import InputError, InvalidQuantity
from overhead_service.model.engine import compute_overhead
from overhead_service.model.fields import EMPTY, read_bool, read_object, read_pointer, read_string
from overhead_service.model.quantity import Format, Quantity, go_int_div, parse_quantity, wrap_int64
from overhead_service.model.tables import Model
from overhead_service.model.vmi import VmiFeatures, read_quantity

__all__ = ["MIB", "Memory", "UpstreamFigure", "read_memory", "smallest_at_least"]

MIB: Final = 1 << 20
_R = "vmi.spec.domain.resources"
_M = "vmi.spec.domain.memory"


@dataclass(frozen=True, slots=True)
class Memory:
    """A VMI's memory fields as KubeVirt's defaults, renderer and create admitter read them."""

    request: Quantity | None  # requests.memory, when set and not zero
    limit: Quantity | None  # limits.memory, when set and not zero
    guest: Quantity | None  # memory.guest as set
    page_size: str | None  # hugepages.pageSize, when hugepages are asked for
    page: int | None  # that page size in bytes, when it parses
    dedicated: bool  # cpu.dedicatedCpuPlacement
    overcommit_guest_overhead: bool  # resources.overcommitGuestOverhead
    added_overhead: bool  # memory.reservedOverhead.addedOverhead is set
    reserved_overhead: bool  # memory.reservedOverhead is there at all

    def effective_guest(self) -> Quantity | None:
        """What ``memory.guest`` is, or what KubeVirt's defaults make it (``setGuestMemory``:
        the request, else the limit, else the hugepage size)."""
        if self.guest is not None:
            return self.guest
        if self.request is not None:
            return self.request
        if self.limit is not None:
            return self.limit
        if self.page_size is not None and self.page is not None:
            return parse_quantity(self.page_size)
        return None

    def implicit_request(self, overcommit: int) -> Quantity | None:
        """The request virt-controller renders when the VMI has none (``WithMemoryRequests``)."""
        if self.request is not None:
            return self.request
        if self.limit is not None:
            return self.limit
        memory = self.guest
        if memory is None and self.page_size is not None and self.page is not None:
            memory = parse_quantity(self.page_size)
        if memory is None or memory.value() <= 0:
            return None
        if overcommit == 100:
            return memory
        if self.page_size is not None:
            return None  # KubeVirt releases differ here (kubevirt/kubevirt#18880): not guessed
        return Quantity.from_int(go_int_div(wrap_int64(memory.value() * 100), overcommit), memory.format)


def _nonzero(resources: dict[str, Any], key: str) -> Quantity | None:
    entries = read_object(resources.get(key), f"{_R}.{key}")
    value = entries.get("memory")
    if value is None:
        return None
    quantity = read_quantity(value, f"{_R}.{key}.memory")
    return None if quantity.is_zero() else quantity


def read_memory(vmi: dict[str, Any]) -> Memory:
    """The memory fields of ``vmi``; :class:`InputError` with the path of one that cannot be read."""
    spec = read_object(vmi.get("spec"), "vmi.spec")
    domain = read_object(spec.get("domain"), "vmi.spec.domain")
    resources = read_object(domain.get("resources"), _R)
    memory = read_pointer(domain, "memory", "vmi.spec.domain") or EMPTY
    guest = memory.get("guest")
    hugepages = read_pointer(memory, "hugepages", _M)
    page_size = None if hugepages is None else read_string(hugepages, "pageSize", f"{_M}.hugepages") or ""
    page = None
    if page_size is not None:
        try:
            page = parse_quantity(page_size).value()
        except InvalidQuantity:
            page = None  # KubeVirt's create admitter refuses such a VMI
    reserved = read_pointer(memory, "reservedOverhead", _M)
    cpu = read_pointer(domain, "cpu", "vmi.spec.domain") or EMPTY
    return Memory(
        request=_nonzero(resources, "requests"),
        limit=_nonzero(resources, "limits"),
        guest=None if guest is None else read_quantity(guest, f"{_M}.guest"),
        page_size=page_size,
        page=page if page is not None and page > 0 else None,
        dedicated=bool(read_bool(cpu, "dedicatedCpuPlacement", "vmi.spec.domain.cpu")),
        overcommit_guest_overhead=bool(read_bool(resources, "overcommitGuestOverhead", _R)),
        added_overhead=reserved is not None and reserved.get("addedOverhead") is not None,
        reserved_overhead=reserved is not None,
    )


class UpstreamFigure:
    """The upstream overhead of one VMI as a function of ``requests.memory`` or ``addedOverhead``.

    Summed by the engine on the upstream model, without the network-binding memory (added
    after the ratio, the same whatever the memory): callers use differences, or add the network
    part back from the real answer.
    """

    __slots__ = ("arch", "features", "model", "ratio")

    def __init__(self, model: Model, features: VmiFeatures, arch: str, ratio: float | None) -> None:
        self.model = model
        self.features = features
        self.arch = arch
        self.ratio = ratio

    def at(self, *, request: int | None = None, added: int | None = None) -> int:
        """Bytes, with ``requests.memory`` and/or ``addedOverhead`` set to the given bytes."""
        changes: dict[str, Any] = {}
        if request is not None:
            changes["memory_request"] = Quantity.from_int(request, Format.BINARY_SI)
        if added is not None:
            changes["reserved_overhead"] = Quantity.from_int(added)
        features = dataclasses.replace(self.features, **changes)
        return compute_overhead(self.model, features, self.arch, self.ratio, {}).overhead.value()


def smallest_at_least(
    f: Callable[[int], int], target: int, guess: int, lowest: int | None = None, rounds: int = 70
) -> int:
    """The smallest integer ``k`` (not below ``lowest``) with ``f(k) >= target``, for a
    non-decreasing ``f``; found by widening a bracket around ``guess``, then bisecting it.

    Raises :class:`InputError` when no such ``k`` is within ``2**rounds`` of the guess.
    """
    if lowest is not None:
        guess = max(guess, lowest)
    width = 1
    if f(guess) >= target:
        hi = guess
        while True:
            lo = hi - width
            if lowest is not None and lo < lowest:
                if f(lowest) >= target:
                    return lowest
                lo = lowest
                break
            if f(lo) < target:
                break
            hi, width = lo, width * 2
            if width > 1 << rounds:
                raise InputError("", "no smallest value: the upstream figure does not fall")
    else:
        lo = guess
        while True:
            hi = lo + width
            if f(hi) >= target:
                break
            lo, width = hi, width * 2
            if width > 1 << rounds:
                raise InputError("", "the upstream figure never reaches the target")
    while hi - lo > 1:  # f(lo) < target <= f(hi)
        middle = (lo + hi) // 2
        if f(middle) >= target:
            hi = middle
        else:
            lo = middle
    return hi


Edits = list[tuple[tuple[str, ...], Any]]
_MEMORY: Final = ("spec", "domain", "memory")
_RESOURCES: Final = ("spec", "domain", "resources")


@dataclass(frozen=True, slots=True)
class Raise:
    """A headroom raise: the edits, and what the engine expects the pod's memory to grow by."""

    edits: Edits
    amount: int  # bytes added to requests.memory / limits.memory
    growth: int  # expected growth of the pod's memory request (and limit)
    least: int  # growth of the smallest raise KubeVirt accepts (0 unless the request becomes explicit)
    step: int  # raises come in these units: 1 byte, or one hugepage
    step_growth: int  # how much one more step grows the pod by at most (engine)


def plan_raise(memory: Memory, figure: UpstreamFigure, delta: int, overcommit: int) -> Raise | str:
    """The smallest raise that grows every rendered memory figure that carries the overhead by at
    least ``delta`` bytes, or why there is none."""
    guest = memory.effective_guest()
    if guest is None:
        return "the VMI sets no memory KubeVirt could size it by"
    hugepages = memory.page_size is not None
    if hugepages and memory.page is None:
        return f"hugepages.pageSize {memory.page_size!r} is not a quantity"
    request, limit = memory.request, memory.limit
    # The request carries the overhead unless overcommitGuestOverhead (hugepages ignore that flag);
    # with dedicated CPUs the pod's limit is the request, so raising the request is what grows it.
    needs_request = hugepages or not memory.overcommit_guest_overhead or memory.dedicated
    raise_request = request is not None and (
        needs_request or (limit is not None and request.cmp(limit) == 0)  # keeps guaranteed QoS
    )
    set_request = request is None and limit is None and needs_request
    if not (raise_request or set_request or limit is not None):
        return "overcommitGuestOverhead without a memory limit: no pod figure carries the overhead"
    step = memory.page if hugepages and (raise_request or set_request) and memory.page else 1
    base = request if request is not None else memory.implicit_request(overcommit)
    if base is None:
        return "no memory request to raise (hugepages with memoryOvercommit: releases differ)"
    original = figure.at(request=request.value() if request is not None else 0)
    if raise_request or set_request:

        def growth(k: int) -> int:
            return k * step + figure.at(request=base.value() + k * step) - original
    else:

        def growth(k: int) -> int:
            return k * step

    least = growth(0)
    probe = max(1, delta // step)
    slope = growth(probe) - least
    guess = -(-(delta - least) * probe // slope) if slope > 0 and delta > least else 0
    k = smallest_at_least(growth, delta, guess, lowest=0)
    amount = k * step
    edits: Edits = []
    if memory.guest is None:
        edits.append(((*_MEMORY, "guest"), str(guest)))
    if raise_request or set_request:
        fmt = (request or guest).format
        edits.append(
            ((*_RESOURCES, "requests", "memory"), str(Quantity.from_int(base.value() + amount, fmt)))
        )
    if limit is not None:
        edits.append(
            ((*_RESOURCES, "limits", "memory"), str(Quantity.from_int(limit.value() + amount, limit.format)))
        )
    return Raise(edits, amount, growth(k), least, step, growth(k + 1) - growth(k))


def plan_added_overhead(figure: UpstreamFigure, upstream: int, target: int) -> tuple[Edits, int]:
    """The ``addedOverhead`` (bytes, either sign) that makes the upstream figure the smallest one at
    least ``target``, and that figure. ``upstream`` is the figure without it (network included)."""
    network = upstream - figure.at()
    ratio = figure.ratio if figure.ratio is not None and figure.ratio > 0 else 1.0
    guess = int((target - upstream) / ratio)
    added = smallest_at_least(lambda a: figure.at(added=a) + network, target, guess)
    edit = ((*_MEMORY, "reservedOverhead", "addedOverhead"), str(Quantity.from_int(added)))
    return [edit], figure.at(added=added) + network
