"""The fit's design: which parameters of a scope's components the samples identify, as columns.

Each component offers the fit zero or more :class:`Parameter` objects (see the table in
:mod:`overhead_service.calibration.fitting`).  :func:`identify` keeps those the data identify and
says why the others keep the parent's values; :func:`kept_bytes` is what those others add to each
sample, subtracted from the measurements before the fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.calibration.prediction import applies, component_bytes
from overhead_service.calibration.samples import BoolArray, FloatArray, IntArray, SampleArrays
from overhead_service.errors import InputError
from overhead_service.model import tables
from overhead_service.model.quantity import parse_quantity

__all__ = [
    "FIXED_PART",
    "GIB",
    "IO_THREAD",
    "MIN_SUPPORT",
    "Design",
    "Parameter",
    "anchors",
    "identify",
    "kept_bytes",
    "label",
    "parameters",
]

FIXED_PART: Final = "qemu"  # the component that takes the fitted fixed part and the margin
IO_THREAD: Final = "ioThread"
MIN_SUPPORT: Final = 3  # a feature must be present in, and absent from, at least this many samples
GIB: Final = float(1 << 30)
_RANK_TOL: Final = 1e-9


@dataclass(slots=True)
class Parameter:
    """One candidate column: a parameter of a component of the scope."""

    index: int  # in the scope's components
    component: tables.Component
    parameter: str
    kind: str  # "fixed" | "perVcpu" | "perGuestByte" | "once" | "perProbe" | "ioThreads"
    unit: str
    column: FloatArray | None = None  # None: nothing the samples can say
    reason: str | None = None  # why not fitted
    binary: bool = False

    @property
    def is_fixed_part(self) -> bool:
        """Whether this is the fixed part (the intercept), not a 0/1 feature column."""
        return self.kind == "fixed" and not self.binary


@dataclass(frozen=True, slots=True)
class Design:
    """Every parameter of the scope, the fitted ones, and their columns (one per fitted parameter)."""

    parameters: list[Parameter]
    fitted: list[Parameter]
    matrix: FloatArray

    @property
    def fixed_part(self) -> Parameter:
        """The fitted fixed part (always identified: :func:`identify` tests it first)."""
        return next(param for param in self.fitted if param.is_fixed_part)

    @property
    def anchors(self) -> list[Parameter]:
        """The fitted fixed parts: one per scope."""
        return [param for param in self.fitted if param.is_fixed_part]

    @property
    def io_thread_columns(self) -> list[int]:
        """Positions of the per-IOThread parameter among the fitted ones (at most one)."""
        return [i for i, param in enumerate(self.fitted) if param.kind == "ioThreads"]


def label(param: Parameter) -> str:
    """The parameter's name in warnings and collinearity verdicts."""
    if param.parameter in ("quantity", "coefficient"):
        return param.component.name
    return f"{param.component.name}.{param.parameter}"


Covers = Sequence[BoolArray | None] | None  # per component: which samples measured it (None: all)


def identify(
    components: tuple[tables.Component, ...],
    samples: SampleArrays,
    arch: str,
    covers: Covers = None,
    fixed: Sequence[int] | None = None,
) -> Design:
    """Which parameters the data identify (:func:`parameters`, screened, then tested for rank).

    ``covers``: per component, which samples' scope covers it (None: every sample's); ``fixed``: the
    components that take the fixed parts (default: :func:`fixed_part_index`'s one).
    """
    params = parameters(components, samples, arch, covers, fixed)
    candidates = _screen(params, len(samples))
    matrix = np.column_stack([param.column for param in candidates if param.column is not None])
    verdicts = _independent(matrix.T @ matrix, [label(param) for param in candidates])
    for param, verdict in zip(candidates, verdicts, strict=True):
        param.reason = verdict
    fitted = [param for param in candidates if param.reason is None]
    if len(fitted) < len(candidates):
        matrix = matrix[:, [i for i, param in enumerate(candidates) if param.reason is None]]
    return Design(params, fitted, matrix)


