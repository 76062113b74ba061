"""The request bodies off the hot path, declared as marshmallow schemas: fits, evaluations, activations
and rollbacks.

A field is a strict JSON check with this API's own message (:func:`_strict`): the message is the
same whether the field is missing (when required), null, or wrong.  A body is read in two steps:
:func:`~overhead_service.web.parsing.json_object` with :func:`field_names` (an object, 422 at its
first unknown field), then :func:`load` (422 at the first bad field, in the order declared here;
an absent optional field, or a null one where null means "the default", takes its default).
Measurement records in an evaluation body are checked by their own definition
(:func:`overhead_service.calibration.records.validate_batch`).  ``POST /v1/overhead``, batch and
render keep their hand-written parsing: it is their measured fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from flask import current_app
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing

from overhead_service.calibration.records import HYPERVISORS, LAUNCHERS, SCOPES, parse_timestamp
from overhead_service.calibration.samples import check_scopes
from overhead_service.errors import InputError

__all__ = [
    "ACTIVATION",
    "EVALUATION",
    "FIT_OPTIONS",
    "FIT_SELECTION",
    "ROLLBACK",
    "field_names",
    "load",
]

MAX_ARCH_LENGTH: Final = 64
MAX_REASON_LENGTH: Final = 1000


class _Checked(fields.Field):  # type: ignore[type-arg]
    """A value taken as it is, if ``check`` accepts it; ``null_is_default``: null reads as absent."""

    def __init__(
        self, check: Callable[[Any], bool], message: str, *, null_is_default: bool = False, **kwargs: Any
    ) -> None:
        messages: dict[str, str | list[Any] | dict[Any, Any]] = {"required": message, "null": message}
        super().__init__(error_messages=messages, **kwargs)
        self.check, self.message, self.null_is_default = check, message, null_is_default

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kwargs: Any) -> Any:
        if value is None and self.null_is_default:
            value = missing
        return super().deserialize(value, attr, data, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not self.check(value):
            raise ValidationError(self.message)
        return value


def _strict(check: Callable[[Any], bool], message: str, **kwargs: Any) -> _Checked:
    return _Checked(check, message, **kwargs)


class _Moment(fields.Field):  # type: ignore[type-arg]
    """An RFC 3339 timestamp with a time zone, as an aware datetime; null reads as absent."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_timestamp(value)
        except InputError as err:
            raise ValidationError(err.detail) from None


def _number_between(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: (
        isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    )


def _integer_between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _config(key: str) -> Callable[[], Any]:
    return lambda: current_app.config[key]


def _hypervisor() -> _Checked:
    return _strict(lambda value: value in HYPERVISORS, "must be kvm or mshv", required=True)


def _arch(message: str) -> _Checked:
    return _strict(
        lambda value: type(value) is str and 0 < len(value) <= MAX_ARCH_LENGTH, message, required=True
    )


def _reason() -> _Checked:
    return _strict(
        lambda value: type(value) is str and len(value) <= MAX_REASON_LENGTH,
        f"must be a string of at most {MAX_REASON_LENGTH} characters",
        allow_none=True,
        load_default=None,
    )


class _Body(Schema):
    class Meta:
        unknown = EXCLUDE  # json_object has refused unknown fields; a body may hold several schemas'


def _are_scopes(value: Any) -> bool:
    try:
        check_scopes(value)
    except InputError:
        return False
    return True


_ONE_SCOPE: Final = f"must be one of {', '.join(SCOPES)}"


class Selection(_Body):
    """Which stored measurements: the keyword arguments of ``Store.select_measurements``."""

    hypervisor = _hypervisor()
    arch = _arch("must be an architecture such as amd64")
    scope = _strict(lambda value: value in SCOPES, _ONE_SCOPE, required=True)
    # Only qemu records are selected by it: the daemons are always libvirt's, pods KubeVirt's.
    launcher = _strict(
        lambda value: value in LAUNCHERS,
        f"must be {' or '.join(LAUNCHERS)}",
        allow_none=True,
        load_default=None,
    )
    run_ids = _strict(
        lambda value: type(value) is list and bool(value) and all(type(run) is str and run for run in value),
        "must be a non-empty array of run ids",
        data_key="runs",
        allow_none=True,
        load_default=None,
    )
    since = _Moment(allow_none=True, load_default=None)
    until = _Moment(allow_none=True, load_default=None)


class FitSelection(Selection):
    """``POST /v1/fits``, first part: the measurements and the table whose model is fitted.

    ``scope`` may name several scopes (an array), fitted together; ``check_scopes`` puts them in
    order.
    """

    scope = _strict(
        _are_scopes,
        f"{_ONE_SCOPE}, or an array of distinct ones but node",
        required=True,
    )

    # A missing or empty parent is the default table (``DEFAULT_TABLE``).
    parent = _strict(
        lambda value: not value or type(value) is str,
        "must be a table id",
        allow_none=True,
        load_default=None,
    )


class FitOptions(_Body):
    """``POST /v1/fits``, second part (read once the parent table is known): how to fit."""

    target = _strict(
        _number_between(0.5, 0.9999),
        "must be a number between 0.5 and 0.9999",
        null_is_default=True,
        load_default=_config("FIT_TARGET"),
    )
    folds = _strict(
        _integer_between(2, 20), "must be an integer between 2 and 20", null_is_default=True, load_default=5
    )
    seed = _strict(
        _integer_between(0, 2**31 - 1),
        "must be an integer between 0 and 2147483647",
        null_is_default=True,
        load_default=0,
    )


class Evaluation(Selection):
    """``POST /v1/tables/{id}/evaluate``: measurements given inline (checked as records), or selected."""

    measurements = fields.Raw(allow_none=True, load_default=None)


class Activation(_Body):
    """``POST /v1/tables/{id}/activate``."""

    hypervisor = _hypervisor()
    arch = _arch("must be an architecture such as amd64, or * for every one")
    force = _strict(lambda value: type(value) is bool, "must be a boolean", load_default=False)
    reason = _reason()


class Rollback(_Body):
    """``POST /v1/tables/{id}/rollback``."""

    hypervisor = _hypervisor()
    arch = _arch("must be an architecture such as amd64, or * for every one")
    reason = _reason()


FIT_SELECTION: Final = FitSelection()
FIT_OPTIONS: Final = FitOptions()
EVALUATION: Final = Evaluation()
ACTIVATION: Final = Activation()
ROLLBACK: Final = Rollback()


def field_names(*schemas: Schema) -> frozenset[str]:
    """The fields a body read by ``schemas`` may have, as the JSON spells them."""
    return frozenset(field.data_key or name for schema in schemas for name, field in schema.fields.items())


def load(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    """``schema``'s fields of ``body`` (an object :func:`json_object` has checked), with defaults;
    :class:`InputError` at the first bad field, in declared order."""
    try:
        loaded: dict[str, Any] = schema.load(body)
    except ValidationError as err:
        assert isinstance(err.messages, dict)
        for name, field in schema.fields.items():
            key = field.data_key or name
            if key in err.messages:
                raise InputError(key, err.messages[key][0]) from None
        raise
    return loaded
