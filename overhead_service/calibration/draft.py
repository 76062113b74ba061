"""The draft table a fit writes: a copy of the parent with the fitted constants in place.

Values are written as the table format takes them (:func:`materialise`): whole bytes rounded up,
the margin added to the fixed part, ``perGuestByte`` coefficients as exact decimals rounded up to
``10**-COEFFICIENT_PLACES`` (:func:`coefficient`), and the per-IOThread cost flat at the most
IOThreads measured (the format has no per-IOThread term).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from overhead_service.calibration.design import Parameter
from overhead_service.calibration.samples import FloatArray
from overhead_service.model import tables

__all__ = ["COEFFICIENT_PLACES", "Target", "coefficient", "draft_table", "materialise"]

COEFFICIENT_PLACES: Final = 12  # perGuestByte coefficients are rounded up to 1e-12 byte per byte


@dataclass(frozen=True, slots=True)
class Target:
    """What a fit is of: the parent table's model for (hypervisor, arch), in one or more scopes."""

    table: tables.Table
    model: tables.Model
    hypervisor: str
    arch: str
    scopes: tuple[str, ...]

    @property
    def label(self) -> str:
        """The scopes in words and ids: ``qemu``, ``qemu+virtqemud+virtlogd``."""
        return "+".join(self.scopes)

    @property
    def node(self) -> bool:
        """Whether the fit is of the model's node group (scope ``node``, always alone)."""
        return self.scopes == ("node",)


def coefficient(per_gib: float) -> str:
    """A per-GiB estimate as the exact decimal string of a per-byte coefficient, rounded up to
    ``10**-COEFFICIENT_PLACES`` (integer arithmetic: no float or Decimal-context rounding)."""
    units = max(0, math.ceil(Fraction(per_gib) / (1 << 30) * 10**COEFFICIENT_PLACES))
    digits = str(units).rjust(COEFFICIENT_PLACES + 1, "0")
    whole, fraction = digits[:-COEFFICIENT_PLACES], digits[-COEFFICIENT_PLACES:].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def materialise(
    fitted: list[Parameter], theta: FloatArray, margins: Mapping[int, int], io_max: int
) -> list[str]:
    """The draft's value for each fitted parameter: whole bytes rounded up, each fixed part with
    its margin (``margins``: by the fixed part's component index)."""
    values: list[str] = []
    for param, estimate in zip(fitted, theta.tolist(), strict=True):
        if param.kind == "perGuestByte":
            values.append(coefficient(estimate))
        elif param.kind == "ioThreads":
            values.append(str(math.ceil(estimate * io_max)))
        elif param.is_fixed_part:
            values.append(str(math.ceil(estimate) + margins[param.index]))
        else:
            values.append(str(math.ceil(estimate)))
    return values


def draft_table(
    parent: Mapping[str, Any],
    target: Target,
    new_id: str,
    fitted: list[Parameter],
    values: list[str],
    counts: Mapping[str, int],
    covered: Mapping[str, tuple[bool, ...]] | None = None,
) -> dict[str, Any]:
    """A copy of the parent with the fitted model for (hypervisor, arch) in place.

    ``counts``: the samples of each scope; ``covered``: per scope, which of the fit's components it
    covers (one scope: all), for each fitted component's note of the measurements behind it.
    """
    draft = copy.deepcopy(dict(parent))
    entry = _model_entry(draft["models"], target)
    _mark_measured(entry, target.scopes)
    group: list[dict[str, Any]] = entry["nodeComponents" if target.node else "components"]
    owners = target.model.node_components if target.node else target.model.components
    where = {id(component): i for i, component in enumerate(owners)}
    for param, value in zip(fitted, values, strict=True):
        spec = group[where[id(param.component)]]
        _write(spec, param, value)
        spec["doc"] = f"fitted by {new_id} from {_behind(param.index, counts, covered)}"
    parent_id, hypervisor, arch, scope = target.table.id, target.hypervisor, target.arch, target.label
    count = sum(counts.values())
    draft["id"] = new_id
    draft["builtin"] = False
    draft["parent"] = parent_id
    draft["title"] = (
        f"{hypervisor}/{arch} {scope} overhead fitted from {count} measurements (parent {parent_id})"
    )
    draft["description"] = (
        f"Fitted from measurements: the {scope}-scope constants of the {hypervisor}/{arch} model; "
        f"everything else as in {parent_id}. See provenance.fit."
    )
    draft["provenance"] = {"kind": "fit", "parent": parent_id, "measured": True}
    return draft


def _behind(index: int, counts: Mapping[str, int], covered: Mapping[str, tuple[bool, ...]] | None) -> str:
    """The measurements behind component ``index``: ``261 qemu measurements``, ``40 pod and 261 qemu …``."""
    scopes = [scope for scope in counts if covered is None or covered[scope][index]]
    parts = [f"{counts[scope]} {scope}" for scope in scopes]
    return f"{' and '.join(parts)} measurements"


def _model_entry(models: list[dict[str, Any]], target: Target) -> dict[str, Any]:
    """The draft's model entry for (hypervisor, arch); a copy of the "*" one when the parent's is that."""
    hypervisor, arch = target.hypervisor, target.arch
    position = next(
        (i for i, m in enumerate(models) if m.get("hypervisor") == hypervisor and m.get("arch", "*") == arch),
        None,
    )
    if position is None:  # the parent's model is the "*" one: add an exact entry for this arch
        position = next(
            i
            for i, m in enumerate(models)
            if m.get("hypervisor") == hypervisor and m.get("arch", "*") == target.model.arch
        )
        entry = copy.deepcopy(models[position])
        models.insert(position, entry)
    else:
        entry = models[position]
    entry["arch"] = arch
    return entry


def _mark_measured(entry: dict[str, Any], scopes: tuple[str, ...]) -> None:
    """Record ``scopes`` as measured; a provisional model stays so until what it charges is measured.

    (mshv: nobody has measured it.) That is the pod's group (scope pod, or qemu for its QEMU part)
    and, if it has one, the node's. A node-only fit still carries upstream's copied pod constants.
    """
    measured = sorted({*entry.get("measuredScopes", ()), *scopes})
    entry["measuredScopes"] = measured
    pod_measured = "pod" in measured or "qemu" in measured
    node_measured = "node" in measured or not entry.get("nodeComponents")
    entry["provisional"] = bool(entry.get("provisional", False)) and not (pod_measured and node_measured)


def _write(spec: dict[str, Any], param: Parameter, value: str) -> None:
    """Put one fitted value into its component's spec (the doc line goes last, after the value)."""
    spec.pop("doc", None)
    if param.kind == "perGuestByte":
        spec.pop("divisor", None)
        spec["term"] = "perGuestByte"
        spec["coefficient"] = value
    elif param.kind == "ioThreads":
        spec["term"] = "fixed"
        spec["quantity"] = value
    elif param.kind in ("once", "perProbe"):
        spec[param.parameter] = value
    else:
        spec["quantity"] = value
