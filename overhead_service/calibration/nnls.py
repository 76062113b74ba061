"""Non-negative least squares on the normal equations (Lawson–Hanson's active-set method).

A fit only needs ``XᵀX`` and ``Xᵀy``, built in one pass over the samples, so the sample count
costs that pass and nothing more; cross-validation subtracts per-fold sums instead of refitting
from the samples.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from overhead_service.calibration.samples import BoolArray, FloatArray

__all__ = ["nnls", "nnls_gram"]

_RIDGE: Final = 1e-12  # on the unit-diagonal Gram: only decides directions the data leave open


def nnls_gram(gram: FloatArray, rhs: FloatArray, *, max_iterations: int | None = None) -> FloatArray:
    """``argmin ‖Xb − y‖²`` subject to ``b ≥ 0``, from ``gram = XᵀX`` and ``rhs = Xᵀy``.

    Lawson–Hanson's active-set method on the normal equations, after scaling ``XᵀX`` to a unit
    diagonal (so column units do not matter).  Columns that are all zero get 0; a tiny ridge on
    the scaled matrix decides directions the data leave open (collinear columns).
    """
    gram = np.asarray(gram, dtype=np.float64)
    rhs = np.asarray(rhs, dtype=np.float64)
    size = rhs.shape[0]
    diagonal = np.diag(gram).copy()
    usable = np.isfinite(diagonal) & (diagonal > 0)
    if size == 0 or not usable.any():
        return np.zeros(size)
    scale = np.sqrt(np.where(usable, diagonal, 1.0))
    scaled_gram = gram / np.outer(scale, scale)
    scaled_rhs = rhs / scale
    scaled_gram[~usable, :] = 0.0
    scaled_gram[:, ~usable] = 0.0
    scaled_rhs[~usable] = 0.0
    scaled_gram[np.diag_indices(size)] += _RIDGE
    limit = max_iterations if max_iterations is not None else 30 * size + 30
    result = _active_set(scaled_gram, scaled_rhs, usable, limit) / scale
    result[~usable] = 0.0
    return result


def _active_set(gram: FloatArray, rhs: FloatArray, usable: BoolArray, limit: int) -> FloatArray:
    """Lawson–Hanson's outer loop on a unit-diagonal problem: free the variable that helps most."""
    size = rhs.shape[0]
    tolerance = 1e-12 * max(1.0, float(np.max(np.abs(rhs))))
    solution = np.zeros(size)
    passive = np.zeros(size, np.bool_)
    blocked = np.zeros(size, np.bool_)  # numerically unhelpful this round (Lawson–Hanson's safeguard)
    gradient = rhs - gram @ solution  # the negative gradient of ½‖Xb − y‖²
    for _ in range(limit):
        candidates = usable & ~passive & ~blocked & (gradient > tolerance)
        if not candidates.any():
            return solution
        entering = int(np.argmax(np.where(candidates, gradient, -np.inf)))
        passive[entering] = True
        solution = _inner_loop(gram, rhs, solution, passive, blocked, entering, limit)
        gradient = rhs - gram @ solution
    raise RuntimeError("nnls: did not converge")


def _inner_loop(
    gram: FloatArray,
    rhs: FloatArray,
    solution: FloatArray,
    passive: BoolArray,
    blocked: BoolArray,
    entering: int,
    limit: int,
) -> FloatArray:
    """Solve on the passive set, stepping back to the feasible region until every value is positive.

    Updates ``passive`` and ``blocked`` in place; returns the new solution.
    """
    size = rhs.shape[0]
    first = True
    for _ in range(limit):
        index = np.flatnonzero(passive)
        trial = np.zeros(size)
        trial[index] = np.linalg.solve(gram[np.ix_(index, index)], rhs[index])
        if np.all(trial[index] > 0):
            blocked[:] = False
            return trial
        if first and trial[entering] <= 0:
            passive[entering] = False
            blocked[entering] = True
            return solution
        first = False
        bad = index[trial[index] <= 0]
        ratios = solution[bad] / (solution[bad] - trial[bad])
        hit = int(np.argmin(ratios))
        solution = solution + ratios[hit] * (trial - solution)
        solution[bad[hit]] = 0.0
        passive &= solution > 0
        solution[~passive] = 0.0
        if not passive.any():
            return solution
    raise RuntimeError("nnls: inner loop did not converge")


def nnls(design: FloatArray, target: FloatArray) -> FloatArray:
    """Non-negative least squares for a design matrix (see :func:`nnls_gram`)."""
    matrix = np.asarray(design, dtype=np.float64)
    values = np.asarray(target, dtype=np.float64)
    return nnls_gram(matrix.T @ matrix, matrix.T @ values)
