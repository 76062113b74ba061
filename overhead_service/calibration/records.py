"""Measurement records uploaded by benchmark jobs: what one is, and checking a batch of them.

A record says how much memory one VM used on top of its guest RAM in one *scope* (``qemu``: the
QEMU process and its kernel page tables; ``pod``: the whole virt-launcher pod; ``node``: memory
outside the pod attributable to the VM), the raw figures that number came from, the VM's shape and
the host it ran on. Example (JSON, camelCase)::

    {"runId": "ci-1234", "sampleId": "vm-007", "hypervisor": "kvm", "arch": "amd64", "scope": "pod",
     "overheadBytes": 283115520, "rawBytes": 1356857344, "guestTouchedBytes": 1073741824,
     "vm": {"vcpus": 2, "guestMemoryBytes": 1073741824, "graphics": true, "vfio": false,
            "ioThreads": 1},
     "host": {"kernel": "6.1.0-18-amd64", "qemu": "9.0.2", "accelerator": "kvm",
              "node": "worker-3", "cpuModel": "Intel Xeon Gold 6338"},
     "measuredAt": "2026-11-20T10:31:00Z"}

:func:`validate_batch` checks a whole batch and reports *every* bad record, each with its first
problem at a path such as ``records[3].vm.vcpus``. Types are strict (``true`` is not an integer,
``1.0`` is not an integer), unknown fields are refused at every level, and a few consistency rules
hold (``rawBytes - guestTouchedBytes == overheadBytes``; the guest cannot have touched more than
its RAM plus 64 MiB; an accelerator belongs to its hypervisor). Pure domain code: no Flask, no SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from overhead_service.errors import InputError, InvalidRecords

__all__ = [
    "ACCELERATORS",
    "HYPERVISORS",
    "MAX_BATCH",
    "SCOPES",
    "parse_timestamp",
    "storable_text",
    "validate_batch",
    "validate_record",
]

MAX_BATCH: Final = 10_000

HYPERVISORS: Final = ("kvm", "mshv")
SCOPES: Final = ("qemu", "pod", "node")
ACCELERATORS: Final = ("kvm", "tcg", "mshv")
DEVICE_SETS: Final = ("minimal", "kubevirt")

KIB: Final = 1024
MIB: Final = 1024 * KIB
TIB: Final = 1024**4
INT64_MAX: Final = 2**63 - 1

MAX_ID_LENGTH: Final = 200
MAX_ARCH_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 200
MAX_RAW_FIGURES: Final = 64

MAX_OVERHEAD: Final = TIB
MIN_GUEST_MEMORY: Final = MIB
MAX_GUEST_MEMORY: Final = 16 * TIB
TOUCHED_SLACK: Final = 64 * MIB
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)

_RECORD_FIELDS: Final = frozenset(
    {
        "runId",
        "sampleId",
        "hypervisor",
        "arch",
        "scope",
        "overheadBytes",
        "rawBytes",
        "guestTouchedBytes",
        "vm",
        "host",
        "measuredAt",
        "raw",
    }
)
_VM_FIELDS: Final = frozenset(
    {
        "vcpus",
        "guestMemoryBytes",
        "graphics",
        "vfio",
        "ioThreads",
        "tpm",
        "sev",
        "dedicatedCpu",
        "downwardMetrics",
        "execProbes",
        "deviceSet",
        "touchedShare",
        "vcpusOnline",
    }
)
_VM_OPTIONAL_BOOLS: Final = ("tpm", "sev", "dedicatedCpu", "downwardMetrics", "vcpusOnline")
_HOST_FIELDS: Final = frozenset({"kernel", "qemu", "libvirt", "kubevirt", "accelerator", "node", "cpuModel"})
_HOST_REQUIRED_TEXT: Final = ("kernel", "qemu", "node", "cpuModel")
_HOST_OPTIONAL_TEXT: Final = ("libvirt", "kubevirt")

# RFC 3339 date-time: a full date, "T" (or "t" or a space, as RFC 3339 allows), a full time with an
# optional fraction, and a mandatory offset.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


class _Bad(Exception):
    """The first problem found in one record (internal: becomes an :class:`InputError`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def parse_timestamp(value: Any, path: str = "") -> datetime:
    """An RFC 3339 date-time with a time zone, as an aware :class:`datetime` in UTC.

    Raises :class:`~overhead_service.errors.InputError` at ``path`` otherwise. A fraction finer
    than microseconds is truncated; a leap second (``:60``) is refused, as Python cannot hold it;
    a moment within a day of the ends of years 1..9999 is clamped to that end.
    """
    if type(value) is not str:
        raise InputError(path, "must be an RFC 3339 date-time string with a time zone")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise InputError(path, "must be an RFC 3339 date-time with a time zone, such as 2026-11-20T10:31:00Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hours, off_minutes = match.groups()
    try:
        offset = timedelta(0)
        if not zulu:
            if int(off_hours) > 23 or int(off_minutes) > 59:
                raise ValueError("time zone offset out of range")
            offset = timedelta(hours=int(off_hours), minutes=int(off_minutes))
            if sign == "-":
                offset = -offset
        micros = int((fraction[1:] + "000000")[:6]) if fraction else 0
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
    except ValueError as exc:
        raise InputError(path, f"not a valid date-time: {exc}") from None
    try:
        return (naive - offset).replace(tzinfo=UTC)
    except OverflowError:  # within a day of year 1 or 9999: the earliest or latest moment Python has
        return (datetime.min if offset > timedelta(0) else datetime.max).replace(tzinfo=UTC)


def validate_batch(
    records: Any, *, now: datetime | None = None, path: str = "records"
) -> list[dict[str, Any]]:
    """The records of a batch, checked; raises unless every one of them is valid.

    ``records`` is the decoded ``records`` member of the request (``path`` names it in errors):
    a list of at most :data:`MAX_BATCH` objects. A list with bad records raises one
    :class:`~overhead_service.errors.InvalidRecords` listing each bad record's first problem
    (``records[3].vm.vcpus``), so the caller stores all of the batch or none of it. ``now``
    (default: the clock) bounds ``measuredAt``. The records are returned as they are (not copied).
    """
    if type(records) is not list:
        raise InputError(path, "must be an array of measurement records")
    if len(records) > MAX_BATCH:
        raise InputError(path, f"at most {MAX_BATCH} records per batch, got {len(records)}")
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    problems: list[InputError] = []
    for index, record in enumerate(records):
        try:
            _check_record(record, latest)
        except _Bad as bad:
            where = f"{path}[{index}]" + (f".{bad.path}" if bad.path else "")
            problems.append(InputError(where, bad.message))
    if problems:
        raise InvalidRecords(problems, path=path)
    return records


def validate_record(record: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """One record checked (paths relative to the record); raises :class:`InputError`."""
    try:
        _check_record(record, (now or datetime.now(UTC)) + MAX_CLOCK_SKEW)
    except _Bad as bad:
        raise InputError(bad.path, bad.message) from None
    assert isinstance(record, dict)
    return record


# --- one record -----------------------------------------------------------------------------------


def _check_record(record: Any, latest: datetime) -> None:
    _object(record, "", _RECORD_FIELDS)
    for name in ("runId", "sampleId"):
        _text(record, name, "", MAX_ID_LENGTH)
    _choice(record, "hypervisor", "", HYPERVISORS)
    _text(record, "arch", "", MAX_ARCH_LENGTH)
    _choice(record, "scope", "", SCOPES)
    overhead = _integer(record, "overheadBytes", "", -MAX_OVERHEAD, MAX_OVERHEAD)
    raw = _integer(record, "rawBytes", "", 0, INT64_MAX)
    touched = _integer(record, "guestTouchedBytes", "", 0, INT64_MAX)

    if "vm" not in record:
        raise _Bad("vm", "is required")
    vm = record["vm"]
    _object(vm, "vm", _VM_FIELDS)
    _integer(vm, "vcpus", "vm", 1, 1024)
    guest = _integer(vm, "guestMemoryBytes", "vm", MIN_GUEST_MEMORY, MAX_GUEST_MEMORY)
    _boolean(vm, "graphics", "vm")
    _boolean(vm, "vfio", "vm")
    _integer(vm, "ioThreads", "vm", 0, 256)
    for name in _VM_OPTIONAL_BOOLS:
        _boolean(vm, name, "vm", required=False)
    _integer(vm, "execProbes", "vm", 0, 2, required=False)
    _choice(vm, "deviceSet", "vm", DEVICE_SETS, required=False)
    if "touchedShare" in vm:
        share = vm["touchedShare"]
        if type(share) not in (int, float) or not 0 <= share <= 1:
            raise _Bad("vm.touchedShare", "must be a number between 0 and 1")

    if "host" not in record:
        raise _Bad("host", "is required")
    host = record["host"]
    _object(host, "host", _HOST_FIELDS)
    for name in _HOST_REQUIRED_TEXT:
        _text(host, name, "host", MAX_TEXT_LENGTH)
    for name in _HOST_OPTIONAL_TEXT:
        _text(host, name, "host", MAX_TEXT_LENGTH, required=False)
    accelerator = _choice(host, "accelerator", "host", ACCELERATORS)

    if "measuredAt" not in record:
        raise _Bad("measuredAt", "is required")
    try:
        measured = parse_timestamp(record["measuredAt"], "measuredAt")
    except InputError as err:
        raise _Bad(err.path, err.detail) from None
    if measured > latest:
        raise _Bad("measuredAt", "is in the future (more than 5 minutes ahead of the server's clock)")
    if measured < EARLIEST:
        raise _Bad("measuredAt", "is before 2000-01-01, which is not a plausible measurement time")

    if "raw" in record:
        _raw_figures(record["raw"])

    # Consistency between fields, once each field is known to be well formed.
    if raw - touched != overhead:
        raise _Bad(
            "overheadBytes",
            f"must equal rawBytes - guestTouchedBytes ({raw} - {touched} = {raw - touched}), got {overhead}",
        )
    if touched > guest + TOUCHED_SLACK:
        raise _Bad(
            "guestTouchedBytes", "must be at most vm.guestMemoryBytes + 64 MiB (the guest cannot touch more)"
        )
    hypervisor = record["hypervisor"]
    if accelerator != "tcg" and accelerator != hypervisor:
        raise _Bad(
            "host.accelerator",
            f"accelerator {accelerator} does not run hypervisor {hypervisor} (only tcg runs either)",
        )


def storable_text(value: str) -> bool:
    """Whether every database can store ``value``: no NUL (PostgreSQL text refuses it) and valid
    Unicode (a lone surrogate, which JSON can escape, has no UTF-8 encoding)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _object(value: Any, path: str, fields: frozenset[str]) -> None:
    if type(value) is not dict:
        raise _Bad(path, "must be an object")
    unknown = value.keys() - fields
    if unknown:
        name = sorted(unknown)[0]
        raise _Bad(_join(path, name), f"unknown field; allowed: {', '.join(sorted(fields))}")


def _present(obj: Mapping[str, Any], name: str, parent: str, required: bool) -> bool:
    if name in obj:
        return True
    if required:
        raise _Bad(_join(parent, name), "is required")
    return False


def _text(obj: Mapping[str, Any], name: str, parent: str, max_length: int, *, required: bool = True) -> None:
    if not _present(obj, name, parent, required):
        return
    value = obj[name]
    if type(value) is not str or not value or len(value) > max_length:
        raise _Bad(_join(parent, name), f"must be a non-empty string of at most {max_length} characters")
    if not storable_text(value):
        raise _Bad(_join(parent, name), "must not contain NUL characters or unpaired surrogates")


def _choice(
    obj: Mapping[str, Any], name: str, parent: str, allowed: tuple[str, ...], *, required: bool = True
) -> str | None:
    if not _present(obj, name, parent, required):
        return None
    value = obj[name]
    if type(value) is not str or value not in allowed:
        raise _Bad(_join(parent, name), f"must be one of: {', '.join(allowed)}")
    return value


def _integer(
    obj: Mapping[str, Any], name: str, parent: str, low: int, high: int, *, required: bool = True
) -> int:
    if not _present(obj, name, parent, required):
        return 0
    value = obj[name]
    if type(value) is not int or not low <= value <= high:  # bool is not int here
        raise _Bad(_join(parent, name), f"must be an integer between {low} and {high}")
    return value


def _boolean(obj: Mapping[str, Any], name: str, parent: str, *, required: bool = True) -> None:
    if _present(obj, name, parent, required) and type(obj[name]) is not bool:
        raise _Bad(_join(parent, name), "must be true or false")


def _raw_figures(raw: Any) -> None:
    if type(raw) is not dict:
        raise _Bad("raw", "must be an object of figure names to byte counts")
    if len(raw) > MAX_RAW_FIGURES:
        raise _Bad("raw", f"at most {MAX_RAW_FIGURES} figures")
    for name, value in raw.items():
        if not storable_text(name):
            raise _Bad("raw", "figure names must not contain NUL characters or unpaired surrogates")
        if type(value) is not int or not 0 <= value <= INT64_MAX:
            raise _Bad(f"raw.{name}", f"must be an integer between 0 and {INT64_MAX}")
