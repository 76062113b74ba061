"""The rules around fitted tables: their ids, and when one may become active.

Pure domain logic; the web layer (``web/fits.py``, ``web/tables.py``) and the store call it.

* A fitted table's id is derived from what went into the fit (parent, hypervisor, arch, scope,
  target, folds, seed and the exact measurements), so asking for the same fit twice names the same
  immutable table instead of storing a copy.
* A table becomes active for a hypervisor and architecture only when its fit was made for them and
  its coverage *measured on held-out samples* meets its target (for a fit of several scopes, each
  scope's too) with enough samples behind it;
  anything else (an upstream table, a table fitted elsewhere) needs ``force`` and a reason, which
  the activation record keeps.  "Meets" allows for sampling error: a conformal margin aims at
  the target, so the measured held-out share lands just above or below it about equally often;
  the fit is refused when its coverage is *significantly* below target (the one-sided 95 % Wilson
  upper bound of covered/samples is under the target), e.g. 397 of 400 passes at 0.995, 380 of
  400 does not.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from overhead_service.errors import ActivationRefused, InputError

__all__ = ["activation_facts", "check_activation", "fit_id", "wilson_upper"]


def fit_id(
    *,
    parent: str,
    hypervisor: str,
    arch: str,
    scope: str | Sequence[str],
    target: float,
    folds: int,
    seed: int,
    measurement_ids: Iterable[int],
    launcher: str | None = None,
) -> str:
    """``fit-<hypervisor>-<arch>-<scope>-<12 hex digits>``, the digest of the fit's inputs.

    Several scopes are named one after the other (``fit-kvm-amd64-qemu-virtqemud-virtlogd-…``); a
    ``launcher`` selection is digested too (a fit without one has the id it always had).
    """
    inputs: dict[str, Any] = {
        "parent": parent,
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope if isinstance(scope, str) else list(scope),
        "target": target,
        "folds": folds,
        "seed": seed,
        "measurements": sorted(measurement_ids),
    }
    if launcher is not None:
        inputs["launcher"] = launcher
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    safe_arch = "any" if arch == "*" else arch
    scopes = scope if isinstance(scope, str) else "-".join(scope)
    return f"fit-{hypervisor}-{safe_arch}-{scopes}-{digest}"


def activation_facts(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the table's fit says about itself, or None for a table that was not fitted."""
    fit = document.get("fit")
    if not isinstance(fit, Mapping):
        return None
    held_out: Mapping[str, Any] = fit["heldOut"] if isinstance(fit.get("heldOut"), Mapping) else {}
    per_scope = held_out.get("perScope")  # a fit of several scopes
    return {
        "hypervisor": fit.get("hypervisor"),
        "arch": fit.get("arch"),
        "scope": fit.get("scope"),
        "samples": fit.get("samples"),
        "heldOutCoverage": held_out.get("coverage"),
        "heldOutCovered": held_out.get("covered"),
        "heldOutSamples": held_out.get("samples"),
        "target": fit.get("target"),
        **({"heldOutPerScope": per_scope} if isinstance(per_scope, Mapping) else {}),
    }


def wilson_upper(covered: int, samples: int, z: float = 1.6449) -> float:
    """One-sided upper confidence bound (95 % by default) of a binomial proportion."""
    if samples <= 0:
        return 0.0
    p = covered / samples
    denominator = 1 + z * z / samples
    centre = p + z * z / (2 * samples)
    spread = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples))
    return min(1.0, (centre + spread) / denominator)


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
        fitted = (
            f"{facts['hypervisor'] or 'an unrecorded hypervisor'}/{facts['arch'] or 'an unrecorded arch'}"
        )
        problems.append(f"it was fitted for {fitted}, not {hypervisor}/{arch}")
    covered, held_out, target = facts["heldOutCovered"], facts["heldOutSamples"], facts["target"]
    samples = facts["samples"]
    if type(covered) is not int or type(held_out) is not int or not isinstance(target, int | float):
        problems.append("its fit records no held-out coverage")
    else:
        # Several scopes fitted together: each scope's coverage, as well as all of them together.
        shares = [("", covered, held_out)] + [
            (f"{scope}: ", part.get("covered"), part.get("samples"))
            for scope, part in facts.get("heldOutPerScope", {}).items()
            if isinstance(part, Mapping)
        ]
        for what, hits, count in shares:
            if type(hits) is int and type(count) is int and wilson_upper(hits, count) < target:
                problems.append(
                    f"{what}held-out coverage {hits}/{count} = {hits / count:.4f} is significantly "
                    f"below its target {target}"
                )
    if not isinstance(samples, int):
        problems.append(f"its fit records no sample count ({min_samples} samples are required)")
    elif samples < min_samples:
        problems.append(f"{samples} samples, fewer than the {min_samples} required")
    if problems:
        raise ActivationRefused("force", f"table {table!r} may not become active: {'; '.join(problems)}")
    return facts
