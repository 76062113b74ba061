"""Evaluate a calibration model against a VMI, in upstream's order of operations.

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
from typing import Final

from .errors import InputError, InvalidRatio
from .gofloat import GoFloatError, parse_go_float
from .quantity import KILO, MAX_INT64, MIN_INT64, Format, Quantity
from .tables import Component, Model
from .vmi import VmiFeatures

__all__ = ["Evaluation", "evaluate", "parse_ratio"]

RATIO_PATH: Final = "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"
_ACCUMULATOR: Final = Quantity.scaled(0, KILO)  # upstream: NewScaledQuantity(0, Kilo)
_GO_ZERO: Final = Quantity(0, 0, Format.NONE)  # Go's Quantity{}
_INT64_LIMIT: Final = float(2**63)


@dataclass(frozen=True, slots=True)
class Evaluation:
    overhead: Quantity
    node_overhead: Quantity
    components: list[tuple[str, int]]
    node_components: list[tuple[str, int]]


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
        raise InvalidRatio(RATIO_PATH, f"{text!r} is not finite; KubeVirt's result would be platform-dependent")
    return ratio


def _sum(components: tuple[Component, ...], features: VmiFeatures, arch: str, start: Quantity) -> tuple[
    Quantity, list[tuple[str, int]]
]:
    total = start
    parts: list[tuple[str, int]] = []
    for component in components:
        if component.when is not None and not component.when(features, arch):
            continue
        terms = component.terms(features)
        if not terms:
            continue
        subtotal = terms[0]
        total = total.add(subtotal)
        for term in terms[1:]:
            total = total.add(term)
            subtotal = subtotal.add(term)
        parts.append((component.name, subtotal.value()))
    return total, parts


def _check_int64(total: Quantity, path: str, what: str) -> None:
    num, den = total.as_fraction()
    if not MIN_INT64 * den <= num <= MAX_INT64 * den:
        raise InputError(path, f"{what} makes the overhead overflow 64-bit bytes")


def _network_memory(
    features: VmiFeatures, model: Model, bindings: Mapping[str, Quantity | None]
) -> Quantity:
    """KubeVirt's ``MemoryCalculator.Calculate``: passt once, then each distinct registered plugin."""
    total = _GO_ZERO
    if features.passt:
        total = total.add(model.passt_binding)
    plugins = _GO_ZERO
    for name in features.binding_names:
        if name in bindings:
            memory = bindings[name]
            if memory is not None:
                plugins = plugins.add(memory)
    return total.add(plugins)


def evaluate(
    model: Model,
    features: VmiFeatures,
    arch: str,
    ratio: float | None,
    bindings: Mapping[str, Quantity | None],
) -> Evaluation:
    """The pod and node overhead of one VMI under ``model``.

    ``bindings`` maps each registered network-binding plugin to its memory request (None when the
    plugin declares none).
    """
    total, parts = _sum(model.components, features, arch, _ACCUMULATOR)
    _check_int64(total, "vmi.spec.domain.memory.reservedOverhead.addedOverhead", "the reserved overhead")

    if ratio is not None:
        kilo = float(total.scaled_value(KILO)) * (ratio - 1.0)
        if not -_INT64_LIMIT <= kilo < _INT64_LIMIT:
            raise InvalidRatio(RATIO_PATH, "the ratio makes the overhead overflow 64-bit bytes")
        added = Quantity.scaled(int(kilo), KILO)
        total = total.add(added)
        parts.append(("ratio", added.value()))
        _check_int64(total, RATIO_PATH, "the ratio")

    # Upstream adds the network memory unconditionally (a zero can still hand over its format).
    network = _network_memory(features, model, bindings)
    total = total.add(network)
    if features.passt or features.binding_names:
        parts.append(("networkBinding", network.value()))
    _check_int64(total, "kubevirtConfiguration.network.binding", "network-binding memory")

    node_total, node_parts = _sum(model.node_components, features, arch, _ACCUMULATOR)
    _check_int64(node_total, "vmi", "the node-level overhead")
    return Evaluation(total, node_total, parts, node_parts)
