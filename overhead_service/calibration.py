"""The rules around fitted tables: their ids, and when one may become active.

Pure domain logic; the web layer (``web/fits.py``, ``web/tables.py``) and the store call it.

* A fitted table's id is derived from what went into the fit (parent, hypervisor, arch, scope,
  target, folds, seed and the exact measurements), so asking for the same fit twice names the same
  immutable table instead of storing a copy.
* A table becomes active for a hypervisor and architecture only when its fit was made for them and
  its coverage *measured on held-out samples* meets its target with enough samples behind it;
  anything else (an upstream table, a table fitted elsewhere) needs ``force`` and a reason, which
  the activation record keeps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ActivationRefused, InputError

__all__ = ["activation_facts", "check_activation", "fit_id"]


def fit_id(
    *,
    parent: str,
    hypervisor: str,
    arch: str,
    scope: str,
    target: float,
    folds: int,
    seed: int,
    measurement_ids: Iterable[int],
) -> str:
    """``fit-<hypervisor>-<arch>-<scope>-<12 hex digits>``, the digest of the fit's inputs."""
    inputs = {
        "parent": parent,
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope,
        "target": target,
        "folds": folds,
        "seed": seed,
        "measurements": sorted(measurement_ids),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    safe_arch = "any" if arch == "*" else arch
    return f"fit-{hypervisor}-{safe_arch}-{scope}-{digest}"


def activation_facts(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the table's fit says about itself, or None for a table that was not fitted."""
    fit = document.get("fit")
    if not isinstance(fit, Mapping):
        return None
    return {
        "hypervisor": fit.get("hypervisor"),
        "arch": fit.get("arch"),
        "scope": fit.get("scope"),
        "samples": fit.get("samples"),
        "heldOutCoverage": fit.get("heldOutCoverage"),
        "target": fit.get("target"),
    }


def check_activation(
    document: Mapping[str, Any],
    *,
    hypervisor: str,
    arch: str,
    min_samples: int,
    force: bool,
    reason: str | None,
) -> dict[str, Any] | None:
    """Refuse (:class:`ActivationRefused`) unless the table's own fit earns it, or it is forced.

    Returns the fit facts the decision rested on (None for a table without a fit).
    """
    if force:
        if not reason or not reason.strip():
            raise InputError("reason", "a forced activation needs a reason (it is recorded)")
        return activation_facts(document)
    facts = activation_facts(document)
    table = document.get("id")
    if facts is None:
        raise ActivationRefused(
            "force",
            f"table {table!r} has no fit behind it (no held-out coverage to check); "
            "activate it with force and a reason",
        )
    problems = []
    if (facts["hypervisor"], facts["arch"]) != (hypervisor, arch):
        problems.append(f"it was fitted for {facts['hypervisor']}/{facts['arch']}, not {hypervisor}/{arch}")
    coverage, target, samples = facts["heldOutCoverage"], facts["target"], facts["samples"]
    if not isinstance(coverage, int | float) or not isinstance(target, int | float) or coverage < target:
        problems.append(f"held-out coverage {coverage} is below its target {target}")
    if not isinstance(samples, int) or samples < min_samples:
        problems.append(f"{samples} samples, fewer than the {min_samples} required")
    if problems:
        raise ActivationRefused("force", f"table {table!r} may not become active: {'; '.join(problems)}")
    return facts
