"""A VMI's overhead under a calibration model, in upstream's order of operations.

1. the model's components, each added to a DecimalSI zero as Go's ``Quantity.Add`` would;
2. ``additionalGuestMemoryOverheadRatio`` (KubeVirt's ``MultiplyMemory``): works on the overhead
   rounded up to whole kB, a float64 product truncated to int64, added back as kB;
3. network-binding memory (passt plus registered plugins), added *after* the ratio.

The node-level components form a separate sum that neither the ratio nor the network touches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from overhead_service.errors import InputError, InvalidRatio
from overhead_service.model.gofloat import GoFloatError, parse_go_float
from overhead_service.model.quantity import GO_ZERO, INT64_FLOAT_BOUND, KILO, MAX_INT64, MIN_INT64, Quantity
from overhead_service.model.tables import Block, Component, Model, Step
from overhead_service.model.vmi import VmiFeatures

__all__ = ["OverheadBreakdown", "compute_overhead", "parse_ratio", "sum_plan"]

RATIO_PATH: Final = "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"
_ACCUMULATOR: Final = Quantity.scaled(0, KILO)  # upstream: NewScaledQuantity(0, Kilo)


@dataclass(slots=True)
class OverheadBreakdown:
    """The pod and node overhead of one VMI, each with the components that sum to it."""

    overhead: Quantity
    node_overhead: Quantity
    components: list[dict[str, Any]]  # {"name", "bytes"}, the answer's entries
    node_components: list[dict[str, Any]]


def parse_ratio(text: str | None) -> float | None:
    """The ratio as upstream would use it; None when unset or empty (upstream's "unset").

    Where upstream would silently ignore the ratio (Go's ParseFloat rejects it) or produce
    platform-dependent garbage (NaN, ±Inf), this is an input error instead.
    """
    if text is None or text == "":
        return None
    try:
        ratio = parse_go_float(text)
    except GoFloatError as err:
        raise InvalidRatio(
            RATIO_PATH,
            f"{text!r} is not a number Go's strconv.ParseFloat accepts ({err.reason}); "
            "KubeVirt would silently ignore it",
        ) from None
    if not math.isfinite(ratio):
        raise InvalidRatio(
            RATIO_PATH, f"{text!r} is not finite; KubeVirt's result would be platform-dependent"
        )
    return ratio


def sum_plan(
    plan: tuple[Step, ...], features: VmiFeatures, arch: str, start: Quantity
) -> tuple[Quantity, list[dict[str, Any]]]:
    """Add the components' terms in order, exactly as repeated ``Quantity.Add`` calls would.

    This is the hot path.  While every term is a whole number in Go's int64 form (the upstream
    tables' case) the running sum is a plain int with Go's format rule applied by hand; the first
    term that is not, or an int64 overflow, hands over to :meth:`Quantity.add`.
    """
    acc, exp, fmt = start.unscaled, start.exp, start.format
    total: Quantity | None = None if not start.big else start
    parts: list[dict[str, Any]] = []
    flags = features.flags
    for step in plan:
        if step.__class__ is Block:
            if total is None and acc >= 0 and (acc == 0 or exp == 0) and acc + step.total <= MAX_INT64:
                if acc == 0:
                    fmt, exp = step.first_format, 0
                acc += step.total
                parts.extend(step.parts)
                continue
            components: tuple[Component, ...] = step.components
        else:
            components = (step,)  # type: ignore[assignment]
        for c in components:
            if c.when_arch is not None:
                if c.when_arch != arch:
                    continue
            elif c.when_feature is not None and flags[c.when_feature] is c.when_negate:
                continue
            if total is None and (acc == 0 or exp == 0):
                # Fast path: a whole number in int64 form, added with Go's format rule by hand.
                value = c.fast_value
                if value is not None:
                    value_format = c.constant.format  # type: ignore[union-attr]
                elif c.int_term is not None:
                    value, value_format = c.int_term(features), c.int_format
                if value is not None:
                    candidate = acc + value
                    if MIN_INT64 <= candidate <= MAX_INT64:
                        if acc == 0:
                            fmt = value_format  # Go: a zero receiver takes the operand's format
                            if value:
                                exp = 0
                        acc = candidate
                        parts.append(c.part if c.part is not None else {"name": c.name, "bytes": value})
                        continue
            terms = c.terms(features) if c.terms is not None else c.quantities(features)
            if not terms:
                continue
            if total is None:
                total = Quantity(acc, exp, fmt)
            subtotal = terms[0]
            total = total.add(subtotal)
            for term in terms[1:]:
                total = total.add(term)
                subtotal = subtotal.add(term)
            parts.append({"name": c.name, "bytes": subtotal.value()})
    return (total if total is not None else Quantity(acc, exp, fmt)), parts


def _check_int64(total: Quantity, error: type[InputError], path: str, what: str) -> None:
    if not total.big:
        return  # Go's int64 form: in range by construction
    num, den = total.as_fraction()
    if not MIN_INT64 * den <= num <= MAX_INT64 * den:
        raise error(path, f"{what} makes the overhead overflow 64-bit bytes")


def _network_memory(features: VmiFeatures, model: Model, bindings: Mapping[str, Quantity | None]) -> Quantity:
    """KubeVirt's ``MemoryCalculator.Calculate``: passt once, then each distinct registered plugin."""
    total = GO_ZERO
    if features.passt:
        total = total.add(model.passt_binding)
    plugins = GO_ZERO
    for name in features.binding_names:
        if name in bindings:
            memory = bindings[name]
            if memory is not None:
                plugins = plugins.add(memory)
    return total.add(plugins)


def compute_overhead(
    model: Model,
    features: VmiFeatures,
    arch: str,
    ratio: float | None,
    bindings: Mapping[str, Quantity | None],
) -> OverheadBreakdown:
    """The pod and node overhead of one VMI under ``model``.

    ``bindings`` maps each registered network-binding plugin to its memory request (None when the
    plugin declares none).
    """
    total, parts = sum_plan(model.plan, features, arch, _ACCUMULATOR)
    _check_int64(
        total, InputError, "vmi.spec.domain.memory.reservedOverhead.addedOverhead", "the reserved overhead"
    )

    if ratio is not None:
        kilo = float(total.scaled_value(KILO)) * (ratio - 1.0)
        if not -INT64_FLOAT_BOUND <= kilo < INT64_FLOAT_BOUND:
            raise InvalidRatio(RATIO_PATH, "the ratio makes the overhead overflow 64-bit bytes")
        added = Quantity.scaled(int(kilo), KILO)
        total = total.add(added)
        parts.append({"name": "ratio", "bytes": added.value()})
        _check_int64(total, InvalidRatio, RATIO_PATH, "the ratio")

    # Upstream adds the network memory unconditionally (a zero can still hand over its format).
    if features.passt or features.binding_names:
        network = _network_memory(features, model, bindings)
        total = total.add(network)
        parts.append({"name": "networkBinding", "bytes": network.value()})
    elif total.big or total.is_zero():
        total = total.add(GO_ZERO.add(GO_ZERO))  # Go's zero Quantity{} from an empty calculator
    _check_int64(total, InputError, "kubevirtConfiguration.network.binding", "network-binding memory")

    if model.node_plan:
        node_total, node_parts = sum_plan(model.node_plan, features, arch, _ACCUMULATOR)
        _check_int64(node_total, InputError, "vmi", "the node-level overhead")
    else:
        node_total, node_parts = _ACCUMULATOR, []
    return OverheadBreakdown(total, node_total, parts, node_parts)
