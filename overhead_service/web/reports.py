"""``GET /v1/tables/{id}/report``: a table's HTML report on stored measurements (open, like every read).

Query parameters (each at most once, except ``runs``):

- ``hypervisor``, ``arch``, ``scope``: which measurements and which model of the table; by default
  those the table was fitted for, else kvm/amd64/qemu
  (:func:`overhead_service.calibration.report.default_target`);
- ``runs`` (repeatable, at most 100), ``since`` (inclusive), ``until`` (exclusive): which stored
  measurements, as for ``GET /v1/measurements``;
- ``upstream``: the table to compare with (default ``kubevirt-v1.9.0``).

The page is :func:`overhead_service.calibration.report.render_report` (``text/html``). An unknown
table is a 404 problem; a bad, repeated or unknown parameter a 422 problem whose path is the parameter's name.
The measurements are read as numpy columns (:meth:`Store.measurement_columns`: the report needs
the shapes and overheads only, and this is the fast way for 10^6 samples) with their host facts.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Blueprint, Response, request

from overhead_service.calibration.fitting import SampleArrays
from overhead_service.calibration.records import HYPERVISORS, SCOPES, parse_timestamp
from overhead_service.calibration.report import UPSTREAM_TABLE, default_target, render_report
from overhead_service.errors import InputError, UnknownTable
from overhead_service.extensions import get_store
from overhead_service.web.common import registry
from overhead_service.web.errors import problem_response
from overhead_service.web.selectors import query_choice, query_text

__all__ = ["bp", "describe_selection"]

bp = Blueprint("reports", __name__, url_prefix="/v1/tables")

_QUERY: Final = ("hypervisor", "arch", "scope", "runs", "since", "until", "upstream")
MAX_RUNS: Final = 100


@bp.get("/<table_id>/report")
def table_report(table_id: str) -> Response:
    """The table's report: provenance, fit report, evaluation and plots against the upstream table."""
    try:
        document = registry().document(table_id)
    except UnknownTable as err:
        return problem_response(err, 404)
    selector, upstream_id = _query(document)
    try:
        upstream = registry().get(upstream_id).document
    except UnknownTable as err:  # a parameter naming no table: 422 at its path
        raise UnknownTable("upstream", err.detail) from None
    store = get_store()
    columns = store.measurement_columns(**selector)
    columns.pop("id")
    page = render_report(
        document,
        SampleArrays.of(**columns),
        hypervisor=selector["hypervisor"],
        arch=selector["arch"],
        scope=selector["scope"],
        upstream_document=upstream,
        source=describe_selection(selector),
        measurement_facts=store.host_facts(**selector),
    )
    return Response(page, mimetype="text/html")


def describe_selection(selector: dict[str, Any]) -> str:
    """The stored measurements a selector picks, in words (shown on the page)."""
    words = [f"stored measurements of {selector['hypervisor']}/{selector['arch']}/{selector['scope']}"]
    if selector.get("run_ids"):
        words.append("runs " + ", ".join(selector["run_ids"]))
    if selector.get("since") is not None:
        words.append(f"measured at or after {selector['since'].isoformat()}")
    if selector.get("until") is not None:
        words.append(f"measured before {selector['until'].isoformat()}")
    return "; ".join(words)


def _query(document: dict[str, Any]) -> tuple[dict[str, Any], str]:
    args = request.args
    for name in args:
        if name not in _QUERY:
            raise InputError(name, f"unknown query parameter; allowed: {', '.join(_QUERY)}")
        if name != "runs" and len(args.getlist(name)) > 1:
            raise InputError(name, "may be given once")
    hypervisor, arch, scope = default_target(document)
    if "hypervisor" in args:
        hypervisor = query_choice("hypervisor", args["hypervisor"], HYPERVISORS)
    if "arch" in args:
        arch = query_text("arch", args["arch"], 64)
    if "scope" in args:
        scope = query_choice("scope", args["scope"], SCOPES)
    run_ids = None
    if "runs" in args:
        run_ids = [query_text("runs", value, 200) for value in args.getlist("runs")]
        if len(run_ids) > MAX_RUNS:
            raise InputError("runs", f"at most {MAX_RUNS} run ids")
    since = parse_timestamp(args["since"], "since") if "since" in args else None
    until = parse_timestamp(args["until"], "until") if "until" in args else None
    upstream = query_text("upstream", args["upstream"], 200) if "upstream" in args else UPSTREAM_TABLE
    selector = {
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope,
        "run_ids": run_ids,
        "since": since,
        "until": until,
    }
    return selector, upstream
