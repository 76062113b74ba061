"""Measurement records uploaded by benchmark jobs: the one definition of what a record is.

A record says how much memory one VM used on top of its guest RAM in one *scope* (``qemu``: the
QEMU process and its kernel page tables; ``pod``: the whole virt-launcher pod; ``node``: memory
outside the pod attributable to the VM; ``virtqemud`` and ``virtlogd``: the libvirt daemon that
started the VM's QEMU and its log daemon, as KubeVirt's virt-launcher runs them, one VM per daemon),
the raw figures that number came from, the VM's shape and the host it ran on. Example (JSON,
camelCase)::

    {"runId": "ci-1234", "sampleId": "vm-007", "hypervisor": "kvm", "arch": "amd64", "scope": "pod",
     "overheadBytes": 283115520, "rawBytes": 1356857344, "guestTouchedBytes": 1073741824,
     "vm": {"vcpus": 2, "guestMemoryBytes": 1073741824, "graphics": true, "vfio": false,
            "ioThreads": 1},
     "host": {"kernel": "6.1.0-18-amd64", "qemu": "9.0.2", "accelerator": "kvm",
              "node": "worker-3", "cpuModel": "Intel Xeon Gold 6338"},
     "measuredAt": "2026-11-20T10:31:00Z"}

The record is defined once, here, as the marshmallow schemas :class:`RecordSchema`,
:class:`VmSchema` and :class:`HostSchema`, whose fields are the strict kinds of
:mod:`~overhead_service.calibration.record_fields`.  Everything else is derived from them:

- validation: :func:`validate_record` is marshmallow's own ``load``; :func:`validate_batch`, on the
  ingestion path, walks the same fields and runs the same checks without marshmallow's machinery
  (ten times faster; a test keeps the two in agreement).  Either reports a record's *first*
  problem, in the order fields are declared, at a path such as ``records[3].vm.vcpus``; unknown
  fields are refused at every level, and a few consistency rules hold (``rawBytes -
  guestTouchedBytes == overheadBytes``; the guest cannot have touched more than its RAM plus 64 MiB;
  an accelerator belongs to its hypervisor);
- the store's ``measurements`` columns and CHECK constraints (:data:`LEAVES`, read by
  :mod:`overhead_service.store.schema`), and the host facts it reports;
- the fit's columns (:mod:`overhead_service.calibration.samples`): the fields with a
  ``fit_default``, and what an absent one means;
- ``openapi.yaml``'s ``MeasurementRecord`` must say the same (``tests/calibration/test_records.py``).

Who started QEMU (``launcher``): a ``qemu`` record without it was started directly by the benchmark
(every record before libvirt-launched ones existed); ``launcher: libvirt`` is QEMU started by a
libvirt daemon from a domain, as KubeVirt does, and comes with the ``libvirt`` object (which daemon
binary, how many domains it ran, the domain XML's digest…) and ``host.libvirt``.  The daemon scopes
are always ``libvirt``; a ``pod`` or ``node`` record has no ``launcher`` (its QEMU is started by
KubeVirt's own virt-launcher).  A daemon holds no guest RAM: ``guestTouchedBytes`` is 0, so
``overheadBytes`` is its memory, and ``vm`` is the shape of the domain it ran.

Every check a fit or a report makes of a column is made here first: an ingested record never makes
a later fit fail.  (So ``overheadBytes`` is not negative: a fit needs the scope's memory.)

Adding a field: declare it in its schema with its kind and range, where it should be checked (the
declaration order is the order problems are looked for), and

- ``column=False`` if it needs no column of its own (it is kept in the stored record either way);
  otherwise existing databases need an upgrade step adding the column
  (``MIGRATIONS`` in :mod:`overhead_service.store.schema`);
- ``fit_default=`` if a fit reads it, and the attribute on ``Sample`` and ``SampleArrays``
  (:mod:`~overhead_service.calibration.samples` refuses to import without it);
- the same property in ``openapi.yaml`` (the test says what differs).

A new choice (a scope, a hypervisor) is one more string in its tuple here; a field with
``store_check`` then also needs an upgrade step replacing its CHECK constraint in existing
databases, and a new scope its components in
:data:`~overhead_service.calibration.prediction.SCOPE_COMPONENTS`.  Pure domain code: no Flask, no SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema

from overhead_service.calibration.record_fields import (
    FIT_REQUIRED,
    INT64_MAX,
    Choice,
    Digest,
    Figures,
    Flag,
    Integer,
    Problem,
    RecordField,
    Share,
    Text,
    Timestamp,
    measured_window,
)
from overhead_service.calibration.values import parse_timestamp, storable_text
from overhead_service.errors import InputError, InvalidRecords

__all__ = [
    "ACCELERATORS",
    "DAEMON_SCOPES",
    "HYPERVISORS",
    "LAUNCHERS",
    "LEAVES",
    "MAX_BATCH",
    "SCOPES",
    "HostSchema",
    "Leaf",
    "LibvirtSchema",
    "RecordSchema",
    "VmSchema",
    "parse_timestamp",
    "storable_text",
    "validate_batch",
    "validate_record",
]

MAX_BATCH: Final = 10_000

HYPERVISORS: Final = ("kvm", "mshv")
SCOPES: Final = ("qemu", "pod", "node", "virtqemud", "virtlogd")
DAEMON_SCOPES: Final = ("virtqemud", "virtlogd")
LAUNCHERS: Final = ("direct", "libvirt")
LIBVIRT_DAEMONS: Final = ("virtqemud", "libvirtd")
LIBVIRT_MODES: Final = ("session", "system")
ACCELERATORS: Final = ("kvm", "tcg", "mshv")
DEVICE_SETS: Final = ("minimal", "kubevirt")

MIB: Final = 1024 * 1024
TIB: Final = 1024**4

MAX_ID_LENGTH: Final = 200
MAX_ARCH_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 200
MAX_RAW_FIGURES: Final = 64
MAX_DOMAINS: Final = 64  # domains under one libvirt daemon
MAX_THREADS: Final = 100_000

MAX_OVERHEAD: Final = TIB
MIN_GUEST_MEMORY: Final = MIB
MAX_GUEST_MEMORY: Final = 16 * TIB
TOUCHED_SLACK: Final = 64 * MIB
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)


# --- the definition -------------------------------------------------------------------------------


class _Object(Schema):
    """An object of the record: unknown fields refused, problems in the service's words."""

    class Meta:
        unknown = RAISE

    error_messages = {"type": "must be an object", "unknown": "unknown field"}


