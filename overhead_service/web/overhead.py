"""``POST /v1/overhead`` and ``POST /v1/overhead/batch``: KubeVirt's VM-start hot path.

Per request: check the media type, decode, compute, encode. No schema library and no database:
:class:`~overhead_service.service.OverheadService` validates exactly what it reads.
"""

from __future__ import annotations

from flask import Blueprint, Response

from overhead_service.errors import InputError
from overhead_service.web.common import json_response, read_json, service

__all__ = ["bp"]

bp = Blueprint("overhead", __name__, url_prefix="/v1/overhead")

_BATCH_FIELDS = frozenset({"items"})


@bp.post("")
def compute() -> Response:
    """The overhead of one VMI."""
    return json_response(service().compute(read_json()))


@bp.post("/batch")
def compute_batch() -> Response:
    """``{"items": [request, ...]}``: the answers in order, a problem document in place of each bad item."""
    body = read_json()
    if type(body) is not dict:
        raise InputError("", "the request must be a JSON object with an 'items' array")
    unknown = body.keys() - _BATCH_FIELDS
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field; allowed: items")
    return json_response({"items": service().compute_batch(body.get("items"))})
