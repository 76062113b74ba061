"""JSON values every part of the service reads the same way: timestamps, and text a database stores.

Request bodies, query parameters and measurement records all use these, so a timestamp or a run id
is accepted (or refused, in the same words) wherever it appears.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from overhead_service.errors import InputError

__all__ = ["parse_timestamp", "storable_text"]

# RFC 3339 date-time: a full date, "T" (or "t" or a space, as RFC 3339 allows), a full time with an
# optional fraction, and a mandatory offset.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


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
