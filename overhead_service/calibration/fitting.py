"""Fit a calibration table's constants to measurements, and check a table against measurements.

Pure domain code (numpy only): :func:`fit` turns measured overheads into a *draft table* (a table
document :func:`tables.compile_table` accepts) plus a :class:`FitReport`; :func:`evaluate` tells
how well any table covers a set of measurements (coverage, the worst under-provisioned shapes, the
over-provisioning distribution).  Predictions always follow the engine's semantics:
:func:`predict` runs the real engine code on :func:`sample_vmi`'s VMI, and the vectorised
evaluator used for large sample sets is checked against it on every fit.

The model (issue 3).  A scope's overhead is the sum of the parent model's components in that scope
(:data:`SCOPE_COMPONENTS`).  Each component offers the fit zero or more *parameters*:

==========================  =====================  ==========================================
component                   parameter (column)     written as
==========================  =====================  ==========================================
the fixed part              intercept              ``fixed`` quantity, margin included
``perVcpu``                 vCPUs                  ``perVcpu`` quantity (whole bytes)
``requestPageTables`` /     guest bytes            ``perGuestByte`` with an exact decimal
``perGuestByte``                                   ``coefficient`` (rounded up to 1e-12)
``fixed`` with a feature    0/1 feature            ``fixed`` quantity, same ``when``
``execProbes``              any probe / probes     ``once`` / ``perProbe``
``ioThread`` (flat)         IOThreads              ``fixed``: per-IOThread × most IOThreads
==========================  =====================  ==========================================

The fixed part is the ``qemu`` component when the scope has it (scopes ``qemu`` and ``pod``), else
the scope's first unconditional ``fixed`` component.  The other unconditional constants of the
scope (for ``pod``: ``virtLauncherMonitor``, ``virtLauncher``, ``virtlogd``, ``virtqemud``) are
indistinguishable from it, so they keep the parent's values and the fixed part absorbs whatever
the measurements say on top of them; the per-process breakdown of the answer stays meaningful.

Only parameters the data identify are fitted; every other one keeps the parent's value and its
contribution is subtracted from the measurements first.  Not identified: a column that is all zero
(feature never seen), constant (collinear with the fixed part: vCPUs or guest size that never vary,
an always-present feature, ``pflash`` on arm64), seen in fewer than :data:`MIN_SUPPORT` samples
(or missing from fewer), or a linear combination of earlier columns; per vCPU also when any
sample says its vCPUs were not online (the measured memory then says nothing about running vCPUs).

Estimation: non-negative least squares (Lawson–Hanson active set, :func:`nnls_gram`) on the Gram
matrix ``XᵀX``/``Xᵀy``, built in one pass, so the sample count only costs that pass.  Standard
errors are the OLS ones on the active set: ``σ² (X_AᵀX_A)⁻¹`` with ``σ² = RSS / (n − |A|)``; this
treats the active set as known in advance and the errors as homoscedastic (exact when no bound is
active; parameters at the zero bound get no standard error).

Margin (coverage): K-fold cross-conformal.  Each fold's residuals come from a fit on the other
folds; the margin is the ``ceil((n + 1) · target)``-th smallest of these ``n`` out-of-fold
residuals (never negative: the table never goes below the point fit) and goes into the fixed part.
The reported held-out coverage repeats the *whole* procedure per outer fold (fit and margin from
the other folds only, measured on it), so it is an honest estimate of the table's coverage on new
samples.  This needs ``ceil((m + 1) · target) <= m`` for each training split of ``m`` samples:
:func:`minimum_samples` (249 for 0.995 and 5 folds).

``ioThread``: the table format has no per-IOThread term and the engine does not read a VMI's
IOThread count, so when the measured IOThread counts vary the per-IOThread cost is estimated (and
reported) but written as the flat ``fixed`` quantity it gives at the most IOThreads measured; the
margin is calibrated on that table form.  What ``tables.py``/``vmi.py`` would need for the real
thing is ``perIoThread`` (see :data:`PER_IO_THREAD_SPEC`).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.errors import InputError, NotEnoughData, NotInTable, TableFormatError
from overhead_service.model import tables
from overhead_service.model.engine import sum_plan
from overhead_service.model.quantity import KILO, Quantity, parse_quantity
from overhead_service.model.vmi import extract_features

__all__ = [
    "MIN_SUPPORT",
    "SCOPES",
    "SCOPE_COMPONENTS",
    "ComponentFit",
    "FitReport",
    "Sample",
    "SampleArrays",
    "evaluate",
    "fit",
    "fit_arrays",
    "minimum_samples",
    "nnls",
    "nnls_gram",
    "predict",
    "sample_from_record",
    "sample_vmi",
    "scope_components",
]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

SCOPES: Final = ("qemu", "pod", "node")
SCOPE_COMPONENTS: Final[Mapping[str, tuple[str, ...] | None]] = {
    "qemu": ("pagetables", "qemu", "vcpus", "ioThread", "video", "pflash"),
    "pod": None,  # every pod component
    "node": None,  # the node-level group (nodeComponents)
}
FIXED_PART: Final = "qemu"  # the component that takes the fitted fixed part and the margin
IO_THREAD: Final = "ioThread"
MIN_SUPPORT: Final = 3  # a feature must be present in, and absent from, at least this many samples
MIN_SAMPLES_FLOOR: Final = 30
MAX_FOLDS: Final = 20
COEFFICIENT_PLACES: Final = 12  # perGuestByte coefficients are rounded up to 1e-12 byte per byte
WORST: Final = 5  # under-provisioned samples listed by evaluate()
MAX_BYTES: Final = 1 << 50  # 1 PiB: keeps every vectorised product inside int64
MAX_VCPUS: Final = 1 << 16
MAX_IO_THREADS: Final = 1 << 16
MAX_EXEC_PROBES: Final = 2  # liveness and readiness
_GIB: Final = float(1 << 30)
_RIDGE: Final = 1e-12  # on the unit-diagonal Gram: only decides directions the data leave open
_RANK_TOL: Final = 1e-9
_START: Final = Quantity.scaled(0, KILO)  # the engine's accumulator
_SELF_CHECKS: Final = 24

PER_IO_THREAD_SPEC: Final = (
    "tables.py term 'perIoThread' with 'quantity' (a quantity string): the quantity's value times "
    "VmiFeatures.io_threads, an int64 product added with the quantity's format like 'perVcpu'. "
    "vmi.py: io_threads = the number of IOThreads the domain gets (0 when "
    "spec.domain.ioThreadsPolicy is unset; 1 for 'shared'; "
    "spec.domain.ioThreads.supplementalPoolThreadCount for 'supplementalPool'; for 'auto' "
    "upstream's pool of min(2 × vCPUs, disks with an IOThread)), part of memo_key."
)


# --------------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement, reduced to what the fit needs."""

    scope: str  # "qemu" | "pod" | "node"
    overhead_bytes: int
    vcpus: int
    guest_memory_bytes: int
    graphics: bool = False
    io_threads: int = 0
    vfio: bool = False
    tpm: bool = False
    sev: bool = False
    dedicated_cpu: bool = False
    downward_metrics: bool = False
    exec_probes: int = 0
    vcpus_online: bool = True


