"""Fit a calibration table's constants to measurements: :func:`fit` and :func:`fit_arrays`.

Pure domain code (numpy only): a fit turns measured overheads into a *draft table* (a table
document :func:`tables.compile_table` accepts) plus a :class:`~.summary.FitSummary`.  The steps
live in their own modules: the samples (:mod:`.samples`), predictions by the engine's semantics
(:mod:`.prediction`), the design (:mod:`.design`), NNLS (:mod:`.nnls`), the conformal margin
(:mod:`.conformal`), the draft (:mod:`.draft`), the summary (:mod:`.summary`) and the evaluation
of a table on measurements (:mod:`.evaluation`).

The model.  A scope's overhead is the sum of the parent model's components in that scope
(:data:`~.prediction.SCOPE_COMPONENTS`).  Each component offers the fit zero or more *parameters*:

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
an always-present feature, ``pflash`` on arm64), seen in fewer than :data:`~.design.MIN_SUPPORT`
samples (or missing from fewer), or a linear combination of earlier columns; per vCPU also when
any sample says its vCPUs were not online (the measured memory then says nothing about running
vCPUs).

Estimation: non-negative least squares (Lawson–Hanson active set, :func:`~.nnls.nnls_gram`) on the
Gram matrix ``XᵀX``/``Xᵀy``, built in one pass, so the sample count only costs that pass.  Standard
errors are the OLS ones on the active set: ``σ² (X_AᵀX_A)⁻¹`` with ``σ² = RSS / (n − |A|)``; this
treats the active set as known in advance and the errors as homoscedastic (exact when no bound is
active; parameters at the zero bound get no standard error).

Margin (coverage): K-fold cross-conformal (:mod:`.conformal`).  Each fold's residuals come from a
fit on the other folds; the margin is the ``ceil((n + 1) · target)``-th smallest of these ``n``
out-of-fold residuals (never negative: the table never goes below the point fit) and goes into the
fixed part.  The reported held-out coverage repeats the *whole* procedure per outer fold (fit and
margin from the other folds only, measured on it), so it is an honest estimate of the table's
coverage on new samples.  This needs ``ceil((m + 1) · target) <= m`` for each training split of
``m`` samples: :func:`~.conformal.minimum_samples` (249 for 0.995 and 5 folds).

``ioThread``: the table format has no per-IOThread term and the engine does not read a VMI's
IOThread count, so when the measured IOThread counts vary the per-IOThread cost is estimated (and
reported) but written as the flat ``fixed`` quantity it gives at the most IOThreads measured; the
margin is calibrated on that table form.  What ``tables.py``/``vmi.py`` would need for the real
thing is ``perIoThread`` (see :data:`PER_IO_THREAD_SPEC`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np

from overhead_service.calibration.conformal import (
    MAX_FOLDS,
    CrossConformal,
    Folds,
    cross_conformal,
    minimum_samples,
)
from overhead_service.calibration.design import IO_THREAD, Design, identify, kept_bytes, label
from overhead_service.calibration.draft import Target, draft_table, materialise
from overhead_service.calibration.evaluation import (
    RESIDUAL_LEVELS,
    evaluate_table,
    over_provisioning,
    quantiles,
)
from overhead_service.calibration.prediction import predict, predict_arrays, scope_components, table_model
from overhead_service.calibration.samples import SHAPE, FloatArray, Sample, SampleArrays, check_scope
from overhead_service.calibration.summary import FitSummary, component_fits
from overhead_service.errors import InputError, NotEnoughData, NotInTable
from overhead_service.model import tables

__all__ = ["PER_IO_THREAD_SPEC", "fit", "fit_arrays"]

_SELF_CHECKS: Final = 24

PER_IO_THREAD_SPEC: Final = (
    "tables.py term 'perIoThread' with 'quantity' (a quantity string): the quantity's value times "
    "VmiFeatures.io_threads, an int64 product added with the quantity's format like 'perVcpu'. "
    "vmi.py: io_threads = the number of IOThreads the domain gets (0 when "
    "spec.domain.ioThreadsPolicy is unset; 1 for 'shared'; "
    "spec.domain.ioThreads.supplementalPoolThreadCount for 'supplementalPool'; for 'auto' "
    "upstream's pool of min(2 × vCPUs, disks with an IOThread)), part of memo_key."
)


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
) -> tuple[dict[str, Any], FitSummary]:
    """Fit ``parent``'s model for (hypervisor, arch) to ``samples`` of ``scope``: (draft, summary).

    See the module docstring for the model; :func:`fit_arrays` is the same on columns.
    """
    check_scope(scope)
    columns = SampleArrays.from_samples(samples, scope)
    return fit_arrays(
        columns,
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
) -> tuple[dict[str, Any], FitSummary]:
    """:func:`fit` on columns, every sample of ``scope``: the entry point for large sets."""
    _check_arguments(hypervisor, arch, scope, target, folds, seed)
    what = _fit_target(parent, hypervisor, arch, scope, new_id)
    options = _Options(target, folds, seed, new_id, requested_by, host_facts)
    components = scope_components(what.model, scope)
    _check_sample_count(len(samples), target, folds)
    # Which parameters the data identify; the others keep the parent's values.
    design = identify(components, samples, arch)
    data = _folds(design, components, samples, arch, folds, seed)
    point = _point_fit(data)
    conformal = cross_conformal(data, Fraction(str(target)))
    io_max = int(samples.io_threads.max())
    values = materialise(design.fitted, point.theta, conformal.margin, io_max)
    draft = draft_table(parent, what, new_id, design.fitted, values, len(samples))
    evaluation = _check_draft(draft, what, samples, seed)
    findings = _Findings(components, design, data, point, conformal, values, io_max)
    summary = _summarise(what, options, findings, evaluation)
    _record_provenance(draft, summary)
    return draft, summary


@dataclass(frozen=True, slots=True)
class _Options:
    """How the fit was asked for (recorded in the summary and the draft's provenance)."""

    target: float
    folds: int
    seed: int
    new_id: str
    requested_by: str | None
    host_facts: Mapping[str, Any] | None


def _check_arguments(hypervisor: Any, arch: Any, scope: Any, target: Any, folds: Any, seed: Any) -> None:
    if hypervisor not in ("kvm", "mshv"):
        raise InputError("hypervisor", "must be kvm or mshv")
    if not isinstance(arch, str) or not arch or arch == "*":
        raise InputError("arch", "must be the measured architecture (not '*')")
    check_scope(scope)
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


def _fit_target(parent: Mapping[str, Any], hypervisor: str, arch: str, scope: str, new_id: Any) -> Target:
    """The parent's model the fit replaces, checked to have components in ``scope``."""
    if not isinstance(new_id, str) or not new_id:
        raise InputError("id", "the new table needs a non-empty string id")
    table, model = table_model(parent, hypervisor, arch, path="parent")
    if new_id == table.id:
        raise InputError("id", "the new table needs an id of its own (tables are immutable)")
    if not scope_components(model, scope):
        raise NotInTable(
            "parent", f"model {hypervisor}/{model.arch} of {table.id!r} has no {scope} components"
        )
    return Target(table, model, hypervisor, arch, scope)


def _check_sample_count(count: int, target: float, folds: int) -> None:
    needed = minimum_samples(target, folds)
    if count < needed:
        raise NotEnoughData(
            "measurements",
            f"{count} samples; a fit with target {target} and {folds} folds needs at least {needed}",
        )


def _folds(
    design: Design,
    components: tuple[tables.Component, ...],
    samples: SampleArrays,
    arch: str,
    folds: int,
    seed: int,
) -> Folds:
    """The fit's data cut into folds: the fitted columns, and what they must explain (the measured
    bytes minus what the kept parameters add).  In the table's form the IOThread column is flat at
    the most IOThreads measured (the margin is calibrated on what the table will compute)."""
    measured = samples.overhead_bytes.astype(np.float64)
    explained = measured - kept_bytes(components, design.parameters, samples, arch)
    table_matrix = None
    io_columns = design.io_thread_columns
    if io_columns:
        table_matrix = design.matrix.copy()
        table_matrix[:, io_columns[0]] = int(samples.io_threads.max())
    return Folds.build(design.matrix, table_matrix, explained, measured, folds, seed)


@dataclass(frozen=True, slots=True)
class _PointFit:
    """The estimate from every sample, its in-sample residuals, σ and standard errors."""

    theta: FloatArray
    residuals: FloatArray
    sigma: float
    errors: FloatArray  # NaN where the parameter is at the zero bound


def _point_fit(data: Folds) -> _PointFit:
    theta = data.fit()
    residuals = data.y - data.x @ theta
    active = np.flatnonzero(theta > 0)
    dof = len(data.y) - len(active)
    sigma = math.sqrt(float(residuals @ residuals) / dof)
    errors = np.full(len(theta), np.nan)
    if len(active):
        covariance = np.linalg.pinv(data.gram()[np.ix_(active, active)]) * sigma**2
        errors[active] = np.sqrt(np.clip(np.diag(covariance), 0, None))
    return _PointFit(theta, residuals, sigma, errors)


def _check_draft(draft: dict[str, Any], what: Target, samples: SampleArrays, seed: int) -> dict[str, Any]:
    """Compile the draft, check its vectorised predictions against the engine, evaluate it in-sample."""
    compiled = tables.compile_table(draft)
    new_model = compiled.model_for(what.hypervisor, what.arch)
    assert new_model is not None and new_model.arch == what.arch
    _self_check(new_model, what.scope, samples, what.arch, seed)
    return evaluate_table(compiled, samples, hypervisor=what.hypervisor, arch=what.arch, scope=what.scope)


def _self_check(model: tables.Model, scope: str, samples: SampleArrays, arch: str, seed: int) -> None:
    """The vectorised predictions must equal the engine's: checked on a few samples per fit."""
    count = len(samples)
    rng = np.random.default_rng(seed)
    picks = set(rng.choice(count, size=min(count, _SELF_CHECKS), replace=False).tolist())
    picks.update(int(np.argmax(getattr(samples, column.name))) for column in SHAPE)
    index = np.array(sorted(picks))
    fast = predict_arrays(model, scope, samples.take(index), arch)
    for i, value in zip(index.tolist(), fast.tolist(), strict=True):
        exact = predict(model, samples.sample(i, scope), arch)
        if exact != value:
            raise RuntimeError(f"fitting: vectorised prediction {value} != engine {exact} for sample {i}")


@dataclass(frozen=True, slots=True)
class _Findings:
    """What the fit's steps found, for the summary."""

    components: tuple[tables.Component, ...]
    design: Design
    data: Folds
    point: _PointFit
    conformal: CrossConformal
    values: list[str]  # as the draft holds them, one per fitted parameter
    io_max: int


def _summarise(what: Target, options: _Options, found: _Findings, evaluation: dict[str, Any]) -> FitSummary:
    design, point, conformal = found.design, found.point, found.conformal
    return FitSummary(
        table_id=options.new_id,
        parent_id=what.table.id,
        hypervisor=what.hypervisor,
        arch=what.arch,
        scope=what.scope,
        target=options.target,
        folds=options.folds,
        seed=options.seed,
        n=len(found.data.y),
        requested_by=options.requested_by,
        host_facts=options.host_facts,
        fixed_part=design.fixed_part.component.name,
        margin_bytes=conformal.margin,
        sigma_bytes=point.sigma,
        components=component_fits(
            found.components, design.parameters, design.fitted, point.theta, point.errors, found.values
        ),
        residuals={
            "inSample": quantiles(point.residuals, RESIDUAL_LEVELS),
            "heldOut": quantiles(np.concatenate(conformal.out_of_fold), RESIDUAL_LEVELS),
        },
        held_out=conformal.held_out_json(options.target),
        over_provisioning=over_provisioning(conformal.over, found.data.measured),
        evaluation=evaluation,
        warnings=_warnings(design, point, conformal, options.target, found.io_max),
    )


def _record_provenance(draft: dict[str, Any], summary: FitSummary) -> None:
    """The draft's provenance: how it was asked for, and the whole summary under ``fit``."""
    draft["provenance"].update(
        {
            "requestedBy": summary.requested_by,
            "hostFacts": dict(summary.host_facts) if summary.host_facts is not None else None,
            "samples": summary.n,
            "scope": summary.scope,
            "target": summary.target,
            "folds": summary.folds,
            "seed": summary.seed,
            "heldOutCoverage": summary.held_out["coverage"],
        }
    )
    draft["fit"] = summary.to_json()


def _warnings(
    design: Design, point: _PointFit, conformal: CrossConformal, target: float, io_max: int
) -> list[str]:
    """What a reviewer should look at: parameters at the zero bound, coverage short of the target,
    the flat IOThread cost."""
    warnings = []
    anchor = design.fixed_part
    if point.theta[design.fitted.index(anchor)] <= 0:
        warnings.append(
            f"the fixed part {anchor.component.name!r} hit zero: the constants kept from the parent "
            "already exceed the measured fixed overhead"
        )
    for i, param in enumerate(design.fitted):
        if param is not anchor and point.theta[i] <= 0:
            warnings.append(f"{label(param)} fitted to zero (the non-negativity bound is active)")
    if conformal.coverage < target:
        warnings.append(f"held-out coverage {conformal.coverage:.4f} is below the target {target}")
    if design.io_thread_columns:
        warnings.append(
            f"{IO_THREAD}: no per-IOThread term in the table format; written flat for {io_max} IOThreads"
        )
    return warnings