class VmSchema(_Object):
    """The VM's shape: what a fit regresses on."""

    vcpus = Integer(1, 1024, required=True, store_check=True, fit_default=FIT_REQUIRED)
    guestMemoryBytes = Integer(MIN_GUEST_MEMORY, MAX_GUEST_MEMORY, required=True, fit_default=FIT_REQUIRED)
    graphics = Flag(required=True, fit_default=False)
    vfio = Flag(required=True, fit_default=False)
    ioThreads = Integer(0, 256, required=True, store_check=True, fit_default=0)
    tpm = Flag(fit_default=False)
    sev = Flag(fit_default=False)
    dedicatedCpu = Flag(fit_default=False)
    downwardMetrics = Flag(fit_default=False)
    vcpusOnline = Flag(fit_default=True)  # whether the guest brought every vCPU online
    execProbes = Integer(0, 2, fit_default=0)  # liveness and readiness
    deviceSet = Choice(DEVICE_SETS, length=16)
    touchedShare = Share()


class HostSchema(_Object):
    """The host: what a table's fit stands on, and what drift is looked for across."""

    kernel = Text(MAX_TEXT_LENGTH, required=True, column="host_kernel")
    qemu = Text(MAX_TEXT_LENGTH, required=True, column="host_qemu")
    node = Text(MAX_TEXT_LENGTH, required=True, column="host_node")
    cpuModel = Text(MAX_TEXT_LENGTH, required=True, column="host_cpu_model")
    libvirt = Text(MAX_TEXT_LENGTH, column="host_libvirt")
    kubevirt = Text(MAX_TEXT_LENGTH, column="host_kubevirt")
    accelerator = Choice(ACCELERATORS, length=8, required=True, store_check=True)


class LibvirtSchema(_Object):
    """How libvirt ran a ``launcher: libvirt`` record's QEMU (for a daemon scope: the daemon itself)."""

    daemon = Choice(LIBVIRT_DAEMONS, length=16, required=True, column=False)  # the binary that ran
    build = Text(MAX_TEXT_LENGTH, required=True, column=False)  # e.g. debian-package
    mode = Choice(LIBVIRT_MODES, length=8, required=True, column=False)  # session: KubeVirt's non-root
    domains = Integer(1, MAX_DOMAINS, required=True, column=False)  # under the daemon at once
    domainIndex = Integer(0, MAX_DOMAINS - 1, column=False)  # scope qemu: which of them
    domainXmlSha256 = Digest(required=True, column=False)
    threads = Integer(1, MAX_THREADS, column=False)  # daemon scopes: the daemon's threads


def _nested(schema: type[Schema], *, required: bool = True) -> fields.Nested:
    return fields.Nested(
        schema, required=required, error_messages={"required": "is required", "null": "must be an object"}
    )


