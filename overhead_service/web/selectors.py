"""Which stored measurements a fit or an evaluation uses: hypervisor, arch, scope, runs, time range."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from overhead_service.calibration.records import HYPERVISORS, SCOPES, parse_timestamp, storable_text
from overhead_service.errors import InputError

__all__ = ["measurement_selector", "parse_time", "query_choice", "query_text"]


def parse_time(value: Any, path: str) -> datetime | None:
    """An RFC 3339 timestamp with a time zone (:func:`parse_timestamp`), or None."""
    return None if value is None else parse_timestamp(value, path)


def query_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """A query parameter that must be one of ``allowed``."""
    if value not in allowed:
        raise InputError(name, f"must be one of: {', '.join(allowed)}")
    return value


def query_text(name: str, value: str, max_length: int) -> str:
    """A non-empty query parameter the database can store."""
    if not value or len(value) > max_length:
        raise InputError(name, f"must be a non-empty string of at most {max_length} characters")
    if not storable_text(value):
        raise InputError(name, "must not contain NUL characters")
    return value


def measurement_selector(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The store's ``select_measurements`` keyword arguments from a request body."""
    hypervisor = body.get("hypervisor")
    if hypervisor not in HYPERVISORS:
        raise InputError(prefix + "hypervisor", "must be kvm or mshv")
    arch = body.get("arch")
    if type(arch) is not str or not arch or len(arch) > 64:
        raise InputError(prefix + "arch", "must be an architecture such as amd64")
    scope = body.get("scope")
    if scope not in SCOPES:
        raise InputError(prefix + "scope", "must be qemu, pod or node")
    runs = body.get("runs")
    if runs is not None and (
        type(runs) is not list or not runs or any(type(r) is not str or not r for r in runs)
    ):
        raise InputError(prefix + "runs", "must be a non-empty array of run ids")
    since = parse_time(body.get("since"), prefix + "since")
    until = parse_time(body.get("until"), prefix + "until")
    return {
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope,
        "run_ids": runs,
        "since": since,
        "until": until,
    }
