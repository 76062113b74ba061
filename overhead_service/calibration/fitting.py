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
from overhead_service.calibration.samples import (
    SHAPE,
    FloatArray,
    Sample,
    SampleArrays,
    ScopedSamples,
    check_scopes,
)
from overhead_service.calibration.scopes import ScopePlan, plan_scopes
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
    scope: str | Sequence[str],
    target: float = 0.995,
    folds: int = 5,
    seed: int = 0,
    new_id: str,
    requested_by: str | None,
    host_facts: Mapping[str, Any] | None = None,
    launcher: str | None = None,
) -> tuple[dict[str, Any], FitSummary]:
    """Fit ``parent``'s model for (hypervisor, arch) to ``samples`` of ``scope``: (draft, summary).

    ``scope``: one scope, or several fitted together (:mod:`.scopes`).  See the module docstring for
    the model; :func:`fit_arrays` is the same on columns.
    """
    scopes = check_scopes(scope)
    columns: SampleArrays | ScopedSamples
    if len(scopes) == 1:
        columns = SampleArrays.from_samples(samples, scopes[0])
    else:
        for index, one in enumerate(samples):
            if one.scope not in scopes:
                raise InputError(
                    f"measurements[{index}].scope", f"is {one.scope!r}; this fit is for {', '.join(scopes)}"
                )
        columns = ScopedSamples.of(
            {
                name: SampleArrays.from_samples([one for one in samples if one.scope == name])
                for name in scopes
            }
        )
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
        launcher=launcher,
    )


def fit_arrays(
    samples: SampleArrays | ScopedSamples,
    parent: Mapping[str, Any],
    *,
    hypervisor: str,
    arch: str,
    scope: str | Sequence[str],
    target: float = 0.995,
    folds: int = 5,
    seed: int = 0,
    new_id: str,
    requested_by: str | None,
    host_facts: Mapping[str, Any] | None = None,
    launcher: str | None = None,
) -> tuple[dict[str, Any], FitSummary]:
    """:func:`fit` on columns: every sample of ``scope`` (:class:`SampleArrays`), or of each of
    several scopes (:class:`ScopedSamples`): the entry point for large sets.  ``launcher``: how the
    ``qemu`` records were selected (``direct``, ``libvirt``), recorded in the summary when given."""
    scopes = _check_arguments(hypervisor, arch, scope, target, folds, seed)
    scoped = _scoped(samples, scopes)
    what = _fit_target(parent, hypervisor, arch, scopes, new_id)
    options = _Options(target, folds, seed, new_id, requested_by, host_facts, launcher)
    for name, count in scoped.counts().items():
        _check_sample_count(count, target, folds, None if len(scopes) == 1 else name)
    plan = plan_scopes(what.model, scoped)
    # Which parameters the data identify; the others keep the parent's values.
    design = identify(plan.components, scoped.samples, arch, plan.covers, list(plan.fixed.values()))
    _check_fixed_parts(design, plan)
    io_max = _io_max(design, plan, scoped.samples)
    data = _folds(design, plan, scoped, arch, folds, seed, io_max)
    point = _point_fit(data)
    conformal = cross_conformal(data, Fraction(str(target)), plan.margins)
    margins = {plan.fixed[name]: conformal.margins[i] for i, name in enumerate(scopes)}
    values = materialise(design.fitted, point.theta, margins, io_max)
    covered = None if plan.single else plan.covered
    draft = draft_table(parent, what, new_id, design.fitted, values, scoped.counts(), covered)
    evaluation = _check_draft(draft, what, scoped, seed)
    findings = _Findings(plan, design, data, point, conformal, values, io_max)
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
    launcher: str | None


def _check_arguments(
    hypervisor: Any, arch: Any, scope: Any, target: Any, folds: Any, seed: Any
) -> tuple[str, ...]:
    if hypervisor not in ("kvm", "mshv"):
        raise InputError("hypervisor", "must be kvm or mshv")
    if not isinstance(arch, str) or not arch or arch == "*":
        raise InputError("arch", "must be the measured architecture (not '*')")
    scopes = check_scopes(scope)
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
    return scopes


