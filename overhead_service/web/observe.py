"""Per request: a request id, the HTTP metrics, and exactly one JSON access line.

The request id is the caller's ``X-Request-ID`` when it is sane (1 to 128 visible ASCII
characters), else a new random one; it is echoed in the answer's ``X-Request-ID`` header and is on
every log line written while the request is answered (:data:`overhead_service.logs.CONTEXT`).

The access line (logger ``overhead_service.access``) has ``method``, ``route`` (the URL rule
template, or ``unmatched``), ``path``, ``status`` and ``duration_ms``; an overhead answer adds the
hypervisor, its reason and the table (:func:`observe_answer`), a batch the counts per hypervisor,
reason and table (:func:`observe_batch`) and the warning codes of the answer (counts per code for a
batch), a problem document its type and the field paths. Its
level is ``info``, ``warning`` for a hypervisor fallback (with a ``remediation`` hint from
:data:`overhead_service.model.hypervisor.REMEDIATION`), ``error`` for a 5xx. gunicorn's own access log
stays off, so there is one line per request.

This is on the VM-start hot path: metric children are looked up once per label set and cached,
and nothing is formatted unless the access logger is enabled.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Final

from flask import Flask, request
from prometheus_client import Counter
from werkzeug.wrappers import Response

from overhead_service import jsonio
from overhead_service.logs import CONTEXT
from overhead_service.model.hypervisor import FALLBACK_REASONS, REMEDIATION
from overhead_service.web.errors import PROBLEM_JSON
from overhead_service.web.metrics import (
    ANSWERS,
    FALLBACKS,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    HYPERVISOR_DECISIONS,
    PROVISIONAL_ANSWERS,
    WARNINGS,
)

__all__ = ["ACCESS_LOGGER", "HEADER", "init_app", "observe_answer", "observe_batch"]

ACCESS_LOGGER: Final = "overhead_service.access"
HEADER: Final = "X-Request-ID"

log = logging.getLogger(ACCESS_LOGGER)

_ENVIRON_HEADER: Final = "HTTP_X_REQUEST_ID"
_SANE_ID: Final = re.compile(r"[!-~]{1,128}")  # visible ASCII: safe in a header and a log line
# Any other method string a client sends is one label value, not a new series per string.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_PATH: Final = 1024
_MAX_ERROR_PATHS: Final = 20

_START: ContextVar[float] = ContextVar("overhead_request_start", default=0.0)

# Metric children by label values: labels() takes a lock and converts every value each call.
_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_children: dict[tuple[Counter, tuple[str, ...]], Any] = {}


def _child(metric: Counter, labels: tuple[str, ...]) -> Any:
    found = _children.get((metric, labels))
    if found is None:
        found = _children[(metric, labels)] = metric.labels(*labels)
    return found


def observe_answer(answer: Mapping[str, Any]) -> None:
    """Count one overhead answer (shaped like ``OverheadService.compute``'s) in the metrics, and
    put its hypervisor decision and table on the current request's access line."""
    decision = answer["hypervisor"]
    name, reason = decision["name"], decision["reason"]
    table = answer["table"]
    table_id, provisional = table["id"], bool(table["provisional"])
    _child(HYPERVISOR_DECISIONS, (name,)).inc()
    if reason in FALLBACK_REASONS:
        _child(FALLBACKS, (reason,)).inc()
    _child(ANSWERS, (table_id, name)).inc()
    if provisional:
        _child(PROVISIONAL_ANSWERS, (table_id, name)).inc()
    warnings = answer["warnings"]
    for warning in warnings:
        _child(WARNINGS, (warning["code"],)).inc()
    context = CONTEXT.get()
    if context is not None:
        context["hypervisor"] = name
        context["hypervisor_reason"] = reason
        context["table"] = table_id
        context["provisional"] = provisional
        if warnings:
            context["warnings"] = [warning["code"] for warning in warnings]
        if reason in REMEDIATION:
            context["remediation"] = REMEDIATION[reason]


def observe_batch(items: Iterable[Mapping[str, Any]]) -> None:
    """Count every answer of a batch (problem documents in it are counted as problems only), and
    put the counts per hypervisor, reason and table on the current request's access line."""
    shapes: dict[tuple[str, str, str, bool], int] = {}
    warned: dict[str, int] = {}
    problems = 0
    for item in items:
        decision = item.get("hypervisor")
        if type(decision) is not dict:
            problems += 1
            continue
        table = item["table"]
        key = (decision["name"], decision["reason"], table["id"], bool(table["provisional"]))
        shapes[key] = shapes.get(key, 0) + 1
        for warning in item["warnings"]:
            warned[warning["code"]] = warned.get(warning["code"], 0) + 1
    hypervisors: dict[str, int] = {}
    reasons: dict[str, int] = {}
    tables: dict[str, int] = {}
    for code, count in warned.items():
        _child(WARNINGS, (code,)).inc(count)
    # One increment per distinct answer shape, not per item: a batch has up to 10,000 items.
    for (name, reason, table_id, provisional), count in shapes.items():
        _child(HYPERVISOR_DECISIONS, (name,)).inc(count)
        if reason in FALLBACK_REASONS:
            _child(FALLBACKS, (reason,)).inc(count)
        _child(ANSWERS, (table_id, name)).inc(count)
        if provisional:
            _child(PROVISIONAL_ANSWERS, (table_id, name)).inc(count)
        hypervisors[name] = hypervisors.get(name, 0) + count
        reasons[reason] = reasons.get(reason, 0) + count
        tables[table_id] = tables.get(table_id, 0) + count
    context = CONTEXT.get()
    if context is not None:
        context["batch"] = {
            "answers": sum(shapes.values()),
            "problems": problems,
            "hypervisors": hypervisors,
            "reasons": reasons,
            "tables": tables,
        }
        if warned:
            context["batch"]["warnings"] = warned
        remediation = {reason: REMEDIATION[reason] for reason in reasons if reason in REMEDIATION}
        if remediation:
            context["remediation"] = remediation


def _request_id(environ: Mapping[str, Any]) -> str:
    offered = environ.get(_ENVIRON_HEADER)
    if offered is not None and _SANE_ID.fullmatch(offered):
        return str(offered)
    return os.urandom(16).hex()


def _before() -> None:
    _START.set(time.perf_counter())
    CONTEXT.set({"request_id": _request_id(request.environ)})


def _problem_fields(response: Response) -> dict[str, Any]:
    """What a problem document says about the error: its type, detail and field paths."""
    try:
        document = jsonio.loads(response.get_data())
    except (ValueError, RecursionError):
        return {}
    if type(document) is not dict:
        return {}
    fields: dict[str, Any] = {"problem_type": document.get("type")}
    detail = document.get("detail")
    if isinstance(detail, str):
        fields["detail"] = detail[:500]
    errors = document.get("errors")
    if type(errors) is list:
        fields["error_paths"] = [
            error.get("path") for error in errors[:_MAX_ERROR_PATHS] if type(error) is dict
        ]
        fields["error_count"] = len(errors)
    return fields


def _after(response: Response) -> Response:
    req = request._get_current_object()  # type: ignore[attr-defined]  # once, not per attribute
    context = CONTEXT.get()
    if context is None:  # an earlier before_request hook failed: still one line, with an id
        context = {"request_id": _request_id(req.environ)}
        CONTEXT.set(context)
        start = time.perf_counter()
    else:
        start = _START.get()
    duration = time.perf_counter() - start
    rule = req.url_rule
    route = rule.rule if rule is not None else "unmatched"
    method = req.method
    if method not in _METHODS:
        method = "other"
    status = response.status_code
    children = _http_children.get((route, method, status))
    if children is None:
        labels = (route, method, str(status))
        children = _http_children[(route, method, status)] = (
            HTTP_REQUESTS.labels(*labels),
            HTTP_SECONDS.labels(*labels),
        )
    children[0].inc()
    children[1].observe(duration)
    response.headers[HEADER] = context["request_id"]

    if status >= 500:
        level = logging.ERROR
    elif "remediation" in context:
        level = logging.WARNING
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        fields = context  # the request's own dict, dropped at teardown: no copy
        fields["method"] = req.method[:16]
        fields["route"] = route
        fields["path"] = req.path[:_MAX_PATH]
        fields["status"] = status
        fields["duration_ms"] = round(duration * 1000, 3)
        if status >= 400 and response.mimetype == PROBLEM_JSON:
            fields.update(_problem_fields(response))
        # makeRecord + handle is Logger.log without its caller lookup (a stack walk per request
        # for a file name and line number the JSON line does not show).
        record = log.makeRecord(
            ACCESS_LOGGER, level, "", 0, "%s %s %s", (method, route, status), None, extra={"fields": fields}
        )
        log.handle(record)
    return response


def _teardown(_error: BaseException | None) -> None:
    CONTEXT.set(None)  # the thread serves other requests next: no stale request id on its lines


def init_app(app: Flask) -> None:
    """Register the hooks (first, so that they run around everything else) and the log level."""
    logging.getLogger("overhead_service").setLevel(app.config["LOG_LEVEL"].upper())
    app.before_request_funcs.setdefault(None, []).insert(0, _before)
    # after_request hooks run last-registered first: this one first, so it sees the final answer.
    app.after_request_funcs.setdefault(None, []).insert(0, _after)
    app.teardown_request(_teardown)