class RecordSchema(_Object):
    """One measurement record (see the module docstring)."""

    runId = Text(MAX_ID_LENGTH, required=True)
    sampleId = Text(MAX_ID_LENGTH, required=True)
    hypervisor = Choice(HYPERVISORS, length=16, required=True, store_check=True)
    arch = Text(MAX_ARCH_LENGTH, required=True)
    scope = Choice(SCOPES, length=16, required=True, store_check=True)
    launcher = Choice(LAUNCHERS, length=16, store_check=True)  # who started QEMU; absent: direct
    overheadBytes = Integer(0, MAX_OVERHEAD, required=True, fit_default=FIT_REQUIRED)
    rawBytes = Integer(0, INT64_MAX, required=True)
    guestTouchedBytes = Integer(0, INT64_MAX, required=True)
    vm = _nested(VmSchema)
    host = _nested(HostSchema)
    libvirt = _nested(LibvirtSchema, required=False)
    measuredAt = Timestamp(required=True)
    raw = Figures(MAX_RAW_FIGURES, column=False)  # every raw figure, by name

    @validates_schema(skip_on_field_errors=True)
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        problem = _inconsistency(data)
        if problem is not None:
            path, message = problem
            group, _, name = path.rpartition(".")
            raise (
                ValidationError({name: [message]}, field_name=group)
                if group
                else ValidationError(message, path)
            )


