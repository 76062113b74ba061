"""``POST /v1/fits``: fit a new draft table from stored measurements.

The fit itself is :func:`overhead_service.calibration.fit_arrays`; this blueprint selects the
measurements, names the draft after its inputs (:func:`overhead_service.calibration.fit_id`), stores it
(immutable; the same fit asked twice returns the table already stored) and makes it known to this
worker at once (the others catch up through :mod:`overhead_service.sync`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app

from overhead_service.calibration import SampleArrays, ScopedSamples, fit_arrays, fit_id
from overhead_service.calibration.samples import check_scopes
from overhead_service.calibration.selection import for_scope, merge_facts
from overhead_service.errors import InputError
from overhead_service.extensions import get_store, get_sync
from overhead_service.store import Store
from overhead_service.web.auth import require_role
from overhead_service.web.bodies import FIT_OPTIONS, FIT_SELECTION, field_names, load
from overhead_service.web.common import json_response, registry
from overhead_service.web.metrics import FIT_SECONDS, FITS
from overhead_service.web.parsing import json_object, read_json

__all__ = ["bp"]

bp = Blueprint("fits", __name__, url_prefix="/v1/fits")

_FIELDS = field_names(FIT_SELECTION, FIT_OPTIONS)


@bp.post("")
def create_fit() -> Response:
    """Fit the constants of ``parent``'s model for (hypervisor, arch, scope) to the measurements
    (several scopes: fitted together)."""
    actor = require_role("admin")  # an unauthorised request is no fit at all: not counted
    try:
        return _create_fit(actor)
    except Exception:
        FITS.labels("failed").inc()
        raise


def _create_fit(actor: str) -> Response:
    started = time.perf_counter()
    body = json_object(read_json(), _FIELDS)
    selector = load(FIT_SELECTION, body)
    parent_id = selector.pop("parent") or current_app.config["DEFAULT_TABLE"]
    parent = registry().get(parent_id).document  # UnknownTable at path "table" -> 422
    options = load(FIT_OPTIONS, body)
    scopes = check_scopes(selector["scope"])
    launcher = selector["launcher"]
    # What names the fit and what it is of: the same for its id and for the fit itself.
    inputs: dict[str, Any] = {
        "hypervisor": selector["hypervisor"],
        "arch": selector["arch"],
        "scope": scopes[0] if len(scopes) == 1 else list(scopes),
        "target": float(options["target"]),
        "folds": options["folds"],
        "seed": options["seed"],
    }

    store = get_store()
    if "qemu" in scopes and launcher is None:
        _refuse_mixed_launchers(store, for_scope(selector, "qemu"))
    by_scope, ids, facts = {}, [], []
    for scope in scopes:
        chosen = for_scope(selector, scope)
        columns = store.measurement_columns(**chosen)  # numpy columns: 10^6 samples stay feasible
        ids.append(columns.pop("id"))
        by_scope[scope] = SampleArrays.of(**columns)
        facts.append(store.host_facts(**chosen))
    table_id = fit_id(
        parent=parent_id, measurement_ids=np.concatenate(ids).tolist(), launcher=launcher, **inputs
    )
    existing = store.get_table(table_id)
    if existing is not None:  # the same inputs name the same immutable table
        FITS.labels("existing").inc()
        return json_response({"table": _stored_table(existing), "report": existing["document"].get("fit")})
    document, summary = fit_arrays(
        by_scope[scopes[0]] if len(scopes) == 1 else ScopedSamples.of(by_scope),
        parent,
        **inputs,
        new_id=table_id,
        requested_by=actor,
        host_facts=facts[0] if len(facts) == 1 else merge_facts(*facts),
        launcher=launcher,
    )
    store.add_table(document, kind="fitted", created_by=actor, parent_id=parent_id)
    get_sync(current_app).refresh()
    stored = store.get_table(table_id)
    assert stored is not None
    FITS.labels("created").inc()
    FIT_SECONDS.observe(time.perf_counter() - started)
    response = json_response({"table": _stored_table(stored), "report": summary.to_json()}, status=201)
    response.headers["Location"] = f"/v1/tables/{table_id}"
    return response


def _refuse_mixed_launchers(store: Store, selector: dict[str, Any]) -> None:
    """A fit does not mix qemu records started directly with libvirt-launched ones unless told which.

    Measured on one host (``benchmarks/measure/README.md``), QEMU started by libvirt holds 1.3 to
    2.3 MiB more than the same shape started directly: a table fitted on both would cover neither
    as well as one fitted on the launcher KubeVirt uses (libvirt).
    """
    counts = store.launcher_counts(**selector)
    if len(counts) > 1:
        how = {"direct": "started directly", "libvirt": "started by libvirt"}
        found = " and ".join(f"{count} {how.get(name, name)}" for name, count in sorted(counts.items()))
        raise InputError(
            "launcher",
            f"the selected qemu records mix launchers ({found}); libvirt-launched QEMU holds more "
            "for the same shape, so choose one: direct or libvirt",
        )


def _stored_table(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("id", "kind", "createdAt", "createdBy", "parentId", "contentSha256")}