# (attribute, path in the ingestion record, lowest, highest); booleans have (0, 1) and the record
# path of a boolean is checked as a JSON boolean.
_FIELDS: Final[tuple[tuple[str, str, int, int], ...]] = (
    ("overhead_bytes", "overheadBytes", 0, MAX_BYTES),
    ("vcpus", "vm.vcpus", 1, MAX_VCPUS),
    ("guest_memory_bytes", "vm.guestMemoryBytes", 1, MAX_BYTES),
    ("graphics", "vm.graphics", 0, 1),
    ("io_threads", "vm.ioThreads", 0, MAX_IO_THREADS),
    ("vfio", "vm.vfio", 0, 1),
    ("tpm", "vm.tpm", 0, 1),
    ("sev", "vm.sev", 0, 1),
    ("dedicated_cpu", "vm.dedicatedCpu", 0, 1),
    ("downward_metrics", "vm.downwardMetrics", 0, 1),
    ("exec_probes", "vm.execProbes", 0, MAX_EXEC_PROBES),
    ("vcpus_online", "vm.vcpusOnline", 0, 1),
)
_BOOLEAN: Final = frozenset(
    {"graphics", "vfio", "tpm", "sev", "dedicated_cpu", "downward_metrics", "vcpus_online"}
)
_DEFAULTS: Final[Mapping[str, int]] = {"io_threads": 0, "exec_probes": 0, "vcpus_online": 1}
_REQUIRED: Final = ("overhead_bytes", "vcpus", "guest_memory_bytes")


def _check_scope(scope: Any, path: str = "scope") -> str:
    if scope not in SCOPES:
        raise InputError(path, f"must be one of {', '.join(SCOPES)}, not {scope!r}")
    return str(scope)


def sample_from_record(record: Mapping[str, Any], *, path: str = "") -> Sample:
    """The :class:`Sample` of one ingestion record (``{"scope", "overheadBytes", "vm": {...}}``).

    Validates exactly what the fit reads; errors name the JSON path below ``path`` (for instance
    ``measurements[3]``).  Absent optional fields take :class:`Sample`'s defaults.
    """
    prefix = f"{path}." if path else ""
    if not isinstance(record, Mapping):
        raise InputError(path, "must be an object")
    vm = record.get("vm")
    if not isinstance(vm, Mapping):
        raise InputError(f"{prefix}vm", "must be an object")
    values: dict[str, Any] = {"scope": _check_scope(record.get("scope"), f"{prefix}scope")}
    for name, where, low, high in _FIELDS:
        key = where.removeprefix("vm.")
        value = (vm if where.startswith("vm.") else record).get(key)
        if value is None:
            if name in _REQUIRED:
                raise InputError(f"{prefix}{where}", "is required")
            continue
        if name in _BOOLEAN:
            if type(value) is not bool:
                raise InputError(f"{prefix}{where}", "must be a boolean")
        elif type(value) is not int or not low <= value <= high:
            raise InputError(f"{prefix}{where}", f"must be an integer between {low} and {high}")
        values[name] = value
    return Sample(**values)


@dataclass(frozen=True, slots=True)
class SampleArrays:
    """Samples of one scope as columns: the fast way in for large sets (see :func:`fit_arrays`)."""

    overhead_bytes: IntArray
    vcpus: IntArray
    guest_memory_bytes: IntArray
    graphics: BoolArray
    io_threads: IntArray
    vfio: BoolArray
    tpm: BoolArray
    sev: BoolArray
    dedicated_cpu: BoolArray
    downward_metrics: BoolArray
    exec_probes: IntArray
    vcpus_online: BoolArray

    @classmethod
    def of(cls, **columns: Any) -> SampleArrays:
        """Columns by :class:`Sample` field name (``scope`` excepted), validated.

        ``overhead_bytes``, ``vcpus`` and ``guest_memory_bytes`` are required; the others default
        like :class:`Sample`'s.  Integer columns must have an integer dtype, boolean ones ``bool``.
        """
        unknown = set(columns) - {name for name, *_ in _FIELDS}
        if unknown:
            raise TypeError(f"unknown columns: {', '.join(sorted(unknown))}")
        n: int | None = None
        converted: dict[str, Any] = {}
        for name, where, low, high in _FIELDS:
            if name not in columns:
                if name in _REQUIRED:
                    raise InputError("measurements", f"column {where} is required")
                continue
            array = np.asarray(columns[name])
            if array.ndim != 1:
                raise InputError("measurements", f"column {where} must be one-dimensional")
            if n is None:
                n = len(array)
            elif len(array) != n:
                raise InputError("measurements", f"column {where} has {len(array)} values, not {n}")
            if name in _BOOLEAN:
                if array.dtype != np.bool_:
                    raise InputError("measurements", f"column {where} must be boolean")
                converted[name] = array
            else:
                if not np.issubdtype(array.dtype, np.integer):
                    raise InputError("measurements", f"column {where} must hold integers")
                converted[name] = _in_range(array.astype(np.int64, copy=False), where, low, high)
        size = n or 0
        for name, _, _, _ in _FIELDS:
            if name not in converted:
                default = _DEFAULTS.get(name, 0)
                converted[name] = (
                    np.full(size, bool(default)) if name in _BOOLEAN else np.full(size, default, np.int64)
                )
        return cls(**converted)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], scope: str | None = None) -> SampleArrays:
        """Columns of ``samples``, each checked to be of ``scope`` when given.

        Values are taken as the dataclass holds them (build samples from untrusted JSON with
        :func:`sample_from_record`); ranges are checked here, with the offending index.
        """
        if scope is not None:
            for index, sample in enumerate(samples):
                if sample.scope != scope:
                    raise InputError(
                        f"measurements[{index}].scope", f"is {sample.scope!r}; this fit is for {scope!r}"
                    )
        n = len(samples)
        columns: dict[str, Any] = {}
        for name, where, low, high in _FIELDS:
            values = np.fromiter(map(operator.attrgetter(name), samples), dtype=np.int64, count=n)
            values = _in_range(values, where, low, high)
            columns[name] = values.astype(np.bool_) if name in _BOOLEAN else values
        return cls(**columns)

    def __len__(self) -> int:
        return len(self.overhead_bytes)

    def take(self, index: NDArray[np.intp] | slice) -> SampleArrays:
        """The samples at ``index`` (an index array or a slice)."""
        return SampleArrays(**{name: getattr(self, name)[index] for name, *_ in _FIELDS})

    def sample(self, index: int, scope: str) -> Sample:
        """Sample ``index`` as a :class:`Sample` of ``scope``."""
        values: dict[str, Any] = {}
        for name, *_ in _FIELDS:
            value = getattr(self, name)[index]
            values[name] = bool(value) if name in _BOOLEAN else int(value)
        return Sample(scope, **values)

    def shape_json(self, index: int) -> dict[str, Any]:
        """The VM shape of sample ``index`` as the ingestion record's ``vm`` object."""
        shape: dict[str, Any] = {}
        for name, where, *_ in _FIELDS[1:]:
            value = getattr(self, name)[index]
            shape[where.removeprefix("vm.")] = bool(value) if name in _BOOLEAN else int(value)
        return shape


