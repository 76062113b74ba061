"""``GET /v1/tables`` and ``GET /v1/tables/<id>``: the calibration tables the service can use."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from overhead_service.errors import UnknownTable
from overhead_service.web.common import json_response, registry
from overhead_service.web.errors import problem_response

__all__ = ["bp"]

bp = Blueprint("tables", __name__, url_prefix="/v1/tables")


@bp.get("")
def list_tables() -> Response:
    """A summary of every table, and the one requests use when they name none."""
    return json_response({"default": current_app.config["DEFAULT_TABLE"], "tables": registry().summaries()})


@bp.get("/<table_id>")
def get_table(table_id: str) -> Response:
    """One table in full, provenance included."""
    try:
        return json_response(registry().document(table_id))
    except UnknownTable as err:
        return problem_response(err, 404)