def _scoped(samples: SampleArrays | ScopedSamples, scopes: tuple[str, ...]) -> ScopedSamples:
    """``samples`` as :class:`ScopedSamples` of exactly ``scopes``."""
    if isinstance(samples, SampleArrays):
        if len(scopes) != 1:
            raise InputError("scope", "several scopes need ScopedSamples (which scope each sample is of)")
        return ScopedSamples.of({scopes[0]: samples})
    if samples.scopes != scopes:
        raise InputError("scope", f"the samples are of {', '.join(samples.scopes)}, not {', '.join(scopes)}")
    return samples


def _fit_target(
    parent: Mapping[str, Any], hypervisor: str, arch: str, scopes: tuple[str, ...], new_id: Any
) -> Target:
    """The parent's model the fit replaces, checked to have components in every scope."""
    if not isinstance(new_id, str) or not new_id:
        raise InputError("id", "the new table needs a non-empty string id")
    table, model = table_model(parent, hypervisor, arch, path="parent")
    if new_id == table.id:
        raise InputError("id", "the new table needs an id of its own (tables are immutable)")
    for scope in scopes:
        if not scope_components(model, scope):
            raise NotInTable(
                "parent", f"model {hypervisor}/{model.arch} of {table.id!r} has no {scope} components"
            )
    return Target(table, model, hypervisor, arch, scopes)


def _check_sample_count(count: int, target: float, folds: int, scope: str | None) -> None:
    needed = minimum_samples(target, folds)
    if count < needed:
        what = "samples" if scope is None else f"{scope} samples"
        raise NotEnoughData(
            "measurements",
            f"{count} {what}; a fit with target {target} and {folds} folds needs at least {needed}",
        )


def _check_fixed_parts(design: Design, plan: ScopePlan) -> None:
    """Every scope's fixed part is identified (one scope's always is: it is the intercept)."""
    fitted = {param.index for param in design.anchors}
    for scope, index in plan.fixed.items():
        if index not in fitted:
            raise NotEnoughData(
                "measurements",
                f"the fixed part of {scope} ({plan.components[index].name}) is not identified by the samples",
            )


def _io_max(design: Design, plan: ScopePlan, samples: SampleArrays) -> int:
    """The most IOThreads among the samples that measured the per-IOThread cost (all: one scope)."""
    columns = design.io_thread_columns
    cover = plan.cover(design.fitted[columns[0]].index) if columns else None
    io_threads = samples.io_threads if cover is None else samples.io_threads[cover]
    return int(io_threads.max()) if len(io_threads) else 0


def _folds(
    design: Design, plan: ScopePlan, scoped: ScopedSamples, arch: str, folds: int, seed: int, io_max: int
) -> Folds:
    """The fit's data cut into folds: the fitted columns, and what they must explain (the measured
    bytes minus what the kept parameters add).  In the table's form the IOThread column is flat at
    the most IOThreads measured (the margin is calibrated on what the table will compute)."""
    samples = scoped.samples
    measured = samples.overhead_bytes.astype(np.float64)
    explained = measured - kept_bytes(plan.components, design.parameters, samples, arch, plan.covers)
    table_matrix = None
    io_columns = design.io_thread_columns
    if io_columns:
        table_matrix = design.matrix.copy()
        cover = plan.cover(design.fitted[io_columns[0]].index)
        table_matrix[:, io_columns[0]] = io_max if cover is None else np.where(cover, io_max, 0)
    groups = None if plan.single else scoped.scope_index
    return Folds.build(design.matrix, table_matrix, explained, measured, folds, seed, groups)


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


def _check_draft(draft: dict[str, Any], what: Target, scoped: ScopedSamples, seed: int) -> dict[str, Any]:
    """Compile the draft, check its vectorised predictions against the engine, evaluate it in-sample
    (several scopes: scope by scope)."""
    compiled = tables.compile_table(draft)
    new_model = compiled.model_for(what.hypervisor, what.arch)
    assert new_model is not None and new_model.arch == what.arch
    evaluations = {}
    for scope in what.scopes:
        part = scoped.part(scope)
        _self_check(new_model, scope, part, what.arch, seed)
        evaluations[scope] = evaluate_table(
            compiled, part, hypervisor=what.hypervisor, arch=what.arch, scope=scope
        )
    return evaluations[what.scopes[0]] if len(what.scopes) == 1 else evaluations


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

    plan: ScopePlan
    design: Design
    data: Folds
    point: _PointFit
    conformal: CrossConformal
    values: list[str]  # as the draft holds them, one per fitted parameter
    io_max: int


