"""The fit's margin and its honest coverage: K-fold cross-conformal, nested for the held-out figure.

The samples are shuffled once and cut into folds whose normal equations are kept apart
(:class:`Folds`), so any fit that leaves folds out is a subtraction.  Each fold's residuals come
from a fit on the other folds; the margin is the ``ceil((n + 1) · target)``-th smallest of these
``n`` out-of-fold residuals (never negative).  The held-out coverage repeats the whole procedure
per outer fold (fit and margin from the other folds only, measured on it).  This needs
``ceil((m + 1) · target) <= m`` for each training split of ``m`` samples: :func:`minimum_samples`.

Several scopes fitted together (:class:`MarginPlan`): the folds are cut scope by scope (each fold
holds its share of every scope), and each scope has a margin of its own, the conformal quantile of
its own samples' residuals, placed in a component of its own.  A scope whose components include
another scope's margin (``pod`` includes ``qemu``'s) is computed after it, on its residuals minus
that margin, so its prediction (which carries both) covers ``target`` of its samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np

from overhead_service.calibration.nnls import nnls_gram
from overhead_service.calibration.samples import BoolArray, FloatArray, IntArray

__all__ = [
    "MAX_FOLDS",
    "MIN_SAMPLES_FLOOR",
    "CrossConformal",
    "Folds",
    "MarginPlan",
    "cross_conformal",
    "margin",
    "minimum_samples",
]

MIN_SAMPLES_FLOOR: Final = 30
MAX_FOLDS: Final = 20


def minimum_samples(target: float, folds: int) -> int:
    """Fewest samples a fit with ``target`` and ``folds`` accepts.

    Every training split (``n − ceil(n / folds)`` samples) must hold the conformal quantile:
    ``ceil((m + 1) · target) <= m``, i.e. ``m >= target / (1 − target)``.
    """
    share = Fraction(str(target))
    smallest_split = math.ceil(share / (1 - share))
    return max(MIN_SAMPLES_FLOOR, math.ceil(Fraction(smallest_split * folds, folds - 1)))


def _rank(count: int, target: Fraction) -> int:
    """1-based rank of the finite-sample conformal quantile among ``count`` residuals."""
    return math.ceil((count + 1) * target)


def margin(residuals: FloatArray, target: Fraction) -> int:
    """The conformal margin: ceil of the rank-``ceil((m+1)t)`` residual, at least 0."""
    rank = _rank(len(residuals), target)
    value = float(np.partition(residuals, rank - 1)[rank - 1])
    return max(0, math.ceil(value))


def _sizes(count: int, folds: int) -> list[int]:
    return [count // folds + (1 if k < count % folds else 0) for k in range(folds)]


def _stratified(order: IntArray, groups: IntArray, folds: int) -> tuple[IntArray, list[int]]:
    """``order`` rearranged so that each of ``folds`` contiguous folds holds its share of every
    group (each group's samples in the order ``order`` gives them), and the folds' sizes."""
    shuffled = groups[order]
    per_group = [order[shuffled == g] for g in range(int(groups.max()) + 1)]
    cuts = [[0, *np.cumsum(_sizes(len(members), folds)).tolist()] for members in per_group]
    pieces = [
        members[cut[k] : cut[k + 1]]
        for k in range(folds)
        for members, cut in zip(per_group, cuts, strict=True)
    ]
    sizes = [sum(cut[k + 1] - cut[k] for cut in cuts) for k in range(folds)]
    return np.concatenate(pieces), sizes


@dataclass(frozen=True, slots=True)
class MarginPlan:
    """Where each scope's margin goes, when several scopes are fitted together.

    ``names``: the scopes, by position (a sample's group); ``order``: the positions in the order
    their margins are computed; ``includes[t][g]``: whether scope ``t``'s margin is part of the
    prediction for a sample of scope ``g`` (its component is one of scope ``g``'s).
    """

    names: tuple[str, ...]
    order: tuple[int, ...]
    includes: tuple[tuple[bool, ...], ...]

    def margins(self, residuals: FloatArray, groups: IntArray, target: Fraction) -> list[int]:
        """Each scope's margin, from its own samples' residuals less the margins already placed
        in its prediction."""
        found = [0] * len(self.names)
        done: list[int] = []
        for g in self.order:
            own = residuals[groups == g]
            shift = sum(found[t] for t in done if self.includes[t][g])
            found[g] = margin(own - shift if shift else own, target)
            done.append(g)
        return found

    def totals(self, margins: list[int], groups: IntArray) -> IntArray:
        """The margin in each sample's prediction: the sum of the margins its scope includes."""
        per_group = np.array(
            [sum(m for t, m in enumerate(margins) if self.includes[t][g]) for g in range(len(self.names))],
            np.int64,
        )
        result: IntArray = per_group[groups]
        return result


@dataclass(slots=True)
class Folds:
    """Per-fold normal equations of the permuted data: any fit leaving folds out is a subtraction."""

    x: FloatArray  # fit columns (permuted)
    z: FloatArray  # columns as the table computes them (the IOThread column is flat there)
    y: FloatArray  # target after subtracting kept contributions (permuted)
    measured: FloatArray  # measured bytes (permuted)
    bounds: list[int]
    grams: list[FloatArray]
    rhs: list[FloatArray]
    groups: IntArray | None = None  # each sample's scope (position), permuted; None: one scope

    @classmethod
    def build(
        cls,
        x: FloatArray,
        z: FloatArray | None,
        y: FloatArray,
        measured: FloatArray,
        folds: int,
        seed: int,
        groups: IntArray | None = None,
    ) -> Folds:
        """Shuffle with ``seed`` and cut into ``folds`` contiguous folds; ``z`` None means ``x``.

        With ``groups`` (each sample's scope) of more than one scope, each fold holds its share of
        every scope's samples (in the shuffled order), so every training split has as many of each
        as :func:`minimum_samples` counts on.
        """
        count = len(y)
        order = np.random.default_rng(seed).permutation(count)
        if groups is not None and len(groups) and int(groups.max()) > 0:
            order, sizes = _stratified(order, groups, folds)
            groups = groups[order]
        else:
            sizes = _sizes(count, folds)
            groups = None
        x, y, measured = x[order], y[order], measured[order]
        z = x if z is None else z[order]
        bounds = [0, *np.cumsum(sizes).tolist()]
        grams, rhs = [], []
        for k in range(folds):
            part = x[bounds[k] : bounds[k + 1]]
            grams.append(part.T @ part)
            rhs.append(part.T @ y[bounds[k] : bounds[k + 1]])
        return cls(x, z, y, measured, bounds, grams, rhs, groups)

    @property
    def count(self) -> int:
        """How many folds."""
        return len(self.grams)

    def gram(self, leave_out: tuple[int, ...] = ()) -> FloatArray:
        """``XᵀX`` over every fold but ``leave_out``."""
        return sum((g for k, g in enumerate(self.grams) if k not in leave_out), np.zeros_like(self.grams[0]))

    def fit(self, leave_out: tuple[int, ...] = ()) -> FloatArray:
        """The NNLS estimate from every fold but ``leave_out``."""
        rhs = sum((r for k, r in enumerate(self.rhs) if k not in leave_out), np.zeros_like(self.rhs[0]))
        return nnls_gram(self.gram(leave_out), rhs)

    def residuals(self, k: int, theta: FloatArray) -> FloatArray:
        """Measured minus the table-form point prediction, on fold ``k``."""
        part = slice(self.bounds[k], self.bounds[k + 1])
        result: FloatArray = self.y[part] - self.z[part] @ theta
        return result

    def size(self, k: int) -> int:
        return self.bounds[k + 1] - self.bounds[k]


@dataclass(frozen=True, slots=True)
class CrossConformal:
    """The margins, the out-of-fold residuals they came from, and the nested held-out coverage."""

    margins: list[int]  # one per scope (one scope: [the margin])
    out_of_fold: list[FloatArray]  # per fold
    per_fold: list[dict[str, Any]]  # {"samples", "covered", "coverage", "marginBytes"}
    covered: int
    coverage: float
    over: FloatArray  # held-out margin minus residual, every sample: the over-provisioning
    hits: BoolArray  # whether each sample (in the folds' order) was covered held out
    plan: MarginPlan | None = None  # several scopes

    @property
    def margin(self) -> int:
        """The margin of a fit of one scope."""
        assert self.plan is None
        return self.margins[0]

    def held_out_json(self, target: float, groups: IntArray | None = None) -> dict[str, Any]:
        """The fit summary's ``heldOut`` member; with several scopes, ``perScope`` too (and the
        target counts as met when every scope meets it)."""
        held: dict[str, Any] = {
            "coverage": self.coverage,
            "meetsTarget": self.coverage >= target,
            "samples": sum(fold["samples"] for fold in self.per_fold),
            "covered": self.covered,
            "perFold": self.per_fold,
        }
        if self.plan is not None and groups is not None:
            per_scope = {}
            for g, name in enumerate(self.plan.names):
                mine = groups == g
                samples, covered = int(np.count_nonzero(mine)), int(np.count_nonzero(self.hits[mine]))
                coverage = covered / samples
                per_scope[name] = {
                    "samples": samples,
                    "covered": covered,
                    "coverage": coverage,
                    "meetsTarget": coverage >= target,
                }
            held["meetsTarget"] = all(scope["meetsTarget"] for scope in per_scope.values())
            held["perScope"] = per_scope
        return held


def cross_conformal(data: Folds, target: Fraction, plan: MarginPlan | None = None) -> CrossConformal:
    """The margin from every fold's out-of-fold residuals, and the coverage of the whole procedure
    repeated per outer fold (fit and margin from the other folds only, measured on that fold).

    With ``plan`` (several scopes; ``data`` built with their groups) each scope gets its margin.
    """
    out_of_fold = [data.residuals(k, data.fit((k,))) for k in range(data.count)]
    overall = _margins(np.concatenate(out_of_fold), data.groups, target, plan)
    per_fold: list[dict[str, Any]] = []
    held_over, hits = [], []
    for k in range(data.count):
        inner_groups = None
        if data.groups is not None:
            inner_groups = np.concatenate(
                [data.groups[data.bounds[j] : data.bounds[j + 1]] for j in range(data.count) if j != k]
            )
        inner = np.concatenate([data.residuals(j, data.fit((k, j))) for j in range(data.count) if j != k])
        fold_margins = _margins(inner, inner_groups, target, plan)
        size = data.size(k)
        if plan is None or data.groups is None:
            fold_margin: Any = fold_margins[0]
            in_prediction: Any = fold_margin
        else:
            fold_margin = dict(zip(plan.names, fold_margins, strict=True))
            in_prediction = plan.totals(fold_margins, data.groups[data.bounds[k] : data.bounds[k + 1]])
        hit = out_of_fold[k] <= in_prediction
        covered = int(np.count_nonzero(hit))
        per_fold.append(
            {"samples": size, "covered": covered, "coverage": covered / size, "marginBytes": fold_margin}
        )
        held_over.append(in_prediction - out_of_fold[k])
        hits.append(hit)
    covered_total = sum(fold["covered"] for fold in per_fold)
    return CrossConformal(
        margins=overall,
        out_of_fold=out_of_fold,
        per_fold=per_fold,
        covered=covered_total,
        coverage=covered_total / len(data.y),
        over=np.concatenate(held_over),
        hits=np.concatenate(hits),
        plan=plan,
    )


def _margins(
    residuals: FloatArray, groups: IntArray | None, target: Fraction, plan: MarginPlan | None
) -> list[int]:
    if plan is None or groups is None:
        return [margin(residuals, target)]
    return plan.margins(residuals, groups, target)
