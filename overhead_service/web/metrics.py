"""Prometheus metrics (defined once, here) and ``GET /metrics``.

Under gunicorn every worker writes its values to mmap'd files in ``PROMETHEUS_MULTIPROC_DIR``
(:mod:`overhead_service.multiproc`) and a scrape merges them all, whichever worker answers it;
without that variable (unit tests, ``flask run``) the process's default registry is served.
Gauges say how workers combine (``livemax``: the files of a dead worker are dropped by
``gunicorn_conf.child_exit``, so a restarted worker never doubles a value). Multiprocess mode has
no ``Info`` metric and cannot remove a label set, hence the info-style gauges set back to 0.

Names and labels are agreed with the deploy alerts and the docs; label values are bounded
(route templates, not paths; table ids; a fixed set of methods and reasons).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from overhead_service.multiproc import ENV
from overhead_service.sync import ActiveTable

__all__ = [
    "ACTIVE_TABLE",
    "ADMISSIONS",
    "ADMISSION_BYTES",
    "ADMISSION_ERRORS",
    "ANSWERS",
    "COVERAGE",
    "COVERAGE_TARGET",
    "FALLBACKS",
    "FITS",
    "FIT_SECONDS",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "HYPERVISOR_DECISIONS",
    "MEASUREMENTS",
    "PROVISIONAL_ANSWERS",
    "WARNINGS",
    "bp",
    "publish_active_tables",
]

HYPERVISOR_DECISIONS: Final = Counter(
    "kubevirt_vmi_hypervisor_type",
    "Hypervisor decisions (each overhead answer, batch item and render answer), by hypervisor.",
    ["hypervisor"],
)
FALLBACKS: Final = Counter(
    "kubevirt_l1vh_fallback",
    "Hypervisor decisions that did not get the hypervisor asked for, by reason.",
    ["reason"],
)
HTTP_REQUESTS: Final = Counter(
    "overhead_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS: Final = Histogram(
    "overhead_http_request_duration_seconds",
    "Time to answer an HTTP request in the application, by route template, method and status.",
    ["route", "method", "status"],
    # Fine below 50 ms (the /v1/overhead p99 alert), coarse above: batches and fits take seconds.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ANSWERS: Final = Counter(
    "overhead_answers",
    "Overhead answers, by table and hypervisor.",
    ["table", "hypervisor"],
)
PROVISIONAL_ANSWERS: Final = Counter(
    "overhead_provisional_answers",
    "Overhead answers computed from a provisional (unmeasured) model, by table and hypervisor.",
    ["table", "hypervisor"],
)
WARNINGS: Final = Counter(
    "overhead_warnings",
    "Warnings in answers (overhead, batch items, render), by code.",
    ["code"],
)
MEASUREMENTS: Final = Counter(
    "overhead_measurements",
    "Measurement records received: ingested (stored), duplicate (already stored), rejected "
    "(in a batch refused for invalid records; none of it is stored).",
    ["outcome"],
)
FITS: Final = Counter(
    "overhead_fits",
    "Authorised fit requests: created (a new draft table), existing (the same fit asked again), "
    "failed (refused input, too few measurements, or an error).",
    ["outcome"],
)
FIT_SECONDS: Final = Histogram(
    "overhead_fit_duration_seconds",
    "Time to fit a new draft table (loading the measurements included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ACTIVE_TABLE: Final = Gauge(
    "overhead_active_table_info",
    "1 for the table requests get for a hypervisor and arch (arch * covers the others; the "
    "default table where none is activated); 0 for one that was active before.",
    ["hypervisor", "arch", "table", "provisional"],
    multiprocess_mode="livemax",
)
COVERAGE: Final = Gauge(
    "overhead_active_table_coverage_ratio",
    "Held-out coverage in the fit report of an active fitted table.",
    ["hypervisor", "arch", "table"],
    multiprocess_mode="livemax",
)
COVERAGE_TARGET: Final = Gauge(
    "overhead_active_table_coverage_target_ratio",
    "The coverage an active fitted table was fitted for.",
    ["hypervisor", "arch", "table"],
    multiprocess_mode="livemax",
)

ADMISSIONS: Final = Counter(
    "overhead_admissions",
    "VMI admission reviews answered (always allowed), by mode applied (shadow, headroom, "
    "reserved-overhead, none, off) and outcome (patched, annotated, skipped, error).",
    ["mode", "outcome"],
)
ADMISSION_BYTES: Final = Counter(
    "overhead_admission_delta_bytes",
    "Bytes by which admitted pods' memory differs from upstream's: added (T > B) or saved (T < B), "
    "applied to the VMI or only recorded (shadow, or headroom with T <= B), by hypervisor.",
    ["hypervisor", "direction", "applied"],
)
ADMISSION_ERRORS: Final = Counter(
    "overhead_admission_errors",
    "VMI admissions allowed unpatched because of a problem, by reason.",
    ["reason"],
)


# The label sets this process last set to 1 (or to a ratio), so the next choice can zero them.
_published_info: set[tuple[str, str, str, str]] = set()
_published_coverage: set[tuple[str, str, str]] = set()


def publish_active_tables(entries: Iterable[ActiveTable]) -> None:
    """Show ``entries`` as this process's active choice; label sets no longer in it go to 0."""
    info: set[tuple[str, str, str, str]] = set()
    coverage: dict[tuple[str, str, str], tuple[float, float]] = {}
    for entry in entries:
        info.add((entry.hypervisor, entry.arch, entry.table, "true" if entry.provisional else "false"))
        if entry.coverage is not None and entry.target is not None:
            coverage[(entry.hypervisor, entry.arch, entry.table)] = (entry.coverage, entry.target)
    for labels in _published_info - info:
        ACTIVE_TABLE.labels(*labels).set(0)
    for labels in info:
        ACTIVE_TABLE.labels(*labels).set(1)
    for key in _published_coverage - coverage.keys():
        COVERAGE.labels(*key).set(0)
        COVERAGE_TARGET.labels(*key).set(0)
    for key, (measured, target) in coverage.items():
        COVERAGE.labels(*key).set(measured)
        COVERAGE_TARGET.labels(*key).set(target)
    _published_info.clear()
    _published_info.update(info)
    _published_coverage.clear()
    _published_coverage.update(coverage)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric in Prometheus' text format; merged over all workers in multiprocess mode."""
    if os.environ.get(ENV):
        # A registry per scrape, holding only the collector (the metrics above are registered on
        # the default one; registering them here too would duplicate every series).
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in the library
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
