"""What a table's model predicts for samples: by the engine's own code, and vectorised.

A scope's overhead is the sum of the model's components in that scope (:data:`SCOPE_COMPONENTS`);
a fit of several scopes uses the components of any of them (:func:`covered_components`).
:func:`predict` runs the real engine on :func:`~overhead_service.calibration.samples.sample_vmi`'s
VMI; :func:`predict_arrays` gives the same numbers for many samples at once, exactly (integer
arithmetic, and the engine itself for what cannot be vectorised exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Final

import numpy as np

from overhead_service.calibration.samples import (
    MAX_BYTES,
    BoolArray,
    IntArray,
    Sample,
    SampleArrays,
    check_scope,
    sample_vmi,
)
from overhead_service.errors import InputError, NotInTable, TableFormatError
from overhead_service.model import tables
from overhead_service.model.engine import sum_plan
from overhead_service.model.quantity import KILO, Quantity, parse_quantity
from overhead_service.model.vmi import extract_features

__all__ = [
    "SCOPE_COMPONENTS",
    "applies",
    "ceil_mul",
    "component_bytes",
    "covered_components",
    "predict",
    "predict_arrays",
    "scope_components",
    "table_model",
]

SCOPE_COMPONENTS: Final[Mapping[str, tuple[str, ...] | None]] = {
    "qemu": ("pagetables", "qemu", "vcpus", "ioThread", "video", "pflash"),
    "pod": None,  # every pod component
    "node": None,  # the node-level group (nodeComponents)
    "virtqemud": ("virtqemud",),  # the libvirt daemon that starts QEMU
    "virtlogd": ("virtlogd",),  # its log daemon
}
_START: Final = Quantity.scaled(0, KILO)  # the engine's accumulator


def table_model(
    document: tables.Table | Mapping[str, Any], hypervisor: str, arch: str, *, path: str
) -> tuple[tables.Table, tables.Model]:
    """The table (compiled from its document if need be) and its model for (hypervisor, arch);
    an :class:`InputError` at ``path`` when it is not a table or has no such model."""
    if isinstance(document, tables.Table):
        table = document
    else:
        try:
            table = tables.compile_table(document)
        except TableFormatError as err:
            raise InputError(path, f"not a valid table: {err}") from None
    model = table.model_for(hypervisor, arch)
    if model is None:
        raise NotInTable(path, f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
    return table, model


def scope_components(model: tables.Model, scope: str) -> tuple[tables.Component, ...]:
    """The components of ``model`` whose sum is the overhead measured in ``scope``."""
    check_scope(scope)
    if scope == "node":
        return model.node_components
    names = SCOPE_COMPONENTS[scope]
    if names is None:
        return model.components
    return tuple(component for component in model.components if component.name in names)


def covered_components(
    model: tables.Model, scopes: tuple[str, ...]
) -> tuple[tuple[tables.Component, ...], dict[str, tuple[bool, ...]]]:
    """The components a fit of ``scopes`` uses (those of any of them, in the model's order) and, per
    scope, which of them its measurements cover."""
    members = {scope: {id(component) for component in scope_components(model, scope)} for scope in scopes}
    group = model.node_components if scopes == ("node",) else model.components
    used = tuple(component for component in group if any(id(component) in m for m in members.values()))
    return used, {scope: tuple(id(component) in members[scope] for component in used) for scope in scopes}


def _scope_plan(model: tables.Model, scope: str) -> tuple[tables.Step, ...]:
    if scope == "pod":
        return model.plan
    if scope == "node":
        return model.node_plan
    sub = tables.Model(
        model.hypervisor, model.arch, model.provisional, scope_components(model, scope), (), _START
    )
    return sub.plan


def predict(model: tables.Model, sample: Sample, arch: str) -> int:
    """Bytes the components of ``sample.scope`` give for the sample's shape, by the engine's code.

    The components are summed as :func:`engine.compute_overhead` sums them (Go's ``Quantity.Add``), with
    no ratio and no network binding: those are cluster settings, not what was measured.
    """
    features = extract_features(sample_vmi(sample, arch))
    total, _ = sum_plan(_scope_plan(model, sample.scope), features, arch, _START)
    return total.value()


def _whole(quantity: Quantity) -> bool:
    numerator, denominator = quantity.as_fraction()
    return numerator % denominator == 0


def _feature(feature: str, samples: SampleArrays) -> BoolArray | None:
    """A table feature flag as :func:`sample_vmi`'s VMIs have it; None for one samples cannot say."""
    count = len(samples)
    flags: dict[str, Callable[[], BoolArray]] = {
        "graphics": lambda: samples.graphics,
        "vfio": lambda: samples.vfio,
        "downwardMetricsVolume": lambda: samples.downward_metrics,
        "execProbe": lambda: samples.exec_probes > 0,
        "sev": lambda: samples.sev,
        "tpm": lambda: samples.tpm,
        "dedicatedCpu": lambda: samples.dedicated_cpu,
        "guaranteedQos": lambda: np.zeros(count, np.bool_),
        "dedicatedCpuOrGuaranteedQos": lambda: samples.dedicated_cpu,
        "reservedOverhead": lambda: np.zeros(count, np.bool_),
        "passt": lambda: np.zeros(count, np.bool_),
    }
    make = flags.get(feature)
    return None if make is None else make()


def applies(component: tables.Component, samples: SampleArrays, arch: str) -> BoolArray | None:
    """Where ``component`` applies (the engine's ``when``), or None if it cannot be vectorised."""
    if component.when_arch is not None:
        return np.full(len(samples), component.when_arch == arch)
    if component.when_feature is None:
        return np.ones(len(samples), np.bool_)
    flag = _feature(component.when_feature, samples)
    if flag is None:
        return None
    return ~flag if component.when_negate else flag


def ceil_mul(coefficient: Fraction, values: IntArray) -> IntArray:
    """``ceil(coefficient × values)`` exactly, as the engine's ``perGuestByte`` rounds.

    Small fractions use int64 arithmetic; others a float product whose near-integer results
    (where float error could cross an integer) are redone with Python integers.
    """
    numerator, denominator = coefficient.numerator, coefficient.denominator
    if numerator == 0 or len(values) == 0:
        return np.zeros(len(values), np.int64)
    if abs(numerator) * MAX_BYTES + denominator < 1 << 62:
        result: IntArray = (values * numerator + (denominator - 1)) // denominator
        return result
    product = values.astype(np.float64) * float(coefficient)
    result = np.ceil(product).astype(np.int64)
    doubtful = np.abs(product - np.rint(product)) <= 4 * np.finfo(np.float64).eps * np.abs(product) + 1e-300
    if doubtful.any():
        unique, inverse = np.unique(values[doubtful], return_inverse=True)
        exact = np.array([-((-numerator * int(v)) // denominator) for v in unique], dtype=np.int64)
        result[doubtful] = exact[inverse]
    return result


def _page_tables(divisor: int, guest: IntArray) -> IntArray:
    """Upstream's estimate from ``requests.memory`` (kB rounded up, int64 division)."""
    result: IntArray = ((guest + 999) // 1000 * 1000) // divisor
    return result


def component_bytes(
    component: tables.Component, samples: SampleArrays, arch: str
) -> tuple[IntArray, bool] | None:
    """The component's bytes per sample and whether they are exact; None if not vectorisable.

    Not exact only for fractional constants, which the engine sums exactly and rounds up once at
    the end (each is rounded up here).
    """
    mask = applies(component, samples, arch)
    if mask is None:
        return None
    spec = component.spec
    term = spec.get("term")
    exact = True
    values: IntArray
    if term == "fixed":
        assert component.constant is not None
        values = np.full(len(samples), component.constant.value(), np.int64)
        exact = _whole(component.constant)
    elif term == "perVcpu":
        values = samples.vcpus * parse_quantity(spec["quantity"]).value()
    elif term == "perGuestByte":
        values = ceil_mul(Fraction(str(spec["coefficient"])), samples.guest_memory_bytes)
    elif term == "requestPageTables":
        values = _page_tables(int(spec["divisor"]), samples.guest_memory_bytes)
    elif term == "execProbes":
        per, once = parse_quantity(spec["perProbe"]), parse_quantity(spec["once"])
        values = samples.exec_probes * per.value() + (samples.exec_probes > 0) * once.value()
        exact = _whole(per) and _whole(once)
    elif term == "reservedOverhead":
        values = np.zeros(len(samples), np.int64)  # samples carry no reserved overhead
    else:
        return None
    return np.where(mask, values, 0), exact


def predict_arrays(model: tables.Model, scope: str, samples: SampleArrays, arch: str) -> IntArray:
    """:func:`predict` for every sample: vectorised where exact, else the engine per distinct shape."""
    total = np.zeros(len(samples), np.int64)
    for component in scope_components(model, scope):
        part = component_bytes(component, samples, arch)
        if part is None or not part[1]:
            return _predict_by_shape(model, scope, samples, arch)
        total += part[0]
    return total


def _predict_by_shape(model: tables.Model, scope: str, samples: SampleArrays, arch: str) -> IntArray:
    _, first, inverse = np.unique(samples.shapes(), axis=0, return_index=True, return_inverse=True)
    values = np.array([predict(model, samples.sample(int(i), scope), arch) for i in first], dtype=np.int64)
    result: IntArray = values[inverse.reshape(-1)]
    return result