def _inconsistency(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first consistency rule between fields that ``record`` breaks, as (path, message)."""
    overhead, raw, touched = record["overheadBytes"], record["rawBytes"], record["guestTouchedBytes"]
    if raw - touched != overhead:
        return (
            "overheadBytes",
            f"must equal rawBytes - guestTouchedBytes ({raw} - {touched} = {raw - touched}), got {overhead}",
        )
    if touched > record["vm"]["guestMemoryBytes"] + TOUCHED_SLACK:
        return (
            "guestTouchedBytes",
            "must be at most vm.guestMemoryBytes + 64 MiB (the guest cannot touch more)",
        )
    accelerator, hypervisor = record["host"]["accelerator"], record["hypervisor"]
    if accelerator != "tcg" and accelerator != hypervisor:
        return (
            "host.accelerator",
            f"accelerator {accelerator} does not run hypervisor {hypervisor} (only tcg runs either)",
        )
    return _launch_inconsistency(record)


def _launch_inconsistency(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first rule about who started QEMU (``launcher``, ``libvirt``) that ``record`` breaks."""
    scope, launcher, libvirt = record["scope"], record.get("launcher"), record.get("libvirt")
    if scope in DAEMON_SCOPES:
        if launcher != "libvirt":
            return "launcher", f"must be libvirt for scope {scope} (a libvirt daemon)"
        if record["guestTouchedBytes"] != 0:
            return "guestTouchedBytes", f"must be 0 for scope {scope} (a daemon holds no guest RAM)"
    elif scope != "qemu" and launcher is not None:
        return (
            "launcher",
            f"is for qemu and daemon records: KubeVirt's virt-launcher starts the QEMU of a {scope} record",
        )
    if launcher == "libvirt":
        if libvirt is None:
            return "libvirt", "is required when launcher is libvirt"
        if "libvirt" not in record["host"]:
            return "host.libvirt", "is required when launcher is libvirt (the libvirt version)"
    elif libvirt is not None:
        return "libvirt", "is only for records with launcher libvirt"
    if libvirt is None:
        return None
    if scope == "qemu":
        if "threads" in libvirt:
            return "libvirt.threads", "is for the daemon scopes only"
        index = libvirt.get("domainIndex")
        if index is None:
            return "libvirt.domainIndex", "is required for scope qemu (which of the daemon's domains)"
        if index >= libvirt["domains"]:
            return "libvirt.domainIndex", f"must be below libvirt.domains ({libvirt['domains']})"
        return None
    if "domainIndex" in libvirt:
        return "libvirt.domainIndex", "is for scope qemu only"
    if "threads" not in libvirt:
        return "libvirt.threads", f"is required for scope {scope} (the daemon's threads)"
    return None


# --- what the rest of the service derives ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leaf:
    """One value of the record: a field of the record itself, of ``vm`` or of ``host``."""

    group: str | None  # "vm", "host", "libvirt" or None
    key: str  # its name in its object
    field: RecordField

    @property
    def path(self) -> str:
        return self.key if self.group is None else f"{self.group}.{self.key}"

    @property
    def column(self) -> str | None:
        """The measurements table's column (None: the value is only in the stored record)."""
        column = self.field.column
        if column is True:
            return re.sub(r"(?<!^)(?=[A-Z])", "_", self.key).lower()
        return column or None


def _leaves(schema: Schema, group: str | None = None) -> Iterator[Leaf]:
    for name, field in schema.fields.items():
        if isinstance(field, fields.Nested):
            assert isinstance(field.schema, Schema) and group is None
            yield from _leaves(field.schema, name)
        else:
            assert isinstance(field, RecordField)
            yield Leaf(group, name, field)


_RECORD_SCHEMA: Final = RecordSchema()
LEAVES: Final[tuple[Leaf, ...]] = tuple(_leaves(_RECORD_SCHEMA))


# --- validation ------------------------------------------------------------------------------------


class _Bad(Exception):
    """The first problem found in one record (internal: becomes an :class:`InputError`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


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
    problems: list[InputError] = []
    window = measured_window.set(_window(now))
    try:
        for index, record in enumerate(records):
            try:
                _check_object(record, _RECORD, "")
                _check_consistency(record)
            except _Bad as bad:
                where = f"{path}[{index}]" + (f".{bad.path}" if bad.path else "")
                problems.append(InputError(where, bad.message))
    finally:
        measured_window.reset(window)
    if problems:
        raise InvalidRecords(problems, path=path)
    return records


def validate_record(record: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """One record checked by :class:`RecordSchema` (paths relative to the record); raises
    :class:`InputError` at its first problem, as :func:`validate_batch` would."""
    if type(record) is not dict:
        raise InputError("", "must be an object")
    window = measured_window.set(_window(now))
    try:
        _RECORD_SCHEMA.load(record)
    except ValidationError as err:
        assert isinstance(err.messages, dict)
        raise InputError(*_first_problem(err.messages, _RECORD_SCHEMA, "")) from None
    finally:
        measured_window.reset(window)
    return record


def _window(now: datetime | None) -> tuple[datetime, datetime]:
    return EARLIEST, (now or datetime.now(UTC)) + MAX_CLOCK_SKEW


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _unknown_message(schema: Schema) -> str:
    return f"unknown field; allowed: {', '.join(sorted(schema.fields))}"


# The fast path: each object of the record as (names, unknown-field message, its members in order:
# (name, field, required, nested object or None)).
_Member = tuple[str, RecordField | None, bool, "_Shape | None"]
_Shape = tuple[frozenset[str], str, tuple[_Member, ...]]


def _shape(schema: Schema) -> _Shape:
    members: list[_Member] = []
    for name, field in schema.fields.items():
        if isinstance(field, fields.Nested):
            assert isinstance(field.schema, Schema)
            members.append((name, None, field.required, _shape(field.schema)))
        else:
            assert isinstance(field, RecordField)
            members.append((name, field, field.required, None))
    return frozenset(schema.fields), _unknown_message(schema), tuple(members)


_RECORD: Final = _shape(_RECORD_SCHEMA)


def _check_object(value: Any, shape: _Shape, path: str) -> None:
    """:class:`RecordSchema`'s checks of one object, in its order, without marshmallow's machinery."""
    if type(value) is not dict:
        raise _Bad(path, "must be an object")
    names, unknown, members = shape
    if not value.keys() <= names:
        raise _Bad(_join(path, min(value.keys() - names)), unknown)
    key = ""
    try:
        for key, field, required, nested in members:
            if key in value:
                if field is not None:
                    field.check(value[key])
                else:
                    assert nested is not None
                    _check_object(value[key], nested, _join(path, key))
            elif required:
                raise _Bad(_join(path, key), "is required")
    except Problem as problem:
        where = _join(path, key)
        raise _Bad(where if problem.path is None else f"{where}.{problem.path}", problem.message) from None


def _check_consistency(record: dict[str, Any]) -> None:
    problem = _inconsistency(record)
    if problem is not None:
        raise _Bad(*problem)


def _first_problem(errors: Mapping[str, Any], schema: Schema, path: str) -> tuple[str, str]:
    """The problem :func:`validate_batch` would report first, among everything marshmallow found."""
    if "_schema" in errors:
        return path, errors["_schema"][0]
    unknown = sorted(errors.keys() - schema.fields.keys())
    if unknown:
        return _join(path, unknown[0]), _unknown_message(schema)
    for name, field in schema.fields.items():
        found = errors.get(name)
        if found is None:
            continue
        where = _join(path, name)
        if isinstance(found, Mapping):
            if isinstance(field, fields.Nested):
                assert isinstance(field.schema, Schema)
                return _first_problem(found, field.schema, where)
            key = next(iter(found))  # a figure of ``raw``
            return f"{where}.{key}", found[key][0]
        return where, found[0]
    raise AssertionError(f"no problem found in {errors!r}")
