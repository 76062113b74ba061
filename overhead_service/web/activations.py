"""``GET /v1/activations``: which table is active where, and every change that made it so."""

from __future__ import annotations

from flask import Blueprint, Response, request

from overhead_service.errors import InputError
from overhead_service.extensions import get_store
from overhead_service.web.common import json_response

__all__ = ["bp"]

bp = Blueprint("activations", __name__, url_prefix="/v1/activations")


@bp.get("")
def list_activations() -> Response:
    """The active tables, and the activation history newest first (filter by hypervisor, arch)."""
    hypervisor = request.args.get("hypervisor")
    if hypervisor is not None and hypervisor not in ("kvm", "mshv"):
        raise InputError("hypervisor", "must be kvm or mshv")
    arch = request.args.get("arch")
    limit_text = request.args.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise InputError("limit", "must be an integer between 1 and 1000")
    store = get_store()
    active = [
        {"hypervisor": hv, "arch": a, "table": table}
        for (hv, a), table in sorted(store.active_tables().items())
        if (hypervisor is None or hv == hypervisor) and (arch is None or a == arch)
    ]
    history = store.activations(hypervisor=hypervisor, arch=arch, limit=int(limit_text))
    return json_response({"active": active, "history": history})
