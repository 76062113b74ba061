"""``GET /v1/tables/{id}/report``: a table's HTML report on stored measurements (open, like every read).

Query parameters (each at most once, except ``runs``):

- ``hypervisor``, ``arch``, ``scope``: which measurements and which model of the table; by default
  those the table was fitted for, else kvm/amd64/qemu
  (:func:`overhead_service.calibration.report.default_target`); ``scope`` may be repeated (the page
  then judges the table on each scope's measurements in turn);
- ``runs`` (repeatable, at most 100), ``since`` (inclusive), ``until`` (exclusive): which stored
  measurements, as for ``GET /v1/measurements``; ``launcher``: only the qemu records started so;
- ``upstream``: the table to compare with (default ``kubevirt-v1.9.0``).

The page is :func:`overhead_service.calibration.report.render_report` (``text/html``). An unknown
table is a 404 problem; a bad, repeated or unknown parameter a 422 problem whose path is the parameter's name.
The measurements are read as numpy columns (:meth:`Store.measurement_columns`: the report needs
the shapes and overheads only, and this is the fast way for 10^6 samples) with their host facts.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Blueprint, Response

from overhead_service.calibration.records import HYPERVISORS, LAUNCHERS, SCOPES
from overhead_service.calibration.report import UPSTREAM_TABLE, default_target, render_report
from overhead_service.calibration.samples import SampleArrays
from overhead_service.calibration.selection import describe_selection, for_scope
from overhead_service.errors import UnknownTable
from overhead_service.extensions import get_store
from overhead_service.web.common import registry
from overhead_service.web.parsing import query_args, reads_query, table_document

__all__ = ["bp"]

bp = Blueprint("reports", __name__, url_prefix="/v1/tables")

_QUERY: Final = ("hypervisor", "arch", "scope", "launcher", "runs", "since", "until", "upstream")
MAX_RUNS: Final = 100


@bp.get("/<table_id>/report")
@reads_query
def table_report(table_id: str) -> Response:
    """The table's report: provenance, fit report, evaluation and plots against the upstream table."""
    document = table_document(table_id)
    selector, scopes, upstream_id = _query(document)
    try:
        upstream = registry().get(upstream_id).document
    except UnknownTable as err:  # a parameter naming no table: 422 at its path
        raise UnknownTable("upstream", err.detail) from None
    store = get_store()
    samples, facts = {}, {}
    for scope in scopes:
        chosen = for_scope(selector, scope)
        columns = store.measurement_columns(**chosen)
        columns.pop("id")
        samples[scope] = SampleArrays.of(**columns)
        facts[scope] = store.host_facts(**chosen)
    single = isinstance(selector["scope"], str)
    page = render_report(
        document,
        samples[scopes[0]] if single else samples,
        hypervisor=selector["hypervisor"],
        arch=selector["arch"],
        scope=selector["scope"],
        upstream_document=upstream,
        source=describe_selection(selector),
        measurement_facts=facts[scopes[0]] if single else facts,
    )
    return Response(page, mimetype="text/html")


def _query(document: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...], str]:
    args = query_args(_QUERY, repeatable=("runs", "scope"))
    hypervisor, arch, default_scope = default_target(document)
    asked = args.choices("scope", SCOPES, len(SCOPES))
    scope: str | tuple[str, ...] = default_scope if asked is None else asked[0] if len(asked) == 1 else asked
    scopes = (scope,) if isinstance(scope, str) else tuple(one for one in SCOPES if one in scope)
    selector = {
        "hypervisor": args.choice("hypervisor", HYPERVISORS, hypervisor),
        "arch": args.text("arch", 64, arch),
        "scope": scope if isinstance(scope, str) else scopes,
        "launcher": args.choice("launcher", LAUNCHERS),
        "run_ids": args.texts("runs", 200, MAX_RUNS),
        "since": args.time("since"),
        "until": args.time("until"),
    }
    upstream = args.text("upstream", 200, UPSTREAM_TABLE)
    return selector, scopes, upstream
