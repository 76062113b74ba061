"""What every blueprint needs besides request parsing (:mod:`~overhead_service.web.parsing`): the
application's domain objects, and JSON answers."""

from __future__ import annotations

from typing import Any

from flask import Response

from overhead_service import jsonio
from overhead_service.extensions import get_registry as registry
from overhead_service.extensions import get_service as service

__all__ = ["json_response", "registry", "service"]


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    """``body`` encoded by :func:`jsonio.dumps`, the same bytes the CLI prints."""
    return Response(jsonio.dumps_bytes(body), status=status, mimetype=mimetype)
