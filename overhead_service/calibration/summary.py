"""What a fit did, for a reviewer: :class:`FitSummary`, recorded in the draft's ``provenance.fit``.

(The HTML page about a table is the *report*, :mod:`overhead_service.calibration.report`; the
summary is one of the things it shows.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overhead_service.calibration.design import GIB, Parameter
from overhead_service.calibration.samples import FloatArray
from overhead_service.model import tables

__all__ = ["ComponentFit", "FitSummary", "component_fits"]


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
class FitSummary:
    """Everything a reviewer needs to trust (or not) a draft table; recorded in its provenance."""

    table_id: str
    parent_id: str
    hypervisor: str
    arch: str
    scope: str | list[str]  # several scopes fitted together: their list
    target: float
    folds: int
    seed: int
    n: int
    requested_by: str | None
    host_facts: Mapping[str, Any] | None
    fixed_part: str | dict[str, str]  # several scopes: per scope
    margin_bytes: int | dict[str, int]  # several scopes: per scope
    sigma_bytes: float
    components: list[ComponentFit]
    residuals: dict[str, Any]  # several scopes: per scope
    held_out: dict[str, Any]  # several scopes: also perScope
    over_provisioning: dict[str, Any]  # several scopes: per scope
    evaluation: dict[str, Any]  # several scopes: per scope
    warnings: list[str] = field(default_factory=list)
    launcher: str | None = None  # the launcher of the qemu records, when the selection named one

    def component(self, name: str, parameter: str | None = None) -> ComponentFit:
        """The entry for ``name`` (and ``parameter``, when a component has several)."""
        for entry in self.components:
            if entry.component == name and (parameter is None or entry.parameter == parameter):
                return entry
        raise KeyError((name, parameter))

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes fitted, as a tuple."""
        return (self.scope,) if isinstance(self.scope, str) else tuple(self.scope)

    def to_json(self) -> dict[str, Any]:
        selection = {} if self.launcher is None else {"launcher": self.launcher}
        return {
            "tableId": self.table_id,
            "parent": self.parent_id,
            "hypervisor": self.hypervisor,
            "arch": self.arch,
            "scope": self.scope,
            **selection,
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


def component_fits(
    components: tuple[tables.Component, ...],
    params: list[Parameter],
    fitted: list[Parameter],
    theta: FloatArray,
    errors: FloatArray,
    values: list[str],
) -> list[ComponentFit]:
    """One entry per parameter of each component (one "-" entry for a component with none)."""
    position = {id(param): i for i, param in enumerate(fitted)}
    entries: list[ComponentFit] = []
    for index, component in enumerate(components):
        own = [param for param in params if param.index == index]
        if not own:
            entries.append(
                ComponentFit(
                    component.name, "-", "bytes", "kept", "nothing the samples measure", parent_value=None
                )
            )
            continue
        for param in own:
            entry = ComponentFit(
                component.name,
                param.parameter,
                param.unit,
                "kept" if param.reason else "fitted",
                param.reason,
                parent_value=_parent_value(component, param),
            )
            i = position.get(id(param))
            if i is not None:
                per = 1 / GIB if param.kind == "perGuestByte" else 1.0
                entry.estimate = float(theta[i]) * per
                entry.standard_error = None if math.isnan(errors[i]) else float(errors[i]) * per
                entry.value = values[i]
            else:
                entry.value = entry.parent_value
            entries.append(entry)
    return entries


def _parent_value(component: tables.Component, param: Parameter) -> str:
    """The parent's value of the parameter, as the table spells it."""
    spec = component.spec
    if param.parameter in ("once", "perProbe"):
        return str(spec[param.parameter])
    if spec.get("term") == "requestPageTables":
        return f"requestPageTables/{spec['divisor']}"
    return str(spec.get("coefficient" if spec.get("term") == "perGuestByte" else "quantity"))