def parameters(
    components: tuple[tables.Component, ...],
    samples: SampleArrays,
    arch: str,
    covers: Covers = None,
    fixed: Sequence[int] | None = None,
) -> list[Parameter]:
    """Every parameter of the scope(s), the fixed parts first, with its column where one exists."""
    anchored = frozenset(fixed if fixed is not None else (fixed_part_index(components),))
    params: list[Parameter] = []
    for index, component in enumerate(components):
        cover = None if covers is None else covers[index]
        params.extend(_component_parameters(index, component, anchored, samples, arch, cover))
    # The fixed parts first: the rank test then judges every other column against them.
    params.sort(key=lambda param: param.index not in anchored or param.kind != "fixed")
    return params


def _component_parameters(
    index: int,
    component: tables.Component,
    anchored: frozenset[int],
    samples: SampleArrays,
    arch: str,
    cover: BoolArray | None,
) -> list[Parameter]:
    """The parameters one component offers (none for ``reservedOverhead`` and unknown terms)."""
    term = component.spec.get("term")
    mask = applies(component, samples, arch)
    if mask is not None and cover is not None:
        mask = mask & cover

    def column(values: NDArray[Any]) -> FloatArray | None:
        return None if mask is None else np.where(mask, values, 0).astype(np.float64)

    def make(parameter: str, kind: str, unit: str, values: FloatArray | None, **extra: Any) -> Parameter:
        return Parameter(index, component, parameter, kind, unit, values, **extra)

    if term == "fixed":
        unconditional = component.when_feature is None and component.when_arch is None
        if index in anchored:
            ones = np.ones(len(samples), np.float64) if cover is None else cover.astype(np.float64)
            return [make("quantity", "fixed", "bytes", ones)]
        io_threads = samples.io_threads if cover is None else samples.io_threads[cover]
        if component.name == IO_THREAD and unconditional and len(io_threads) and np.ptp(io_threads) > 0:
            return [make("quantity", "ioThreads", "bytes/IOThread", column(samples.io_threads))]
        if component.when_arch is not None:
            applies_here = "always applies" if component.when_arch == arch else "does not apply"
            return [make("quantity", "fixed", "bytes", None, reason=f"{applies_here} on {arch!r}")]
        if mask is None:
            return [make("quantity", "fixed", "bytes", None, reason="condition not in the samples")]
        return [make("quantity", "fixed", "bytes", column(np.ones(len(samples))), binary=True)]
    if term == "perVcpu":
        param = make("quantity", "perVcpu", "bytes/vCPU", column(samples.vcpus))
        offline_samples = ~samples.vcpus_online if cover is None else ~samples.vcpus_online & cover
        offline = int(np.count_nonzero(offline_samples))
        if offline:
            param.column, param.reason = None, f"vcpusOnline is false for {offline} samples"
        return [param]
    if term in ("perGuestByte", "requestPageTables"):
        guest = column(samples.guest_memory_bytes / GIB)
        return [make("coefficient", "perGuestByte", "bytes/guest byte", guest)]
    if term == "execProbes":
        once, per = column(samples.exec_probes > 0), column(samples.exec_probes)
        return [
            make("once", "once", "bytes", once, binary=True),
            make("perProbe", "perProbe", "bytes/probe", per),
        ]
    return []  # reservedOverhead and unknown terms: nothing to fit (reported by the summary)


def fixed_part_index(components: tuple[tables.Component, ...]) -> int:
    """Index of the component that takes the fixed part: ``qemu``, else the first plain constant."""
    plain = [
        i
        for i, component in enumerate(components)
        if component.spec.get("term") == "fixed"
        and component.when_feature is None
        and component.when_arch is None
    ]
    for i in plain:
        if components[i].name == FIXED_PART:
            return i
    if not plain:
        raise InputError("parent", "the scope has no unconditional fixed component to take the fixed part")
    return plain[0]


