"""``POST /v1/render``: the virt-launcher compute container's resources, as KubeVirt renders them.

Same media-type and JSON handling as ``POST /v1/overhead``; the domain work is
:func:`overhead_service.model.render.render`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from overhead_service.model.render import render
from overhead_service.web.common import json_response, service
from overhead_service.web.observe import observe_answer
from overhead_service.web.parsing import answer_json

__all__ = ["bp"]

bp = Blueprint("render", __name__, url_prefix="/v1/render")


def _render(body: Any) -> dict[str, Any]:
    return render(body, service())


@bp.post("")
def render_resources() -> Response:
    """The compute container's requests, limits and overhead annotation for one VMI."""
    answer = answer_json(_render)
    observe_answer(answer)  # counts the hypervisor decision and table; puts them on the access line
    return json_response(answer)
