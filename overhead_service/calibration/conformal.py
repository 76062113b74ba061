"""The fit's margin and its honest coverage: K-fold cross-conformal, nested for the held-out figure.

The samples are shuffled once and cut into folds whose normal equations are kept apart
(:class:`Folds`), so any fit that leaves folds out is a subtraction.  Each fold's residuals come
from a fit on the other folds; the margin is the ``ceil((n + 1) · target)``-th smallest of these
``n`` out-of-fold residuals (never negative).  The held-out coverage repeats the whole procedure
per outer fold (fit and margin from the other folds only, measured on it).  This needs
``ceil((m + 1) · target) <= m`` for each training split of ``m`` samples: :func:`minimum_samples`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np

from overhead_service.calibration.nnls import nnls_gram
from overhead_service.calibration.samples import FloatArray

__all__ = [
    "MAX_FOLDS",
    "MIN_SAMPLES_FLOOR",
    "CrossConformal",
    "Folds",
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

    @classmethod
    def build(
        cls, x: FloatArray, z: FloatArray | None, y: FloatArray, measured: FloatArray, folds: int, seed: int
    ) -> Folds:
        """Shuffle with ``seed`` and cut into ``folds`` contiguous folds; ``z`` None means ``x``."""
        count = len(y)
        order = np.random.default_rng(seed).permutation(count)
        x, y, measured = x[order], y[order], measured[order]
        z = x if z is None else z[order]
        sizes = [count // folds + (1 if k < count % folds else 0) for k in range(folds)]
        bounds = [0, *np.cumsum(sizes).tolist()]
        grams, rhs = [], []
        for k in range(folds):
            part = x[bounds[k] : bounds[k + 1]]
            grams.append(part.T @ part)
            rhs.append(part.T @ y[bounds[k] : bounds[k + 1]])
        return cls(x, z, y, measured, bounds, grams, rhs)

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
    """The margin, the out-of-fold residuals it came from, and the nested held-out coverage."""

    margin: int
    out_of_fold: list[FloatArray]  # per fold
    per_fold: list[dict[str, Any]]  # {"samples", "covered", "coverage", "marginBytes"}
    covered: int
    coverage: float
    over: FloatArray  # held-out margin minus residual, every sample: the over-provisioning

    def held_out_json(self, target: float) -> dict[str, Any]:
        """The fit summary's ``heldOut`` member."""
        return {
            "coverage": self.coverage,
            "meetsTarget": self.coverage >= target,
            "samples": sum(fold["samples"] for fold in self.per_fold),
            "covered": self.covered,
            "perFold": self.per_fold,
        }


def cross_conformal(data: Folds, target: Fraction) -> CrossConformal:
    """The margin from every fold's out-of-fold residuals, and the coverage of the whole procedure
    repeated per outer fold (fit and margin from the other folds only, measured on that fold)."""
    out_of_fold = [data.residuals(k, data.fit((k,))) for k in range(data.count)]
    overall = margin(np.concatenate(out_of_fold), target)
    per_fold: list[dict[str, Any]] = []
    held_over = []
    for k in range(data.count):
        inner = np.concatenate([data.residuals(j, data.fit((k, j))) for j in range(data.count) if j != k])
        fold_margin = margin(inner, target)
        covered = int(np.count_nonzero(out_of_fold[k] <= fold_margin))
        size = data.size(k)
        per_fold.append(
            {"samples": size, "covered": covered, "coverage": covered / size, "marginBytes": fold_margin}
        )
        held_over.append(fold_margin - out_of_fold[k])
    covered_total = sum(fold["covered"] for fold in per_fold)
    return CrossConformal(
        margin=overall,
        out_of_fold=out_of_fold,
        per_fold=per_fold,
        covered=covered_total,
        coverage=covered_total / len(data.y),
        over=np.concatenate(held_over),
    )