def _summarise(what: Target, options: _Options, found: _Findings, evaluation: dict[str, Any]) -> FitSummary:
    design, point, conformal, plan, data = found.design, found.point, found.conformal, found.plan, found.data
    single = plan.single
    held_out = np.concatenate(conformal.out_of_fold)
    return FitSummary(
        table_id=options.new_id,
        parent_id=what.table.id,
        hypervisor=what.hypervisor,
        arch=what.arch,
        scope=what.scopes[0] if single else list(what.scopes),
        target=options.target,
        folds=options.folds,
        seed=options.seed,
        n=len(data.y),
        requested_by=options.requested_by,
        host_facts=options.host_facts,
        fixed_part=(
            design.fixed_part.component.name
            if single
            else {scope: plan.components[index].name for scope, index in plan.fixed.items()}
        ),
        margin_bytes=conformal.margin if single else dict(zip(plan.scopes, conformal.margins, strict=True)),
        sigma_bytes=point.sigma,
        components=component_fits(
            plan.components, design.parameters, design.fitted, point.theta, point.errors, found.values
        ),
        residuals=_residuals(found, held_out),
        held_out=conformal.held_out_json(options.target, data.groups),
        over_provisioning=(
            over_provisioning(conformal.over, data.measured)
            if single
            else {
                scope: over_provisioning(conformal.over[data.groups == g], data.measured[data.groups == g])
                for g, scope in enumerate(plan.scopes)
                if data.groups is not None
            }
        ),
        evaluation=evaluation,
        warnings=_warnings(found, options.target),
        launcher=options.launcher,
    )


def _residuals(found: _Findings, held_out: FloatArray) -> dict[str, Any]:
    """Residual quantiles in sample and held out (several scopes: per scope)."""
    if found.plan.single or found.data.groups is None:
        return {
            "inSample": quantiles(found.point.residuals, RESIDUAL_LEVELS),
            "heldOut": quantiles(held_out, RESIDUAL_LEVELS),
        }
    groups = found.data.groups
    return {
        scope: {
            "inSample": quantiles(found.point.residuals[groups == g], RESIDUAL_LEVELS),
            "heldOut": quantiles(held_out[groups == g], RESIDUAL_LEVELS),
        }
        for g, scope in enumerate(found.plan.scopes)
    }


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


def _warnings(found: _Findings, target: float) -> list[str]:
    """What a reviewer should look at: fixed parts or parameters at the zero bound, coverage short of
    the target (several scopes: any scope's), the flat IOThread cost."""
    design, point, conformal, plan = found.design, found.point, found.conformal, found.plan
    warnings = []
    for anchor in design.anchors:
        if point.theta[design.fitted.index(anchor)] <= 0:
            warnings.append(
                f"the fixed part {anchor.component.name!r} hit zero: the constants kept from the parent "
                "already exceed the measured fixed overhead"
            )
    for i, param in enumerate(design.fitted):
        if not param.is_fixed_part and point.theta[i] <= 0:
            warnings.append(f"{label(param)} fitted to zero (the non-negativity bound is active)")
    if conformal.coverage < target:
        warnings.append(f"held-out coverage {conformal.coverage:.4f} is below the target {target}")
    if not plan.single:
        per_scope = conformal.held_out_json(target, found.data.groups).get("perScope", {})
        for scope, held in per_scope.items():
            if held["coverage"] < target:
                coverage = held["coverage"]
                warnings.append(f"{scope}: held-out coverage {coverage:.4f} is below the target {target}")
    if design.io_thread_columns:
        warnings.append(
            f"{IO_THREAD}: no per-IOThread term in the table format; "
            f"written flat for {found.io_max} IOThreads"
        )
    return warnings
