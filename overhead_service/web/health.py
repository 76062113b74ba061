"""Kubernetes probes: ``/healthz`` (liveness, no dependencies) and ``/readyz`` (readiness)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from overhead_service.extensions import REGISTRY, SERVICE, get_store
from overhead_service.web.common import json_response
from overhead_service.web.errors import INIT_DB_HINT, PROBLEM_JSON, http_problem

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers. Checks nothing else, so a database blip never restarts the pod."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when the calibration tables are loaded, the database answers and has the schema.

    The schema is created once, before the workers start (``overhead-service init-db`` or
    gunicorn's ``on_starting``), never by the application itself: until then, ``schema`` fails.
    """
    registry = current_app.extensions.get(REGISTRY)
    store = get_store()
    database = store.ping()
    checks = {
        "tables": "ok" if SERVICE in current_app.extensions and registry and registry.ids() else "failed",
        "database": "ok" if database else "failed",
        "schema": "ok" if database and store.schema_ready() else "failed",
    }
    if all(state == "ok" for state in checks.values()):
        return json_response({"status": "ready", "checks": checks})
    failed = ", ".join(name for name, state in checks.items() if state != "ok")
    detail = f"not ready: {failed} check failed"
    if database and checks["schema"] != "ok":
        detail += f"; {INIT_DB_HINT}"
    body = http_problem(503, "Service Unavailable", detail)
    return json_response({**body, "checks": checks}, status=503, mimetype=PROBLEM_JSON)
