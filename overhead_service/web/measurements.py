"""``POST /v1/measurements`` (role ``ingest``) and ``GET /v1/measurements`` (open).

Upload: ``{"records": [record, ...]}``, at most 10,000 records
(:mod:`overhead_service.calibration.records`). The batch is atomic: if any record is invalid, nothing is
stored and the 422 problem lists every bad record (``errors[].path`` = ``records[i].field``).
A record whose ``(runId, sampleId)`` is already stored is not stored again and is reported as a
duplicate, so a retried upload is harmless and never counted twice. The answer is always 200 (not
201: a batch may create nothing, and it names no single new resource)::

    {"stored": 48, "duplicates": 2, "duplicateKeys": [{"runId": "ci-1", "sampleId": "vm-3"}, ...]}

Listing: filters ``hypervisor``, ``arch``, ``scope``, ``runId`` (repeatable), ``since``
(inclusive) and ``until`` (exclusive) on ``measuredAt``; ``limit`` (1..1000, default 100) and
``cursor`` (the ``next`` of the previous page). Answer ``{"items": [...], "next": cursor or null}``,
each item the uploaded record plus ``id``, ``ingestedAt`` and ``ingestedBy``. A bad or unknown
query parameter is a 422 problem whose path is the parameter's name.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Blueprint, Response

from overhead_service.calibration.records import HYPERVISORS, SCOPES, validate_batch
from overhead_service.errors import InputError, InvalidRecords
from overhead_service.extensions import get_store
from overhead_service.web.auth import require_role
from overhead_service.web.common import json_response
from overhead_service.web.metrics import MEASUREMENTS
from overhead_service.web.overhead import gc_paused
from overhead_service.web.parsing import json_object, query_args, read_json, reads_query

__all__ = ["bp"]

bp = Blueprint("measurements", __name__, url_prefix="/v1/measurements")

_BODY_FIELDS: Final = frozenset({"records"})
_QUERY: Final = ("hypervisor", "arch", "scope", "runId", "since", "until", "limit", "cursor")
MAX_RUN_IDS: Final = 100
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000


@bp.post("")
def ingest() -> Response:
    """Store a batch of measurement records: all of them, or none if any is invalid."""
    actor = require_role("ingest")
    with gc_paused():  # a big batch decodes into many containers, none of them cyclic
        body = json_object(read_json(), _BODY_FIELDS, what="a JSON object with a 'records' array")
        if "records" not in body:
            raise InputError("records", "is required")
        try:
            records = validate_batch(body["records"])
        except InvalidRecords:
            # Atomic: a bad record refuses the whole batch, so every record of it counts as rejected.
            MEASUREMENTS.labels("rejected").inc(len(body["records"]))
            raise
        result = get_store().add_measurements(records, ingested_by=actor)
    MEASUREMENTS.labels("ingested").inc(result.stored)
    MEASUREMENTS.labels("duplicate").inc(result.duplicates)
    return json_response(
        {
            "stored": result.stored,
            "duplicates": result.duplicates,
            "duplicateKeys": [{"runId": run, "sampleId": sample} for run, sample in result.duplicate_keys],
        }
    )


@bp.get("")
@reads_query
def list_measurements() -> Response:
    """One page of stored records, oldest ingested first."""
    items, next_cursor = get_store().list_measurements(**_query())
    return json_response({"items": items, "next": next_cursor})


def _query() -> dict[str, Any]:
    args = query_args(_QUERY, repeatable=("runId",))
    query: dict[str, Any] = {
        "hypervisor": args.choice("hypervisor", HYPERVISORS),
        "arch": args.text("arch", 64),
        "scope": args.choice("scope", SCOPES),
        "run_ids": args.texts("runId", 200, MAX_RUN_IDS),
        "since": args.time("since"),
        "until": args.time("until"),
        "cursor": args.raw("cursor", 64),  # the store decodes it, and names "cursor" if it cannot
    }
    query = {name: value for name, value in query.items() if value is not None}
    query["limit"] = args.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    return query
