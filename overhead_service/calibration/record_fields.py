"""The kinds of field a measurement record has: strict JSON types with the service's own messages.

Each kind is a marshmallow field whose whole check is :meth:`RecordField.check`: marshmallow's
``load`` runs it (through ``_deserialize``), and so does the fast path of
:func:`overhead_service.calibration.records.validate_batch`, so both say the same thing in the same
words.  Types are strict: ``true`` is not an integer, ``1.0`` is not an integer, ``"5"`` is not a
number.  A field also says what the rest of the service derives from it: its JSON schema
(:meth:`RecordField.json_schema`, compared with ``openapi.yaml`` by a test), its database column
(``column``, ``store_check``) and what a fit reads when it is absent (``fit_default``).
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from enum import Enum
from typing import Any, Final

from marshmallow import ValidationError, fields

from overhead_service.calibration.values import parse_timestamp, storable_text
from overhead_service.errors import InputError

__all__ = [
    "FIT_REQUIRED",
    "INT64_MAX",
    "Choice",
    "Digest",
    "Figures",
    "Flag",
    "Integer",
    "Problem",
    "RecordField",
    "Share",
    "Text",
    "Timestamp",
    "measured_window",
]

INT64_MAX: Final = 2**63 - 1
_INT32_MAX: Final = 2**31 - 1


class _Fit(Enum):
    """Sentinels for ``fit_default`` (enum members survive the deep copy marshmallow makes of fields)."""

    REQUIRED = "required"  # no fit can do without the field
    NOT_READ = "not read"  # no fit reads the field


FIT_REQUIRED: Final = _Fit.REQUIRED

# The moments a measurement may have been taken in, (earliest, latest), for the records being
# checked now: set by the validators for the duration of a check (see :class:`Timestamp`).
measured_window: ContextVar[tuple[datetime, datetime]] = ContextVar("measured_window")


class Problem(Exception):
    """What is wrong with a value: a message, and where below the value when it is an object."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class RecordField(fields.Field):  # type: ignore[type-arg]
    """A record field checked by :meth:`check`, with what the store and the fit derive from it.

    ``column``: the measurements table's column (True: the field's name in snake_case; False:
    none, the value lives only in the stored record).  ``store_check``: the column gets a CHECK
    constraint of the field's range or choices.  ``fit_default``: what a fit reads when the field is
    absent, :data:`FIT_REQUIRED` if a fit needs it; not given when no fit reads it.
    """

    def __init__(
        self,
        *,
        required: bool = False,
        column: str | bool = True,
        store_check: bool = False,
        fit_default: Any = _Fit.NOT_READ,
    ) -> None:
        self.column = column
        self.store_check = store_check
        self.fit_default = fit_default
        messages: dict[str, str | list[Any] | dict[Any, Any]] = {
            "required": "is required",
            "null": self.message_for(None),
        }
        super().__init__(required=required, error_messages=messages)

    @property
    def fit_reads(self) -> bool:
        """Whether a fit reads this field."""
        return self.fit_default is not _Fit.NOT_READ

    def check(self, value: Any) -> None:
        """Raise :class:`Problem` unless ``value`` is a valid value of the field."""
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        """The field as an OpenAPI 3.0 schema (the keys ``openapi.yaml`` must agree on)."""
        raise NotImplementedError

    def message_for(self, value: Any) -> str:
        """What :meth:`check` says about ``value`` (``""`` when nothing)."""
        try:
            self.check(value)
        except Problem as problem:
            return problem.message
        return ""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            self.check(value)
        except Problem as problem:
            message = problem.message if problem.path is None else {problem.path: [problem.message]}
            raise ValidationError(message) from None
        return value


class Integer(RecordField):
    """A JSON integer from ``low`` to ``high`` (a boolean is not one)."""

    def __init__(self, low: int, high: int, **kwargs: Any) -> None:
        self.low, self.high = low, high
        self.message = f"must be an integer between {low} and {high}"
        super().__init__(**kwargs)

    def check(self, value: Any) -> None:
        if type(value) is not int or not self.low <= value <= self.high:
            raise Problem(self.message)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.low, "maximum": self.high}
        if self.high > _INT32_MAX or self.low < -_INT32_MAX - 1:
            schema["format"] = "int64"
        return schema


class Flag(RecordField):
    """``true`` or ``false``."""

    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise Problem("must be true or false")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Text(RecordField):
    """A non-empty string of at most ``max_length`` characters that every database can store."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        self.max_length = max_length
        self.message = f"must be a non-empty string of at most {max_length} characters"
        super().__init__(**kwargs)

    def check(self, value: Any) -> None:
        if type(value) is not str or not value or len(value) > self.max_length:
            raise Problem(self.message)
        if not storable_text(value):
            raise Problem("must not contain NUL characters or unpaired surrogates")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length, "pattern": "^[^\\x00]*$"}


class Choice(RecordField):
    """One of ``choices``; ``length`` is the column's width (room for choices to come)."""

    def __init__(self, choices: tuple[str, ...], *, length: int, **kwargs: Any) -> None:
        self.choices, self.length = choices, length
        self.message = f"must be one of: {', '.join(choices)}"
        super().__init__(**kwargs)

    def check(self, value: Any) -> None:
        if type(value) is not str or value not in self.choices:
            raise Problem(self.message)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}


class Digest(RecordField):
    """A SHA-256 digest: 64 lowercase hexadecimal digits."""

    message: Final = "must be 64 lowercase hexadecimal digits (a SHA-256 digest)"

    def check(self, value: Any) -> None:
        if type(value) is not str or len(value) != 64 or value.strip("0123456789abcdef"):
            raise Problem(self.message)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9a-f]{64}$"}


class Share(RecordField):
    """A JSON number from 0 to 1."""

    def check(self, value: Any) -> None:
        if type(value) not in (int, float) or not 0 <= value <= 1:
            raise Problem("must be a number between 0 and 1")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": 0, "maximum": 1}


class Timestamp(RecordField):
    """An RFC 3339 date-time with a time zone, within :data:`measured_window` (when set)."""

    def check(self, value: Any) -> None:
        try:
            moment = parse_timestamp(value)
        except InputError as err:
            raise Problem(err.detail) from None
        window = measured_window.get(None)
        if window is None:
            return
        earliest, latest = window
        if moment > latest:
            raise Problem("is in the future (more than 5 minutes ahead of the server's clock)")
        if moment < earliest:
            raise Problem("is before 2000-01-01, which is not a plausible measurement time")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


class Figures(RecordField):
    """An object of at most ``max_count`` named byte counts (integers from 0 to int64's maximum)."""

    def __init__(self, max_count: int, **kwargs: Any) -> None:
        self.max_count = max_count
        self.count = Integer(0, INT64_MAX)
        super().__init__(**kwargs)

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            raise Problem("must be an object of figure names to byte counts")
        if len(value) > self.max_count:
            raise Problem(f"at most {self.max_count} figures")
        for name, count in value.items():
            if not storable_text(name):
                raise Problem("figure names must not contain NUL characters or unpaired surrogates")
            if type(count) is not int or not 0 <= count <= INT64_MAX:
                raise Problem(self.count.message, name)

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "maxProperties": self.max_count,
            "additionalProperties": self.count.json_schema(),
        }