def _in_range(values: IntArray, where: str, low: int, high: int) -> IntArray:
    bad = (values < low) | (values > high)
    if bad.any():
        index = int(np.argmax(bad))
        raise InputError(f"measurements[{index}].{where}", f"must be between {low} and {high}")
    return values


def sample_vmi(sample: Sample, arch: str) -> dict[str, Any]:
    """A VirtualMachineInstance with the sample's shape, for the engine to read.

    ``requests.memory`` is the guest memory (so ``requestPageTables`` and ``perGuestByte`` read
    the same bytes), ``cpu.cores`` the vCPUs; the features are the fields upstream tests.  Nothing
    makes QoS guaranteed (no limits).  IOThreads are spelled as the policy that gives that many
    (the engine ignores them today).
    """
    cpu: dict[str, Any] = {"cores": sample.vcpus}
    if sample.dedicated_cpu:
        cpu["dedicatedCpuPlacement"] = True
    devices: dict[str, Any] = {"autoattachGraphicsDevice": sample.graphics}
    if sample.vfio:
        devices["hostDevices"] = [{"name": "hostdev0", "deviceName": "example.com/device"}]
    if sample.tpm:
        devices["tpm"] = {}
    domain: dict[str, Any] = {
        "cpu": cpu,
        "resources": {"requests": {"memory": str(sample.guest_memory_bytes)}},
        "devices": devices,
    }
    if sample.sev:
        domain["launchSecurity"] = {"sev": {}}
    if sample.io_threads == 1:
        domain["ioThreadsPolicy"] = "shared"
    elif sample.io_threads > 1:
        domain["ioThreadsPolicy"] = "supplementalPool"
        domain["ioThreads"] = {"supplementalPoolThreadCount": sample.io_threads}
    spec: dict[str, Any] = {"architecture": arch, "domain": domain}
    if sample.downward_metrics:
        spec["volumes"] = [{"name": "metrics", "downwardMetrics": {}}]
    probe = {"exec": {"command": ["true"]}}
    if sample.exec_probes >= 1:
        spec["livenessProbe"] = probe
    if sample.exec_probes >= 2:
        spec["readinessProbe"] = copy.deepcopy(probe)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "sample"},
        "spec": spec,
    }


# --------------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------------


