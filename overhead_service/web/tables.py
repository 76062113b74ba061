"""Calibration tables: list, read, evaluate against measurements, activate, roll back.

Reads are open; activation and rollback need the ``admin`` role and are recorded (who, when, why,
which table was active before).  The worker that handled the change applies it at once; every
other worker and replica within ``SYNC_SECONDS`` (:mod:`overhead_service.sync`).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from overhead_service.calibration import check_activation, evaluate_table, sample_from_record, validate_batch
from overhead_service.calibration.selection import for_scope
from overhead_service.errors import Conflict
from overhead_service.extensions import get_store, get_sync
from overhead_service.web.auth import require_role
from overhead_service.web.bodies import ACTIVATION, EVALUATION, ROLLBACK, field_names, load
from overhead_service.web.common import json_response, registry, service
from overhead_service.web.parsing import json_object, read_json, table_document

__all__ = ["bp"]

bp = Blueprint("tables", __name__, url_prefix="/v1/tables")

_EVALUATE_FIELDS = field_names(EVALUATION)
_ACTIVATE_FIELDS = field_names(ACTIVATION)
_ROLLBACK_FIELDS = field_names(ROLLBACK)


@bp.get("")
def list_tables() -> Response:
    """A summary of every table, the active ones, and the one requests use when nothing is active."""
    return json_response(service().listing())


@bp.get("/<table_id>")
def get_table(table_id: str) -> Response:
    """One table in full, provenance (and fit summary, for a fitted table) included."""
    return json_response(table_document(table_id))


@bp.post("/<table_id>/evaluate")
def evaluate_on_measurements(table_id: str) -> Response:
    """How the table does on measurements given inline or selected from the store.

    Coverage, the under-provisioned samples and the over-provisioning quantiles: how an operator
    sees drift after a QEMU or kernel upgrade.
    """
    document = table_document(table_id)
    selector = load(EVALUATION, json_object(read_json(), _EVALUATE_FIELDS))
    measurements = selector.pop("measurements")
    chosen = for_scope(selector, selector["scope"])
    if measurements is not None:
        records = validate_batch(measurements, path="measurements")
        launcher = chosen.get("launcher")
        records = [
            r
            for r in records
            if (r["hypervisor"], r["arch"], r["scope"])
            == (chosen["hypervisor"], chosen["arch"], chosen["scope"])
            and (launcher is None or r.get("launcher", "direct") == launcher)
        ]
    else:
        records = get_store().select_measurements(**chosen)
    samples = [sample_from_record(r) for r in records]
    evaluation = evaluate_table(
        document, samples, hypervisor=selector["hypervisor"], arch=selector["arch"], scope=selector["scope"]
    )
    return json_response({"table": table_id, **evaluation})


@bp.post("/<table_id>/activate")
def activate(table_id: str) -> Response:
    """Make the table the one requests for (hypervisor, arch) get when they name none."""
    actor = require_role("admin")
    document = table_document(table_id)
    body = load(ACTIVATION, json_object(read_json(), _ACTIVATE_FIELDS))
    hypervisor, arch, force, reason = body["hypervisor"], body["arch"], body["force"], body["reason"]
    if registry().get(table_id).model_for(hypervisor, arch) is None:
        raise Conflict("arch", f"table {table_id!r} has no model for {hypervisor} on {arch!r}")
    facts = check_activation(
        document,
        hypervisor=hypervisor,
        arch=arch,
        min_samples=current_app.config["ACTIVATION_MIN_SAMPLES"],
        force=force,
        reason=reason,
    )
    record = get_store().activate(hypervisor, arch, table_id, actor=actor, reason=reason, forced=force)
    get_sync(current_app).refresh()
    return json_response({"activation": record, "fit": facts, "active": service().active_entries()})


@bp.post("/<table_id>/rollback")
def rollback(table_id: str) -> Response:
    """Put back the table that was active for (hypervisor, arch) before this one."""
    actor = require_role("admin")
    body = load(ROLLBACK, json_object(read_json(), _ROLLBACK_FIELDS))
    hypervisor, arch, reason = body["hypervisor"], body["arch"], body["reason"]
    store = get_store()
    current = store.active_tables().get((hypervisor, arch))
    if current != table_id:
        active = f"that is {current!r}" if current is not None else "none is activated"
        raise Conflict(
            "hypervisor", f"table {table_id!r} is not the active table for {hypervisor}/{arch} ({active})"
        )
    record = store.rollback(hypervisor, arch, actor=actor, reason=reason)
    get_sync(current_app).refresh()
    return json_response({"activation": record, "active": service().active_entries()})
