"""Structured logs: one JSON object per line on stderr.

Every line has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message`` and
``pid``; a line logged while a request is being answered also has its ``request_id`` (from
:data:`CONTEXT`, which the web layer sets per request), whatever logger wrote it. A record's
``fields`` attribute (``log.info(..., extra={"fields": {...}})``) adds its own members, and an
exception its formatted traceback as ``exception`` (still one line: JSON escapes the newlines).

Under gunicorn, :func:`gunicorn_logconfig` routes the root logger and gunicorn's error log
through :class:`JsonFormatter` and silences gunicorn's access log: the application writes exactly
one access line per request itself (:mod:`overhead_service.web.observe`).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["CONTEXT", "LEVELS", "JsonFormatter", "gunicorn_logconfig", "parse_level"]

LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# The current request's log context ({"request_id": ...}); None outside a request.
CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("overhead_log_context", default=None)


def parse_level(value: Any, source: str) -> str:
    """A level name of :data:`LEVELS`, any case; raises :class:`ValueError` naming ``source``."""
    if isinstance(value, str) and value.strip().lower() in LEVELS:
        return value.strip().lower()
    raise ValueError(f"{source} must be one of {', '.join(LEVELS)}, got {value!r}")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": moment.removesuffix("+00:00") + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        context = CONTEXT.get()
        if context is not None:
            entry["request_id"] = context.get("request_id")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # lone surrogates, non-string keys: the slower encoder copes
            return json.dumps(entry, default=str, ensure_ascii=False)


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: JSON lines on stderr at ``level`` (a :data:`LEVELS` name)."""
    name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "root": {"level": name, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": name, "handlers": ["stderr"], "propagate": False},
            # The application logs each request once, with its request id; gunicorn's line would
            # be a second one.
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }
