"""``POST /v1/admission/vmi``: KubeVirt VMI admission (a mutating webhook of the API server).

An ``admission.k8s.io/v1`` AdmissionReview in, one out, ``response.uid`` echoing the request's and
always ``allowed: true``: the webhook never blocks a VM start. A VMI CREATE gets the decision of
:class:`~overhead_service.model.admission.Admission` (annotations, and a spec change in the modes
that make one) as a base64 RFC 6902 patch; anything else (another kind or operation) is allowed
unchanged. A problem (a VMI that cannot be read, no KubeVirt configuration yet, a patch that fails
its check, an internal error) allows the VMI unpatched, with a ``warnings`` entry, a log line and
``overhead_admission_errors_total{reason}``. Only a body that is not an AdmissionReview is refused,
with a 400 problem document (the API server then applies the webhook's failurePolicy, Ignore).

``POST /v1/admission/vmi/<mode>`` is the same with the mode named by the webhook registration
(``deploy/components/webhook`` picks it from a namespace label), instead of ``ADMISSION_MODE``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Final

from flask import Blueprint, Response, current_app
from werkzeug.exceptions import NotFound

from overhead_service import jsonio
from overhead_service.errors import InexactNumber, InputError
from overhead_service.extensions import get_admission, get_cluster_config
from overhead_service.logs import CONTEXT
from overhead_service.model.admission import MODES, Decision
from overhead_service.web.common import json_response
from overhead_service.web.metrics import ADMISSION_BYTES, ADMISSION_ERRORS, ADMISSIONS
from overhead_service.web.parsing import answer_json, query_args, reads_query

__all__ = ["NotAnAdmissionReview", "bp"]

bp = Blueprint("admission", __name__, url_prefix="/v1/admission")
log = logging.getLogger(__name__)

API_VERSION: Final = "admission.k8s.io/v1"
_VMI: Final = {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstance"}
_PREFIX: Final = "overhead-service: "
_MAX_WARNINGS: Final = 5


class NotAnAdmissionReview(InputError):
    """The body is JSON, but not an ``admission.k8s.io/v1`` AdmissionReview with a request uid."""

    status = 400
    kind = "not-an-admission-review"
    title = "Not an AdmissionReview"


def _request(body: Any) -> dict[str, Any]:
    if type(body) is not dict:
        raise NotAnAdmissionReview("", "the body must be an admission.k8s.io/v1 AdmissionReview object")
    if body.get("apiVersion") != API_VERSION:
        raise NotAnAdmissionReview("apiVersion", f"must be {API_VERSION}")
    if body.get("kind") != "AdmissionReview":
        raise NotAnAdmissionReview("kind", "must be AdmissionReview")
    request = body.get("request")
    if type(request) is not dict:
        raise NotAnAdmissionReview("request", "must be an object (the API server's AdmissionRequest)")
    uid = request.get("uid")
    if type(uid) is not str or not uid:
        raise NotAnAdmissionReview("request.uid", "must be a non-empty string")
    return request


def _is_vmi_create(request: dict[str, Any]) -> bool:
    kind = request.get("kind")
    return (
        type(kind) is dict
        and all(kind.get(key) == value for key, value in _VMI.items())
        and request.get("operation") == "CREATE"
        and not request.get("subResource")
    )


def _decide(request: dict[str, Any], mode: str) -> tuple[Decision, str]:
    if not _is_vmi_create(request):
        return Decision(mode, "none", "skipped", "not a kubevirt.io/v1 VirtualMachineInstance CREATE"), "-"
    state = "-"
    try:
        configuration, state = get_cluster_config().current()
        return get_admission().review(request.get("object"), configuration, mode), state
    except InexactNumber:
        raise  # answer_json decodes the body again, keeping every number exact
    except Exception:  # noqa: BLE001 - never a denial: an internal problem allows the VMI unpatched
        log.exception("admission failed; the VMI is allowed unpatched")
        warning = "VMI left unchanged: internal error (logged)"
        return Decision(mode, "none", "error", "internal", warnings=[warning]), state


def _answer(uid: str, decision: Decision) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(jsonio.dumps_bytes(decision.patch)).decode("ascii")
    if decision.warnings:
        response["warnings"] = [(_PREFIX + text)[:250] for text in decision.warnings[:_MAX_WARNINGS]]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _observe(decision: Decision, state: str, uid: str) -> None:
    """Metrics, the access line's admission fields, and a log line for a problem."""
    ADMISSIONS.labels(decision.mode, decision.outcome).inc()
    if decision.outcome == "error":
        ADMISSION_ERRORS.labels(decision.reason or "internal").inc()
        if decision.reason != "internal":  # an internal error was logged with its traceback
            log.warning(
                "admission allowed unpatched: %s",
                decision.reason,
                extra={"fields": {"uid": uid, "warnings": decision.warnings}},
            )
    if decision.wanted and decision.hypervisor is not None:
        applied = decision.delta is not None
        amount = decision.delta if applied else decision.wanted
        direction = "added" if (amount or 0) > 0 else "saved"
        if amount:
            ADMISSION_BYTES.labels(decision.hypervisor, direction, "true" if applied else "false").inc(
                abs(amount)
            )
    context = CONTEXT.get()
    if context is not None:
        fields: dict[str, Any] = {
            "uid": uid,
            "requested": decision.requested,
            "mode": decision.mode,
            "outcome": decision.outcome,
            "configuration": state,
        }
        if decision.reason is not None:
            fields["reason"] = decision.reason
        if decision.predicted is not None:
            fields.update(predicted=decision.predicted, upstream=decision.upstream, table=decision.table)
        if decision.delta is not None:
            fields["delta"] = decision.delta
        context["admission"] = fields


@bp.post("/vmi", defaults={"mode": None})
@bp.post("/vmi/<mode>")
@reads_query
def review(mode: str | None) -> Response:
    """Admit one VMI: always allowed, patched as the mode says."""
    # The API server adds its webhook timeout to the URL (client-go's Request.URL: ?timeout=10s).
    query_args(("timeout",)).text("timeout", 32)
    if mode is not None and mode not in MODES:
        raise NotFound(f"no admission mode {mode!r}; modes: {', '.join(MODES)}")
    chosen = mode or current_app.config["ADMISSION_MODE"]

    def admit(body: Any) -> dict[str, Any]:
        request = _request(body)
        decision, state = _decide(request, chosen)
        _observe(decision, state, request["uid"])
        return _answer(request["uid"], decision)

    return json_response(answer_json(admit))
