"""``GET /v1/activations``: which table is active where, and every change that made it so."""

from __future__ import annotations

from flask import Blueprint, Response

from overhead_service.calibration.records import HYPERVISORS
from overhead_service.extensions import get_store
from overhead_service.web.common import json_response
from overhead_service.web.parsing import query_args, reads_query

__all__ = ["bp"]

bp = Blueprint("activations", __name__, url_prefix="/v1/activations")


@bp.get("")
@reads_query
def list_activations() -> Response:
    """The active tables, and the activation history newest first (filter by hypervisor, arch)."""
    args = query_args(("hypervisor", "arch", "limit"))
    hypervisor = args.choice("hypervisor", HYPERVISORS)
    arch = args.text("arch", 64)
    limit = args.integer("limit", 1, 1000, 100)
    store = get_store()
    active = [
        {"hypervisor": hv, "arch": a, "table": table}
        for (hv, a), table in sorted(store.active_tables().items())
        if (hypervisor is None or hv == hypervisor) and (arch is None or a == arch)
    ]
    history = store.activations(hypervisor=hypervisor, arch=arch, limit=limit)
    return json_response({"active": active, "history": history})
