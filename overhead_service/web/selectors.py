"""Which stored measurements a fit or an evaluation uses: hypervisor, arch, scope, runs, time range."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from overhead_service.errors import InputError

__all__ = ["measurement_selector", "parse_time"]

_HYPERVISORS = ("kvm", "mshv")
_SCOPES = ("qemu", "pod", "node")


def parse_time(value: Any, path: str) -> datetime | None:
    """An RFC 3339 timestamp with a time zone, or None."""
    if value is None:
        return None
    if type(value) is not str:
        raise InputError(path, "must be an RFC 3339 timestamp such as 2026-11-26T21:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(path, "must be an RFC 3339 timestamp such as 2026-11-26T21:00:00Z") from None
    if parsed.tzinfo is None:
        raise InputError(path, "needs a time zone (e.g. Z)")
    return parsed


def measurement_selector(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The store's ``select_measurements`` keyword arguments from a request body."""
    hypervisor = body.get("hypervisor")
    if hypervisor not in _HYPERVISORS:
        raise InputError(prefix + "hypervisor", "must be kvm or mshv")
    arch = body.get("arch")
    if type(arch) is not str or not arch or len(arch) > 64:
        raise InputError(prefix + "arch", "must be an architecture such as amd64")
    scope = body.get("scope")
    if scope not in _SCOPES:
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