def anchors(
    components: tuple[tables.Component, ...], covered: Mapping[str, tuple[bool, ...]]
) -> dict[str, int]:
    """Per scope, the component that takes its fixed part and its margin.

    One scope: :func:`fixed_part_index`'s.  Several: that among the scope's components that no other
    of the scopes within it covers (``pod`` with ``qemu``: not ``qemu``'s), so each scope's margin
    has a component of its own.  ``covered``: per scope, which of ``components`` it covers.
    """
    if len(covered) == 1:
        return {scope: fixed_part_index(components) for scope in covered}
    found: dict[str, int] = {}
    for scope, mine in covered.items():
        inner = [
            theirs
            for other, theirs in covered.items()
            if other != scope and all(m or not t for m, t in zip(mine, theirs, strict=True))
        ]
        own = [i for i, m in enumerate(mine) if m and not any(theirs[i] for theirs in inner)]
        try:
            found[scope] = own[fixed_part_index(tuple(components[i] for i in own))]
        except InputError:
            raise InputError(
                "scope", f"{scope} has no unconditional fixed component of its own among the scopes fitted"
            ) from None
    return found


def _screen(params: list[Parameter], count: int) -> list[Parameter]:
    """Mark parameters the samples cannot identify; return the candidates, the fixed part first."""
    candidates: list[Parameter] = []
    for param in params:
        column = param.column
        if column is None:
            param.reason = param.reason or "not measurable from the samples"
            continue
        if param.is_fixed_part:
            candidates.append(param)
            continue
        low, high = float(column.min()), float(column.max())
        if high == 0:
            param.reason = "absent from every sample"
        elif low == high:
            param.reason = "constant in the samples: not separable from the fixed part"
        elif param.binary:
            present = int(np.count_nonzero(column))
            if present < MIN_SUPPORT:
                param.reason = f"present in only {present} samples (fewer than {MIN_SUPPORT})"
            elif count - present < MIN_SUPPORT:
                param.reason = f"absent from only {count - present} samples (fewer than {MIN_SUPPORT})"
        if param.reason is None:
            candidates.append(param)
    return candidates


def _independent(gram: FloatArray, names: list[str]) -> list[str | None]:
    """For each column in order: None if independent of the earlier accepted ones, else why not."""
    diagonal = np.sqrt(np.diag(gram))
    scaled = gram / np.outer(diagonal, diagonal)
    accepted: list[int] = []
    verdicts: list[str | None] = []
    for j in range(len(names)):
        if accepted:
            block = scaled[np.ix_(accepted, accepted)]
            cross = scaled[accepted, j]
            weights = np.linalg.solve(block, cross)
            residual = 1.0 - float(cross @ weights)
            if residual < _RANK_TOL:
                partners = [names[accepted[i]] for i, weight in enumerate(weights) if abs(weight) > 1e-6]
                verdicts.append(f"collinear with {', '.join(partners)}")
                continue
        accepted.append(j)
        verdicts.append(None)
    return verdicts


def _parameter_bytes(param: Parameter, samples: SampleArrays, arch: str) -> IntArray:
    """The parent's contribution of one parameter (what is subtracted when it is kept)."""
    component = param.component
    spec = component.spec
    mask: BoolArray | None = applies(component, samples, arch)
    assert mask is not None
    if param.kind == "once":
        return np.where(mask & (samples.exec_probes > 0), parse_quantity(spec["once"]).value(), 0)
    if param.kind == "perProbe":
        return np.where(mask, samples.exec_probes * parse_quantity(spec["perProbe"]).value(), 0)
    part = component_bytes(component, samples, arch)
    assert part is not None
    return part[0]


def kept_bytes(
    components: tuple[tables.Component, ...],
    params: list[Parameter],
    samples: SampleArrays,
    arch: str,
    covers: Covers = None,
) -> IntArray:
    """What the components and parameters that keep the parent's values add to each sample (only
    to the samples whose scope covers the component, with ``covers``)."""
    total = np.zeros(len(samples), np.int64)
    by_component: dict[int, list[Parameter]] = {}
    for param in params:
        by_component.setdefault(param.index, []).append(param)
    for index, component in enumerate(components):
        cover = None if covers is None else covers[index]
        own = by_component.get(index)
        if own is None:
            part = component_bytes(component, samples, arch)
            if part is None:
                raise InputError(
                    "parent", f"component {component.name!r}: condition the samples cannot evaluate"
                )
            total += part[0] if cover is None else np.where(cover, part[0], 0)
            continue
        for param in own:
            if param.reason is not None:
                kept = _parameter_bytes(param, samples, arch)
                total += kept if cover is None else np.where(cover, kept, 0)
    return total
