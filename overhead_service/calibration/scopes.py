"""Several scopes in one fit: which components each scope's samples measure, and where each scope's
fixed part and margin go.

A fit of one scope regresses the sum of that scope's components.  A fit of several (``qemu``,
``virtqemud`` and ``virtlogd`` from the libvirt path; ``pod`` from a cluster with ``qemu`` from a
node) shares the parameters: each sample contributes the components its scope covers and nothing
else (its other columns are zero), so a ``pod`` sample and a ``qemu`` sample constrain the same
``qemu`` constants.  Each scope has a fixed part of its own (:func:`~.design.anchors`) that takes
its margin; margins are computed in an order where a scope comes after every scope whose margin its
prediction includes (:class:`~.conformal.MarginPlan`).  Pure domain code (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overhead_service.calibration.conformal import MarginPlan
from overhead_service.calibration.design import Covers, anchors
from overhead_service.calibration.prediction import covered_components
from overhead_service.calibration.samples import BoolArray, ScopedSamples
from overhead_service.errors import InputError
from overhead_service.model import tables

__all__ = ["ScopePlan", "plan_scopes"]


@dataclass(frozen=True, slots=True)
class ScopePlan:
    """The scopes of a fit and what each of them measures."""

    scopes: tuple[str, ...]
    components: tuple[tables.Component, ...]  # of any of the scopes, in the model's order
    covered: dict[str, tuple[bool, ...]]  # per scope: which of ``components`` it covers
    covers: Covers  # per component: which samples measured it (None: one scope, every sample)
    fixed: dict[str, int]  # per scope: the component taking its fixed part and margin
    margins: MarginPlan | None  # None: one scope

    @property
    def single(self) -> bool:
        return len(self.scopes) == 1

    def cover(self, index: int) -> BoolArray | None:
        """Which samples measured component ``index`` (None: all)."""
        return None if self.covers is None else self.covers[index]


def plan_scopes(model: tables.Model, scoped: ScopedSamples) -> ScopePlan:
    """The plan of a fit of ``scoped``'s scopes on ``model``."""
    scopes = scoped.scopes
    components, covered = covered_components(model, scopes)
    fixed = anchors(components, covered)
    if len(scopes) == 1:
        return ScopePlan(scopes, components, covered, None, fixed, None)
    per_scope = [scoped.of_scope(scope) for scope in scopes]
    covers: list[BoolArray | None] = [
        np.logical_or.reduce(
            [mask for mask, scope in zip(per_scope, scopes, strict=True) if covered[scope][i]]
        )
        for i in range(len(components))
    ]
    # includes[t][g]: scope t's margin (in its fixed component) is part of scope g's prediction.
    includes = tuple(tuple(covered[g][fixed[t]] for g in scopes) for t in scopes)
    order = tuple(sorted(range(len(scopes)), key=lambda g: sum(covered[scopes[g]])))
    for position, g in enumerate(order):
        later = [t for t in order[position + 1 :] if includes[t][g]]
        if later:
            raise InputError(
                "scope",
                f"{scopes[g]} and {scopes[later[0]]} each include the other's fixed part: fit them apart",
            )
    return ScopePlan(scopes, components, covered, covers, fixed, MarginPlan(scopes, order, includes))