def scope_components(model: tables.Model, scope: str) -> tuple[tables.Component, ...]:
    """The components of ``model`` whose sum is the overhead measured in ``scope``."""
    _check_scope(scope)
    if scope == "node":
        return model.node_components
    names = SCOPE_COMPONENTS[scope]
    if names is None:
        return model.components
    return tuple(c for c in model.components if c.name in names)


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

    The components are summed as :func:`engine.evaluate` sums them (Go's ``Quantity.Add``), with
    no ratio and no network binding: those are cluster settings, not what was measured.
    """
    features = extract_features(sample_vmi(sample, arch))
    total, _ = sum_plan(_scope_plan(model, sample.scope), features, arch, _START)
    return total.value()


def _whole(quantity: Quantity) -> bool:
    numerator, denominator = quantity.as_fraction()
    return numerator % denominator == 0


def _flag(feature: str, a: SampleArrays) -> BoolArray | None:
    """A table feature flag as :func:`sample_vmi`'s VMIs have it; None for one samples cannot say."""
    n = len(a)
    flags: dict[str, Callable[[], BoolArray]] = {
        "graphics": lambda: a.graphics,
        "vfio": lambda: a.vfio,
        "downwardMetricsVolume": lambda: a.downward_metrics,
        "execProbe": lambda: a.exec_probes > 0,
        "sev": lambda: a.sev,
        "tpm": lambda: a.tpm,
        "dedicatedCpu": lambda: a.dedicated_cpu,
        "guaranteedQos": lambda: np.zeros(n, np.bool_),
        "dedicatedCpuOrGuaranteedQos": lambda: a.dedicated_cpu,
        "reservedOverhead": lambda: np.zeros(n, np.bool_),
        "passt": lambda: np.zeros(n, np.bool_),
    }
    make = flags.get(feature)
    return None if make is None else make()


def _mask(component: tables.Component, a: SampleArrays, arch: str) -> BoolArray | None:
    """Where ``component`` applies (the engine's ``when``), or None if it cannot be vectorised."""
    if component.when_arch is not None:
        return np.full(len(a), component.when_arch == arch)
    if component.when_feature is None:
        return np.ones(len(a), np.bool_)
    flag = _flag(component.when_feature, a)
    if flag is None:
        return None
    return ~flag if component.when_negate else flag


def _ceil_mul(coefficient: Fraction, values: IntArray) -> IntArray:
    """``ceil(coefficient × values)`` exactly, as the engine's ``perGuestByte`` rounds.

    Small fractions use int64 arithmetic; others a float product whose near-integer results
    (where float error could cross an integer) are redone with Python integers.
    """
    p, q = coefficient.numerator, coefficient.denominator
    if p == 0 or len(values) == 0:
        return np.zeros(len(values), np.int64)
    if abs(p) * MAX_BYTES + q < 1 << 62:
        result: IntArray = (values * p + (q - 1)) // q
        return result
    product = values.astype(np.float64) * float(coefficient)
    result = np.ceil(product).astype(np.int64)
    doubtful = np.abs(product - np.rint(product)) <= 4 * np.finfo(np.float64).eps * np.abs(product) + 1e-300
    if doubtful.any():
        unique, inverse = np.unique(values[doubtful], return_inverse=True)
        exact = np.array([-((-p * int(v)) // q) for v in unique], dtype=np.int64)
        result[doubtful] = exact[inverse]
    return result


def _page_tables(divisor: int, guest: IntArray) -> IntArray:
    """Upstream's estimate from ``requests.memory`` (kB rounded up, int64 division)."""
    result: IntArray = ((guest + 999) // 1000 * 1000) // divisor
    return result


def _component_bytes(component: tables.Component, a: SampleArrays, arch: str) -> tuple[IntArray, bool] | None:
    """The component's bytes per sample and whether they are exact; None if not vectorisable.

    Not exact only for fractional constants, which the engine sums exactly and rounds up once at
    the end (each is rounded up here).
    """
    mask = _mask(component, a, arch)
    if mask is None:
        return None
    spec = component.spec
    term = spec.get("term")
    exact = True
    values: IntArray
    if term == "fixed":
        assert component.constant is not None
        values = np.full(len(a), component.constant.value(), np.int64)
        exact = _whole(component.constant)
    elif term == "perVcpu":
        values = a.vcpus * parse_quantity(spec["quantity"]).value()
    elif term == "perGuestByte":
        values = _ceil_mul(Fraction(str(spec["coefficient"])), a.guest_memory_bytes)
    elif term == "requestPageTables":
        values = _page_tables(int(spec["divisor"]), a.guest_memory_bytes)
    elif term == "execProbes":
        per, once = parse_quantity(spec["perProbe"]), parse_quantity(spec["once"])
        values = a.exec_probes * per.value() + (a.exec_probes > 0) * once.value()
        exact = _whole(per) and _whole(once)
    elif term == "reservedOverhead":
        values = np.zeros(len(a), np.int64)  # samples carry no reserved overhead
    else:
        return None
    return np.where(mask, values, 0), exact


def _predict_arrays(model: tables.Model, scope: str, a: SampleArrays, arch: str) -> IntArray:
    """:func:`predict` for every sample: vectorised where exact, else the engine per distinct shape."""
    total = np.zeros(len(a), np.int64)
    for component in scope_components(model, scope):
        part = _component_bytes(component, a, arch)
        if part is None or not part[1]:
            return _predict_by_shape(model, scope, a, arch)
        total += part[0]
    return total


def _predict_by_shape(model: tables.Model, scope: str, a: SampleArrays, arch: str) -> IntArray:
    shapes = np.column_stack([getattr(a, name).astype(np.int64) for name, *_ in _FIELDS[1:]])
    unique, first, inverse = np.unique(shapes, axis=0, return_index=True, return_inverse=True)
    values = np.array([predict(model, a.sample(int(i), scope), arch) for i in first], dtype=np.int64)
    result: IntArray = values[inverse.reshape(-1)]
    return result


# --------------------------------------------------------------------------------------------------
# non-negative least squares
# --------------------------------------------------------------------------------------------------


def nnls_gram(gram: FloatArray, rhs: FloatArray, *, max_iterations: int | None = None) -> FloatArray:
    """``argmin ‖Xb − y‖²`` subject to ``b ≥ 0``, from ``gram = XᵀX`` and ``rhs = Xᵀy``.

    Lawson–Hanson's active-set method on the normal equations, after scaling ``XᵀX`` to a unit
    diagonal (so column units do not matter).  Columns that are all zero get 0; a tiny ridge on
    the scaled matrix decides directions the data leave open (collinear columns).
    """
    g = np.asarray(gram, dtype=np.float64)
    c = np.asarray(rhs, dtype=np.float64)
    p = c.shape[0]
    result = np.zeros(p)
    diagonal = np.diag(g).copy()
    usable = np.isfinite(diagonal) & (diagonal > 0)
    if p == 0 or not usable.any():
        return result
    scale = np.sqrt(np.where(usable, diagonal, 1.0))
    gs = g / np.outer(scale, scale)
    cs = c / scale
    gs[~usable, :] = 0.0
    gs[:, ~usable] = 0.0
    cs[~usable] = 0.0
    gs[np.diag_indices(p)] += _RIDGE
    tolerance = 1e-12 * max(1.0, float(np.max(np.abs(cs))))
    limit = max_iterations if max_iterations is not None else 30 * p + 30
    x = np.zeros(p)
    passive = np.zeros(p, np.bool_)
    blocked = np.zeros(p, np.bool_)  # numerically unhelpful this round (Lawson–Hanson's safeguard)
    w = cs - gs @ x
    for _ in range(limit):
        candidates = usable & ~passive & ~blocked & (w > tolerance)
        if not candidates.any():
            break
        j = int(np.argmax(np.where(candidates, w, -np.inf)))
        passive[j] = True
        first = True
        for _ in range(limit):
            index = np.flatnonzero(passive)
            s = np.zeros(p)
            s[index] = np.linalg.solve(gs[np.ix_(index, index)], cs[index])
            if np.all(s[index] > 0):
                x = s
                blocked[:] = False
                break
            if first and s[j] <= 0:
                passive[j] = False
                blocked[j] = True
                break
            first = False
            bad = index[s[index] <= 0]
            ratios = x[bad] / (x[bad] - s[bad])
            hit = int(np.argmin(ratios))
            x = x + ratios[hit] * (s - x)
            x[bad[hit]] = 0.0
            passive &= x > 0
            x[~passive] = 0.0
            if not passive.any():
                break
        else:
            raise RuntimeError("nnls: inner loop did not converge")
        w = cs - gs @ x
    else:
        raise RuntimeError("nnls: did not converge")
    result = x / scale
    result[~usable] = 0.0
    return result


def nnls(design: FloatArray, target: FloatArray) -> FloatArray:
    """Non-negative least squares for a design matrix (see :func:`nnls_gram`)."""
    x = np.asarray(design, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return nnls_gram(x.T @ x, x.T @ y)


# --------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ComponentFit:
    """What the fit did with one parameter of one component of the scope."""

    component: str
    parameter: str  # "quantity" | "coefficient" | "perProbe" | "once" | "-" (nothing to fit)
    unit: str
    status: str  # "fitted" | "kept"
    reason: str | None  # why kept
    estimate: float | None = None  # NNLS estimate in ``unit``, before rounding and margin
    standard_error: float | None = None
    value: str | None = None  # what the draft holds
    parent_value: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "parameter": self.parameter,
            "unit": self.unit,
            "status": self.status,
            "reason": self.reason,
            "estimate": self.estimate,
            "standardError": self.standard_error,
            "value": self.value,
            "parentValue": self.parent_value,
        }


@dataclass(slots=True)
class FitReport:
    """Everything a reviewer needs to trust (or not) a draft table; recorded in its provenance."""

    table_id: str
    parent_id: str
    hypervisor: str
    arch: str
    scope: str
    target: float
    folds: int
    seed: int
    n: int
    requested_by: str | None
    host_facts: Mapping[str, Any] | None
    fixed_part: str
    margin_bytes: int
    sigma_bytes: float
    components: list[ComponentFit]
    residuals: dict[str, Any]
    held_out: dict[str, Any]
    over_provisioning: dict[str, Any]
    evaluation: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def component(self, name: str, parameter: str | None = None) -> ComponentFit:
        """The entry for ``name`` (and ``parameter``, when a component has several)."""
        for entry in self.components:
            if entry.component == name and (parameter is None or entry.parameter == parameter):
                return entry
        raise KeyError((name, parameter))

    def to_json(self) -> dict[str, Any]:
        return {
            "tableId": self.table_id,
            "parent": self.parent_id,
            "hypervisor": self.hypervisor,
            "arch": self.arch,
            "scope": self.scope,
            "target": self.target,
            "folds": self.folds,
            "seed": self.seed,
            "samples": self.n,
            "requestedBy": self.requested_by,
            "hostFacts": dict(self.host_facts) if self.host_facts is not None else None,
            "method": {
                "estimator": "non-negative least squares (Lawson-Hanson) on the identified columns",
                "standardErrors": "OLS covariance on the active set, sigma^2 (X_A'X_A)^-1",
                "margin": "K-fold cross-conformal: ceil((n+1)*target)-th smallest out-of-fold residual",
                "heldOut": "nested: per outer fold, fit and margin from the other folds only",
            },
            "fixedPart": self.fixed_part,
            "marginBytes": self.margin_bytes,
            "sigmaBytes": self.sigma_bytes,
            "components": [c.to_json() for c in self.components],
            "residuals": self.residuals,
            "heldOut": self.held_out,
            "overProvisioning": self.over_provisioning,
            "evaluation": self.evaluation,
            "warnings": list(self.warnings),
        }


@dataclass(slots=True)
class _Parameter:
    """One candidate column: a parameter of a component of the scope."""

    index: int  # in the scope's components
    component: tables.Component
    parameter: str
    kind: str  # "fixed" | "perVcpu" | "perGuestByte" | "once" | "perProbe" | "ioThreads"
    unit: str
    column: FloatArray | None = None  # None: nothing the samples can say
    reason: str | None = None  # why not fitted
    binary: bool = False


def minimum_samples(target: float, folds: int) -> int:
    """Fewest samples a fit with ``target`` and ``folds`` accepts.

    Every training split (``n − ceil(n / folds)`` samples) must hold the conformal quantile:
    ``ceil((m + 1) · target) <= m``, i.e. ``m >= target / (1 − target)``.
    """
    t = Fraction(str(target))
    smallest_split = math.ceil(t / (1 - t))
    return max(MIN_SAMPLES_FLOOR, math.ceil(Fraction(smallest_split * folds, folds - 1)))


def _rank(m: int, target: Fraction) -> int:
    """1-based rank of the finite-sample conformal quantile among ``m`` residuals."""
    return math.ceil((m + 1) * target)


def _check_arguments(hypervisor: Any, arch: Any, scope: Any, target: Any, folds: Any, seed: Any) -> None:
    if hypervisor not in ("kvm", "mshv"):
        raise InputError("hypervisor", "must be kvm or mshv")
    if not isinstance(arch, str) or not arch or arch == "*":
        raise InputError("arch", "must be the measured architecture (not '*')")
    _check_scope(scope)
    if (
        not isinstance(target, float | int)
        or isinstance(target, bool)
        or not math.isfinite(target)
        or not 0 < target < 1
    ):
        raise InputError("target", "must be a number strictly between 0 and 1")
    if type(folds) is not int or not 2 <= folds <= MAX_FOLDS:
        raise InputError("folds", f"must be an integer between 2 and {MAX_FOLDS}")
    if type(seed) is not int or seed < 0:
        raise InputError("seed", "must be a non-negative integer")


def _parent_model(parent: Mapping[str, Any], hypervisor: str, arch: str) -> tuple[tables.Table, tables.Model]:
    try:
        table = tables.compile_table(parent)
    except TableFormatError as err:
        raise InputError("parent", f"not a valid table: {err}") from None
    model = table.model_for(hypervisor, arch)
    if model is None:
        raise NotInTable("parent", f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
    return table, model


def _parameters(components: tuple[tables.Component, ...], a: SampleArrays, arch: str) -> list[_Parameter]:
    """Every parameter of the scope, the fixed part first, with its column where one exists."""
    fixed_index = _fixed_part(components)
    params: list[_Parameter] = []
    for index, c in enumerate(components):
        term = c.spec.get("term")
        mask = _mask(c, a, arch)
        unconditional = c.when_feature is None and c.when_arch is None

        def column(values: NDArray[Any], mask: BoolArray | None = mask) -> FloatArray | None:
            return None if mask is None else np.where(mask, values, 0).astype(np.float64)

        if term == "fixed":
            if index == fixed_index:
                p = _Parameter(index, c, "quantity", "fixed", "bytes", np.ones(len(a), np.float64))
            elif c.name == IO_THREAD and unconditional and np.ptp(a.io_threads) > 0:
                p = _Parameter(index, c, "quantity", "ioThreads", "bytes/IOThread", column(a.io_threads))
            elif c.when_arch is not None:
                applies = "always applies" if c.when_arch == arch else "does not apply"
                p = _Parameter(index, c, "quantity", "fixed", "bytes", reason=f"{applies} on {arch!r}")
            elif mask is None:
                p = _Parameter(index, c, "quantity", "fixed", "bytes", reason="condition not in the samples")
            else:
                p = _Parameter(index, c, "quantity", "fixed", "bytes", column(np.ones(len(a))), binary=True)
            params.append(p)
        elif term == "perVcpu":
            p = _Parameter(index, c, "quantity", "perVcpu", "bytes/vCPU", column(a.vcpus))
            offline = int(np.count_nonzero(~a.vcpus_online))
            if offline:
                p.column, p.reason = None, f"vcpusOnline is false for {offline} samples"
            params.append(p)
        elif term in ("perGuestByte", "requestPageTables"):
            guest = column(a.guest_memory_bytes / _GIB)
            params.append(_Parameter(index, c, "coefficient", "perGuestByte", "bytes/guest byte", guest))
        elif term == "execProbes":
            once, per = column(a.exec_probes > 0), column(a.exec_probes)
            params.append(_Parameter(index, c, "once", "once", "bytes", once, binary=True))
            params.append(_Parameter(index, c, "perProbe", "perProbe", "bytes/probe", per))
        # reservedOverhead and unknown terms: nothing to fit (reported by _component_fits)
    # The fixed part first: the rank test then judges every other column against it.
    params.sort(key=lambda p: p.index != fixed_index or p.kind != "fixed")
    return params


def _fixed_part(components: tuple[tables.Component, ...]) -> int:
    """Index of the component that takes the fixed part: ``qemu``, else the first plain constant."""
    plain = [
        i
        for i, c in enumerate(components)
        if c.spec.get("term") == "fixed" and c.when_feature is None and c.when_arch is None
    ]
    for i in plain:
        if components[i].name == FIXED_PART:
            return i
    if not plain:
        raise InputError("parent", "the scope has no unconditional fixed component to take the fixed part")
    return plain[0]


def _screen(params: list[_Parameter], n: int) -> list[_Parameter]:
    """Mark parameters the samples cannot identify; return the candidates, the fixed part first."""
    candidates: list[_Parameter] = []
    for p in params:
        column = p.column
        if column is None:
            p.reason = p.reason or "not measurable from the samples"
            continue
        if p.kind == "fixed" and not p.binary:
            candidates.append(p)
            continue
        low, high = float(column.min()), float(column.max())
        if high == 0:
            p.reason = "absent from every sample"
        elif low == high:
            p.reason = "constant in the samples: not separable from the fixed part"
        elif p.binary:
            present = int(np.count_nonzero(column))
            if present < MIN_SUPPORT:
                p.reason = f"present in only {present} samples (fewer than {MIN_SUPPORT})"
            elif n - present < MIN_SUPPORT:
                p.reason = f"absent from only {n - present} samples (fewer than {MIN_SUPPORT})"
        if p.reason is None:
            candidates.append(p)
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
                partners = [names[accepted[i]] for i, wgt in enumerate(weights) if abs(wgt) > 1e-6]
                verdicts.append(f"collinear with {', '.join(partners)}")
                continue
        accepted.append(j)
        verdicts.append(None)
    return verdicts


def _parameter_bytes(p: _Parameter, a: SampleArrays, arch: str) -> IntArray:
    """The parent's contribution of one parameter (what is subtracted when it is kept)."""
    c = p.component
    spec = c.spec
    mask = _mask(c, a, arch)
    assert mask is not None
    if p.kind == "once":
        return np.where(mask & (a.exec_probes > 0), parse_quantity(spec["once"]).value(), 0)
    if p.kind == "perProbe":
        return np.where(mask, a.exec_probes * parse_quantity(spec["perProbe"]).value(), 0)
    part = _component_bytes(c, a, arch)
    assert part is not None
    return part[0]


def _kept_bytes(
    components: tuple[tables.Component, ...], params: list[_Parameter], a: SampleArrays, arch: str
) -> IntArray:
    """What the components and parameters that keep the parent's values add to each sample."""
    total = np.zeros(len(a), np.int64)
    by_component: dict[int, list[_Parameter]] = {}
    for p in params:
        by_component.setdefault(p.index, []).append(p)
    for index, c in enumerate(components):
        own = by_component.get(index)
        if own is None:
            part = _component_bytes(c, a, arch)
            if part is None:
                raise InputError("parent", f"component {c.name!r}: condition the samples cannot evaluate")
            total += part[0]
            continue
        for p in own:
            if p.reason is not None:
                total += _parameter_bytes(p, a, arch)
    return total


@dataclass(slots=True)
class _Folds:
    """Per-fold normal equations of the permuted data: any fit leaving folds out is a subtraction."""

    x: FloatArray  # fit columns (permuted)
    z: FloatArray  # columns as the table computes them (the IOThread column is flat there)
    y: FloatArray  # target after subtracting kept contributions (permuted)
    measured: FloatArray  # measured bytes (permuted)
    bounds: list[int]
    grams: list[FloatArray]
    rhs: list[FloatArray]

    @classmethod
    def build(
        cls, x: FloatArray, z: FloatArray | None, y: FloatArray, measured: FloatArray, folds: int, seed: int
    ) -> _Folds:
        """Shuffle with ``seed`` and cut into ``folds`` contiguous folds; ``z`` None means ``x``."""
        n = len(y)
        order = np.random.default_rng(seed).permutation(n)
        x, y, measured = x[order], y[order], measured[order]
        z = x if z is None else z[order]
        sizes = [n // folds + (1 if k < n % folds else 0) for k in range(folds)]
        bounds = [0, *np.cumsum(sizes).tolist()]
        grams, rhs = [], []
        for k in range(folds):
            xs = x[bounds[k] : bounds[k + 1]]
            grams.append(xs.T @ xs)
            rhs.append(xs.T @ y[bounds[k] : bounds[k + 1]])
        return cls(x, z, y, measured, bounds, grams, rhs)

    def fit(self, leave_out: tuple[int, ...] = ()) -> FloatArray:
        gram = sum((g for k, g in enumerate(self.grams) if k not in leave_out), np.zeros_like(self.grams[0]))
        rhs = sum((r for k, r in enumerate(self.rhs) if k not in leave_out), np.zeros_like(self.rhs[0]))
        return nnls_gram(gram, rhs)

    def residuals(self, k: int, theta: FloatArray) -> FloatArray:
        """Measured minus the table-form point prediction, on fold ``k``."""
        s = slice(self.bounds[k], self.bounds[k + 1])
        result: FloatArray = self.y[s] - self.z[s] @ theta
        return result

    def size(self, k: int) -> int:
        return self.bounds[k + 1] - self.bounds[k]


def _margin(residuals: FloatArray, target: Fraction) -> int:
    """The conformal margin: ceil of the rank-``ceil((m+1)t)`` residual, at least 0."""
    k = _rank(len(residuals), target)
    value = float(np.partition(residuals, k - 1)[k - 1])
    return max(0, math.ceil(value))


def _quantiles(values: FloatArray, levels: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Inverted-CDF quantiles (observed values) of ``values``."""
    if len(values) == 0:
        return {}
    points = np.quantile(values, [q for _, q in levels], method="inverted_cdf")
    return {name: float(v) for (name, _), v in zip(levels, points, strict=True)}


_RESIDUAL_LEVELS: Final = (
    ("min", 0.0),
    ("p1", 0.01),
    ("p5", 0.05),
    ("p50", 0.5),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.5", 0.995),
    ("max", 1.0),
)
_OVER_LEVELS: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def _round_bytes(values: dict[str, float]) -> dict[str, int]:
    return {k: math.ceil(v) for k, v in values.items()}


def _percent(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _over_provisioning(over: FloatArray, measured: FloatArray) -> dict[str, Any]:
    positive = measured > 0
    return {
        "bytes": _round_bytes(_quantiles(over, _OVER_LEVELS)),
        "percentOfMeasured": _percent(_quantiles(over[positive] / measured[positive] * 100.0, _OVER_LEVELS)),
    }


def _coefficient(per_gib: float) -> str:
    """A per-GiB estimate as the exact decimal string of a per-byte coefficient, rounded up to
    ``10**-COEFFICIENT_PLACES`` (integer arithmetic: no float or Decimal-context rounding)."""
    units = max(0, math.ceil(Fraction(per_gib) / (1 << 30) * 10**COEFFICIENT_PLACES))
    digits = str(units).rjust(COEFFICIENT_PLACES + 1, "0")
    whole, fraction = digits[:-COEFFICIENT_PLACES], digits[-COEFFICIENT_PLACES:].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def fit(
    samples: Sequence[Sample],
    parent: Mapping[str, Any],
    *,
    hypervisor: str,
    arch: str,
    scope: str,
    target: float = 0.995,
    folds: int = 5,
    seed: int = 0,
    new_id: str,
    requested_by: str | None,
    host_facts: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], FitReport]:
    """Fit ``parent``'s model for (hypervisor, arch) to ``samples`` of ``scope``: (draft, report).

    See the module docstring for the model; :func:`fit_arrays` is the same on columns.
    """
    _check_scope(scope)
    arrays = SampleArrays.from_samples(samples, scope)
    return fit_arrays(
        arrays,
        parent,
        hypervisor=hypervisor,
        arch=arch,
        scope=scope,
        target=target,
        folds=folds,
        seed=seed,
        new_id=new_id,
        requested_by=requested_by,
        host_facts=host_facts,
    )


def fit_arrays(
    samples: SampleArrays,
    parent: Mapping[str, Any],
    *,
    hypervisor: str,
    arch: str,
    scope: str,
    target: float = 0.995,
    folds: int = 5,
    seed: int = 0,
    new_id: str,
    requested_by: str | None,
    host_facts: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], FitReport]:
    """:func:`fit` on columns, every sample of ``scope``: the entry point for large sets."""
    _check_arguments(hypervisor, arch, scope, target, folds, seed)
    if not isinstance(new_id, str) or not new_id:
        raise InputError("id", "the new table needs a non-empty string id")
    table, model = _parent_model(parent, hypervisor, arch)
    if new_id == table.id:
        raise InputError("id", "the new table needs an id of its own (tables are immutable)")
    components = scope_components(model, scope)
    if not components:
        raise NotInTable(
            "parent", f"model {hypervisor}/{model.arch} of {table.id!r} has no {scope} components"
        )
    n = len(samples)
    needed = minimum_samples(target, folds)
    if n < needed:
        raise NotEnoughData(
            "measurements",
            f"{n} samples; a fit with target {target} and {folds} folds needs at least {needed}",
        )
    t = Fraction(str(target))
    a = samples

    # Which parameters the data identify; the others keep the parent's values.
    params = _parameters(components, a, arch)
    candidates = _screen(params, n)
    matrix = np.column_stack([p.column for p in candidates if p.column is not None])
    verdicts = _independent(matrix.T @ matrix, [_label(p) for p in candidates])
    for p, verdict in zip(candidates, verdicts, strict=True):
        p.reason = verdict
    fitted = [p for p in candidates if p.reason is None]
    if len(fitted) < len(candidates):
        matrix = matrix[:, [i for i, p in enumerate(candidates) if p.reason is None]]
    measured = a.overhead_bytes.astype(np.float64)
    y = measured - _kept_bytes(components, params, a, arch)

    io_max = int(a.io_threads.max())
    table_matrix = None
    io_columns = [i for i, p in enumerate(fitted) if p.kind == "ioThreads"]
    if io_columns:
        table_matrix = matrix.copy()
        table_matrix[:, io_columns[0]] = io_max
    data = _Folds.build(matrix, table_matrix, y, measured, folds, seed)

    # Point fit, standard errors, in-sample residuals.
    theta = data.fit()
    fit_residuals = data.y - data.x @ theta
    active = np.flatnonzero(theta > 0)
    dof = n - len(active)
    sigma = math.sqrt(float(fit_residuals @ fit_residuals) / dof)
    errors = np.full(len(theta), np.nan)
    if len(active):
        gram = sum(data.grams, np.zeros_like(data.grams[0]))
        covariance = np.linalg.pinv(gram[np.ix_(active, active)]) * sigma**2
        errors[active] = np.sqrt(np.clip(np.diag(covariance), 0, None))

    # Margin: K-fold cross-conformal on the table-form residuals.
    out_of_fold = [data.residuals(k, data.fit((k,))) for k in range(folds)]
    margin = _margin(np.concatenate(out_of_fold), t)

    # Held-out coverage: the whole procedure per outer fold (fit and margin from the other folds
    # only), measured on that fold.
    per_fold: list[dict[str, Any]] = []
    held_over = []
    for k in range(folds):
        inner = np.concatenate([data.residuals(j, data.fit((k, j))) for j in range(folds) if j != k])
        margin_k = _margin(inner, t)
        covered = int(np.count_nonzero(out_of_fold[k] <= margin_k))
        size = data.size(k)
        per_fold.append(
            {"samples": size, "covered": covered, "coverage": covered / size, "marginBytes": margin_k}
        )
        held_over.append(margin_k - out_of_fold[k])
    covered_total = sum(f["covered"] for f in per_fold)
    held_coverage = covered_total / n
    over = np.concatenate(held_over)

    # The draft table.
    values = _materialise(fitted, theta, margin, io_max)
    draft = _draft(parent, table, model, hypervisor, arch, scope, new_id, components, fitted, values, n)
    compiled = tables.compile_table(draft)
    new_model = compiled.model_for(hypervisor, arch)
    assert new_model is not None and new_model.arch == arch
    _self_check(new_model, scope, a, arch, seed)
    evaluation = evaluate(compiled, a, hypervisor=hypervisor, arch=arch, scope=scope)

    warnings = []
    anchor = next(p for p in fitted if p.kind == "fixed" and not p.binary)
    anchor_index = fitted.index(anchor)
    if theta[anchor_index] <= 0:
        warnings.append(
            f"the fixed part {anchor.component.name!r} hit zero: the constants kept from the parent "
            "already exceed the measured fixed overhead"
        )
    for i, p in enumerate(fitted):
        if p is not anchor and theta[i] <= 0:
            warnings.append(f"{_label(p)} fitted to zero (the non-negativity bound is active)")
    if held_coverage < target:
        warnings.append(f"held-out coverage {held_coverage:.4f} is below the target {target}")
    if io_columns:
        warnings.append(
            f"{IO_THREAD}: no per-IOThread term in the table format; written flat for {io_max} IOThreads"
        )

    report = FitReport(
        table_id=new_id,
        parent_id=table.id,
        hypervisor=hypervisor,
        arch=arch,
        scope=scope,
        target=target,
        folds=folds,
        seed=seed,
        n=n,
        requested_by=requested_by,
        host_facts=host_facts,
        fixed_part=anchor.component.name,
        margin_bytes=margin,
        sigma_bytes=sigma,
        components=_component_fits(components, params, fitted, theta, errors, values),
        residuals={
            "inSample": _quantiles(fit_residuals, _RESIDUAL_LEVELS),
            "heldOut": _quantiles(np.concatenate(out_of_fold), _RESIDUAL_LEVELS),
        },
        held_out={
            "coverage": held_coverage,
            "meetsTarget": held_coverage >= target,
            "samples": n,
            "covered": covered_total,
            "perFold": per_fold,
        },
        over_provisioning=_over_provisioning(over, data.measured),
        evaluation=evaluation,
        warnings=warnings,
    )
    draft["provenance"].update(
        {
            "requestedBy": requested_by,
            "hostFacts": dict(host_facts) if host_facts is not None else None,
            "samples": n,
            "scope": scope,
            "target": target,
            "folds": folds,
            "seed": seed,
            "heldOutCoverage": held_coverage,
        }
    )
    draft["fit"] = report.to_json()
    return draft, report


def _label(p: _Parameter) -> str:
    return (
        p.component.name
        if p.parameter in ("quantity", "coefficient")
        else f"{p.component.name}.{p.parameter}"
    )


def _materialise(fitted: list[_Parameter], theta: FloatArray, margin: int, io_max: int) -> list[str]:
    """The draft's value for each fitted parameter: whole bytes rounded up, the margin in the fixed part."""
    values: list[str] = []
    for p, estimate in zip(fitted, theta.tolist(), strict=True):
        if p.kind == "perGuestByte":
            values.append(_coefficient(estimate))
        elif p.kind == "ioThreads":
            values.append(str(math.ceil(estimate * io_max)))
        elif p.kind == "fixed" and not p.binary:
            values.append(str(math.ceil(estimate) + margin))
        else:
            values.append(str(math.ceil(estimate)))
    return values


def _draft(
    parent: Mapping[str, Any],
    table: tables.Table,
    model: tables.Model,
    hypervisor: str,
    arch: str,
    scope: str,
    new_id: str,
    components: tuple[tables.Component, ...],
    fitted: list[_Parameter],
    values: list[str],
    n: int,
) -> dict[str, Any]:
    """A copy of the parent with the fitted model for (hypervisor, arch) in place."""
    draft = copy.deepcopy(dict(parent))
    models: list[dict[str, Any]] = draft["models"]
    position = next(
        (i for i, m in enumerate(models) if m.get("hypervisor") == hypervisor and m.get("arch", "*") == arch),
        None,
    )
    if position is None:  # the parent's model is the "*" one: add an exact entry for this arch
        position = next(
            i
            for i, m in enumerate(models)
            if m.get("hypervisor") == hypervisor and m.get("arch", "*") == model.arch
        )
        entry = copy.deepcopy(models[position])
        models.insert(position, entry)
    else:
        entry = models[position]
    entry["arch"] = arch
    # A provisional model (mshv: nobody has measured it) stays provisional until what it charges is
    # measured: the pod's group (scope pod, or qemu for its QEMU part) and, if it has one, the
    # node's. A node-only fit still carries upstream's copied pod constants.
    measured = sorted({*entry.get("measuredScopes", ()), scope})
    entry["measuredScopes"] = measured
    pod_measured = "pod" in measured or "qemu" in measured
    node_measured = "node" in measured or not entry.get("nodeComponents")
    entry["provisional"] = bool(entry.get("provisional", False)) and not (pod_measured and node_measured)
    group: list[dict[str, Any]] = entry["nodeComponents" if scope == "node" else "components"]
    owners = model.node_components if scope == "node" else model.components
    where = {id(c): i for i, c in enumerate(owners)}
    for p, value in zip(fitted, values, strict=True):
        spec = group[where[id(p.component)]]
        spec.pop("doc", None)
        if p.kind == "perGuestByte":
            spec.pop("divisor", None)
            spec["term"] = "perGuestByte"
            spec["coefficient"] = value
        elif p.kind == "ioThreads":
            spec["term"] = "fixed"
            spec["quantity"] = value
        elif p.kind in ("once", "perProbe"):
            spec[p.parameter] = value
        else:
            spec["quantity"] = value
        spec["doc"] = f"fitted by {new_id} from {n} {scope} measurements"
    draft["id"] = new_id
    draft["builtin"] = False
    draft["parent"] = table.id
    draft["title"] = f"{hypervisor}/{arch} {scope} overhead fitted from {n} measurements (parent {table.id})"
    draft["description"] = (
        f"Fitted from measurements: the {scope}-scope constants of the {hypervisor}/{arch} model; "
        f"everything else as in {table.id}. See provenance.fit."
    )
    draft["provenance"] = {"kind": "fit", "parent": table.id, "measured": True}
    return draft


def _component_fits(
    components: tuple[tables.Component, ...],
    params: list[_Parameter],
    fitted: list[_Parameter],
    theta: FloatArray,
    errors: FloatArray,
    values: list[str],
) -> list[ComponentFit]:
    position = {id(p): i for i, p in enumerate(fitted)}
    entries: list[ComponentFit] = []
    for index, c in enumerate(components):
        own = [p for p in params if p.index == index]
        if not own:
            entries.append(
                ComponentFit(
                    c.name,
                    "-",
                    "bytes",
                    "kept",
                    "nothing the samples measure",
                    parent_value=_parent_value(c, None),
                )
            )
            continue
        for p in own:
            entry = ComponentFit(
                c.name,
                p.parameter,
                p.unit,
                "kept" if p.reason else "fitted",
                p.reason,
                parent_value=_parent_value(c, p),
            )
            i = position.get(id(p))
            if i is not None:
                per = 1 / _GIB if p.kind == "perGuestByte" else 1.0
                entry.estimate = float(theta[i]) * per
                entry.standard_error = None if math.isnan(errors[i]) else float(errors[i]) * per
                entry.value = values[i]
            else:
                entry.value = entry.parent_value
            entries.append(entry)
    return entries


def _parent_value(c: tables.Component, p: _Parameter | None) -> str | None:
    spec = c.spec
    if p is None:
        return None
    if p.parameter in ("once", "perProbe"):
        return str(spec[p.parameter])
    if spec.get("term") == "requestPageTables":
        return f"requestPageTables/{spec['divisor']}"
    return str(spec.get("coefficient" if spec.get("term") == "perGuestByte" else "quantity"))


def _self_check(model: tables.Model, scope: str, a: SampleArrays, arch: str, seed: int) -> None:
    """The vectorised predictions must equal the engine's: checked on a few samples per fit."""
    n = len(a)
    picks = set(np.random.default_rng(seed).choice(n, size=min(n, _SELF_CHECKS), replace=False).tolist())
    picks.update(int(np.argmax(getattr(a, name))) for name, *_ in _FIELDS[1:])
    index = np.array(sorted(picks))
    subset = a.take(index)
    fast = _predict_arrays(model, scope, subset, arch)
    for i, value in zip(index.tolist(), fast.tolist(), strict=True):
        exact = predict(model, a.sample(i, scope), arch)
        if exact != value:
            raise RuntimeError(f"fitting: vectorised prediction {value} != engine {exact} for sample {i}")


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


def evaluate(
    model_or_document: tables.Model | tables.Table | Mapping[str, Any],
    samples: Sequence[Sample] | SampleArrays,
    *,
    hypervisor: str,
    arch: str,
    scope: str,
) -> dict[str, Any]:
    """How a table covers measurements of ``scope``: coverage, the under-provisioned, the over-provisioning.

    ``coverage`` is the share of samples with predicted >= measured; ``underProvisioned`` counts
    the others and lists the worst few (shape, shortfall); ``overProvisioning`` gives quantiles
    (observed values) of predicted − measured over all samples, in bytes and in % of measured.
    """
    _check_scope(scope)
    table_id: str | None = None
    if isinstance(model_or_document, tables.Model):
        model = model_or_document
    else:
        if isinstance(model_or_document, tables.Table):
            table = model_or_document
        else:
            try:
                table = tables.compile_table(model_or_document)
            except TableFormatError as err:
                raise InputError("table", f"not a valid table: {err}") from None
        found = table.model_for(hypervisor, arch)
        if found is None:
            raise NotInTable("table", f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
        model, table_id = found, table.id
    a = samples if isinstance(samples, SampleArrays) else SampleArrays.from_samples(samples, scope)
    n = len(a)
    if n == 0:
        raise NotEnoughData("measurements", "no measurements match: nothing to evaluate")
    predicted = _predict_arrays(model, scope, a, arch)
    measured = a.overhead_bytes
    difference = predicted - measured
    under = np.flatnonzero(difference < 0)
    worst = under[np.argsort(difference[under], kind="stable")[:WORST]]
    return {
        "table": table_id,
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope,
        "n": n,
        "coverage": float(np.count_nonzero(difference >= 0)) / n,
        "underProvisioned": {
            "count": len(under),
            "worst": [
                {
                    "index": int(i),
                    "shape": a.shape_json(int(i)),
                    "measuredBytes": int(measured[i]),
                    "predictedBytes": int(predicted[i]),
                    "shortfallBytes": int(-difference[i]),
                }
                for i in worst
            ],
        },
        "overProvisioning": _over_provisioning(difference.astype(np.float64), measured.astype(np.float64)),
    }
