"""Samples: one measurement reduced to what a fit reads, alone (:class:`Sample`) or as columns.

:class:`SampleArrays` holds the samples of one scope as numpy columns, the fast way in for large
sets, and :class:`ScopedSamples` those of several scopes fitted together; :func:`sample_from_record`
reads an ingestion record, :func:`sample_vmi` spells a sample's shape as the VirtualMachineInstance
the engine reads.  Pure domain code (numpy only).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.calibration.record_fields import FIT_REQUIRED, Flag, Integer
from overhead_service.calibration.records import LEAVES, SCOPES
from overhead_service.errors import InputError

__all__ = [
    "COLUMNS",
    "MAX_BYTES",
    "SCOPES",
    "BoolArray",
    "Column",
    "FloatArray",
    "IntArray",
    "Sample",
    "SampleArrays",
    "ScopedSamples",
    "check_scope",
    "check_scopes",
    "sample_from_record",
    "sample_vmi",
]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

MAX_BYTES: Final = 1 << 50  # 1 PiB: keeps every vectorised product inside int64
MAX_VCPUS: Final = 1 << 16
MAX_IO_THREADS: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement, reduced to what the fit needs."""

    scope: str  # one of SCOPES
    overhead_bytes: int
    vcpus: int
    guest_memory_bytes: int
    graphics: bool = False
    io_threads: int = 0
    vfio: bool = False
    tpm: bool = False
    sev: bool = False
    dedicated_cpu: bool = False
    downward_metrics: bool = False
    exec_probes: int = 0
    vcpus_online: bool = True


@dataclass(frozen=True, slots=True)
class Column:
    """One field of :class:`Sample` (``scope`` excepted) as a column of :class:`SampleArrays`."""

    name: str  # the attribute
    path: str  # where the ingestion record has it
    low: int
    high: int  # booleans: (0, 1), and the record's value must be a JSON boolean
    boolean: bool
    default: int | None  # what an absent field means; None: required

    @property
    def key(self) -> str:
        """The field's name in its object of the record (``vcpus`` for ``vm.vcpus``)."""
        return self.path.removeprefix("vm.")

    @property
    def in_vm(self) -> bool:
        return self.path.startswith("vm.")


# Where the fit takes wider values than a record may hold (the fit also takes synthetic and
# hand-made samples), the bounds its arithmetic needs: every product stays inside int64.  Every
# record that ingestion accepts is within them (a test keeps it so).
_FIT_BOUNDS: Final[Mapping[str, tuple[int, int]]] = {
    "overhead_bytes": (0, MAX_BYTES),
    "vcpus": (1, MAX_VCPUS),
    "guest_memory_bytes": (1, MAX_BYTES),
    "io_threads": (0, MAX_IO_THREADS),
}


def _columns() -> tuple[Column, ...]:
    """The record fields a fit reads (those with a ``fit_default``), in :class:`Sample`'s order."""
    read = {leaf.column: leaf for leaf in LEAVES if leaf.field.fit_reads}
    names = [field.name for field in dataclasses.fields(Sample) if field.name != "scope"]
    if set(names) != set(read):
        raise TypeError(
            f"Sample's fields {sorted(names)} are not the record fields a fit reads {sorted(map(str, read))}"
        )
    columns = []
    for name in names:
        leaf = read[name]
        boolean = isinstance(leaf.field, Flag)
        if boolean:
            low, high = 0, 1
        else:
            assert isinstance(leaf.field, Integer)
            low, high = _FIT_BOUNDS.get(name, (leaf.field.low, leaf.field.high))
        default = None if leaf.field.fit_default is FIT_REQUIRED else int(leaf.field.fit_default)
        columns.append(Column(name, leaf.path, low, high, boolean, default))
    return tuple(columns)


COLUMNS: Final = _columns()
SHAPE: Final = COLUMNS[1:]  # what decides a prediction: everything but the measured overhead


def check_scope(scope: Any, path: str = "scope") -> str:
    """``scope`` if it is one of :data:`SCOPES`; else an :class:`InputError` at ``path``."""
    if scope not in SCOPES:
        raise InputError(path, f"must be one of {', '.join(SCOPES)}, not {scope!r}")
    return str(scope)


def check_scopes(scope: Any, path: str = "scope") -> tuple[str, ...]:
    """The scopes a fit uses: ``scope`` (one of :data:`SCOPES`) or a non-empty array of distinct
    ones, in :data:`SCOPES` order; else an :class:`InputError` at ``path``.

    ``node`` is measured outside the pod, against the model's node group: it is fitted alone, named
    as a string.
    """
    if isinstance(scope, str):
        return (check_scope(scope, path),)
    if type(scope) not in (list, tuple) or not scope:
        raise InputError(path, f"must be one of {', '.join(SCOPES)}, or a non-empty array of them")
    for index, one in enumerate(scope):
        check_scope(one, f"{path}[{index}]")
        if one in scope[:index]:
            raise InputError(f"{path}[{index}]", f"{one!r} is given twice")
        if one == "node":
            raise InputError(
                f"{path}[{index}]", "node is fitted alone (the node's components): name it as a string"
            )
    return tuple(one for one in SCOPES if one in scope)


def sample_from_record(record: Mapping[str, Any], *, path: str = "") -> Sample:
    """The :class:`Sample` of one ingestion record (``{"scope", "overheadBytes", "vm": {...}}``).

    Validates exactly what the fit reads; errors name the JSON path below ``path`` (for instance
    ``measurements[3]``).  Absent optional fields take :class:`Sample`'s defaults.
    """
    prefix = f"{path}." if path else ""
    if not isinstance(record, Mapping):
        raise InputError(path, "must be an object")
    vm = record.get("vm")
    if not isinstance(vm, Mapping):
        raise InputError(f"{prefix}vm", "must be an object")
    values: dict[str, Any] = {"scope": check_scope(record.get("scope"), f"{prefix}scope")}
    for column in COLUMNS:
        value = (vm if column.in_vm else record).get(column.key)
        if value is None:
            if column.default is None:
                raise InputError(f"{prefix}{column.path}", "is required")
            continue
        if column.boolean:
            if type(value) is not bool:
                raise InputError(f"{prefix}{column.path}", "must be a boolean")
        elif type(value) is not int or not column.low <= value <= column.high:
            raise InputError(
                f"{prefix}{column.path}", f"must be an integer between {column.low} and {column.high}"
            )
        values[column.name] = value
    return Sample(**values)


@dataclass(frozen=True, slots=True)
class SampleArrays:
    """Samples of one scope as columns: the fast way in for large sets (see :func:`fit_arrays`)."""

    overhead_bytes: IntArray
    vcpus: IntArray
    guest_memory_bytes: IntArray
    graphics: BoolArray
    io_threads: IntArray
    vfio: BoolArray
    tpm: BoolArray
    sev: BoolArray
    dedicated_cpu: BoolArray
    downward_metrics: BoolArray
    exec_probes: IntArray
    vcpus_online: BoolArray

    @classmethod
    def of(cls, **columns: Any) -> SampleArrays:
        """Columns by :class:`Sample` field name (``scope`` excepted), validated.

        ``overhead_bytes``, ``vcpus`` and ``guest_memory_bytes`` are required; the others default
        like :class:`Sample`'s.  Integer columns must have an integer dtype, boolean ones ``bool``.
        """
        unknown = set(columns) - {column.name for column in COLUMNS}
        if unknown:
            raise TypeError(f"unknown columns: {', '.join(sorted(unknown))}")
        size: int | None = None
        converted: dict[str, Any] = {}
        for column in COLUMNS:
            if column.name not in columns:
                if column.default is None:
                    raise InputError("measurements", f"column {column.path} is required")
                continue
            array = _checked_column(column, columns[column.name], size)
            size = len(array)
            converted[column.name] = array
        for column in COLUMNS:
            if column.name not in converted:
                converted[column.name] = _constant_column(column, size or 0)
        return cls(**converted)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], scope: str | None = None) -> SampleArrays:
        """Columns of ``samples``, each checked to be of ``scope`` when given.

        Values are taken as the dataclass holds them (build samples from untrusted JSON with
        :func:`sample_from_record`); ranges are checked here, with the offending index.
        """
        if scope is not None:
            for index, sample in enumerate(samples):
                if sample.scope != scope:
                    raise InputError(
                        f"measurements[{index}].scope", f"is {sample.scope!r}; this fit is for {scope!r}"
                    )
        count = len(samples)
        columns: dict[str, Any] = {}
        for column in COLUMNS:
            values = np.fromiter(map(operator.attrgetter(column.name), samples), dtype=np.int64, count=count)
            values = _in_range(values, column)
            columns[column.name] = values.astype(np.bool_) if column.boolean else values
        return cls(**columns)

    def __len__(self) -> int:
        return len(self.overhead_bytes)

    def take(self, index: NDArray[np.intp] | slice) -> SampleArrays:
        """The samples at ``index`` (an index array or a slice)."""
        return SampleArrays(**{column.name: getattr(self, column.name)[index] for column in COLUMNS})

    def sample(self, index: int, scope: str) -> Sample:
        """Sample ``index`` as a :class:`Sample` of ``scope``."""
        values: dict[str, Any] = {}
        for column in COLUMNS:
            value = getattr(self, column.name)[index]
            values[column.name] = bool(value) if column.boolean else int(value)
        return Sample(scope, **values)

    def shape_json(self, index: int) -> dict[str, Any]:
        """The VM shape of sample ``index`` as the ingestion record's ``vm`` object."""
        shape: dict[str, Any] = {}
        for column in SHAPE:
            value = getattr(self, column.name)[index]
            shape[column.key] = bool(value) if column.boolean else int(value)
        return shape

    def shapes(self) -> IntArray:
        """One row per sample: its :data:`SHAPE` columns as integers."""
        return np.column_stack([getattr(self, column.name).astype(np.int64) for column in SHAPE])


if [field.name for field in dataclasses.fields(SampleArrays)] != [column.name for column in COLUMNS]:
    raise TypeError("SampleArrays' fields must be Sample's (scope excepted), in the same order")


@dataclass(frozen=True, slots=True)
class ScopedSamples:
    """Samples of one or more scopes, fitted together: every scope's columns one after the other
    (in ``scopes`` order) and, per sample, the position of its scope in ``scopes``."""

    scopes: tuple[str, ...]
    samples: SampleArrays
    scope_index: IntArray

    @classmethod
    def of(cls, by_scope: Mapping[str, SampleArrays]) -> ScopedSamples:
        """The samples of each scope (keys in :data:`SCOPES` order, as :func:`check_scopes` gives)."""
        scopes = tuple(by_scope)
        if len(scopes) == 1:  # no copy
            only = by_scope[scopes[0]]
            return cls(scopes, only, np.zeros(len(only), np.int64))
        parts = [by_scope[scope] for scope in scopes]
        columns = {
            column.name: np.concatenate([getattr(part, column.name) for part in parts]) for column in COLUMNS
        }
        index = np.concatenate([np.full(len(part), i, np.int64) for i, part in enumerate(parts)])
        return cls(scopes, SampleArrays(**columns), index)

    def __len__(self) -> int:
        return len(self.samples)

    def of_scope(self, scope: str) -> BoolArray:
        """Which samples are of ``scope``."""
        mask: BoolArray = self.scope_index == self.scopes.index(scope)
        return mask

    def part(self, scope: str) -> SampleArrays:
        """The samples of ``scope``."""
        if len(self.scopes) == 1:
            return self.samples
        return self.samples.take(np.flatnonzero(self.of_scope(scope)))

    def counts(self) -> dict[str, int]:
        """Samples per scope, in ``scopes`` order."""
        found = np.bincount(self.scope_index, minlength=len(self.scopes))
        return {scope: int(count) for scope, count in zip(self.scopes, found, strict=True)}


def _checked_column(column: Column, values: Any, size: int | None) -> NDArray[Any]:
    """``values`` as ``column``'s array: one-dimensional, ``size`` long (if known), of its type and range."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError("measurements", f"column {column.path} must be one-dimensional")
    if size is not None and len(array) != size:
        raise InputError("measurements", f"column {column.path} has {len(array)} values, not {size}")
    if column.boolean:
        if array.dtype != np.bool_:
            raise InputError("measurements", f"column {column.path} must be boolean")
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError("measurements", f"column {column.path} must hold integers")
    return _in_range(array.astype(np.int64, copy=False), column)


def _constant_column(column: Column, size: int) -> NDArray[Any]:
    """An absent optional column: its default for every sample."""
    default = column.default or 0
    return np.full(size, bool(default)) if column.boolean else np.full(size, default, np.int64)


def _in_range(values: IntArray, column: Column) -> IntArray:
    bad = (values < column.low) | (values > column.high)
    if bad.any():
        index = int(np.argmax(bad))
        raise InputError(
            f"measurements[{index}].{column.path}", f"must be between {column.low} and {column.high}"
        )
    return values


def sample_vmi(sample: Sample, arch: str) -> dict[str, Any]:
    """A VirtualMachineInstance with the sample's shape, for the engine to read.

    ``requests.memory`` is the guest memory (so ``requestPageTables`` and ``perGuestByte`` read
    the same bytes), ``cpu.cores`` the vCPUs; the features are the fields upstream tests.  Nothing
    makes QoS guaranteed (no limits).  IOThreads are spelled as the policy that gives that many
    (the engine ignores them today).
    """
    cpu: dict[str, Any] = {"cores": sample.vcpus}
    if sample.dedicated_cpu:
        cpu["dedicatedCpuPlacement"] = True
    devices: dict[str, Any] = {"autoattachGraphicsDevice": sample.graphics}
    if sample.vfio:
        devices["hostDevices"] = [{"name": "hostdev0", "deviceName": "example.com/device"}]
    if sample.tpm:
        devices["tpm"] = {}
    domain: dict[str, Any] = {
        "cpu": cpu,
        "resources": {"requests": {"memory": str(sample.guest_memory_bytes)}},
        "devices": devices,
    }
    if sample.sev:
        domain["launchSecurity"] = {"sev": {}}
    if sample.io_threads == 1:
        domain["ioThreadsPolicy"] = "shared"
    elif sample.io_threads > 1:
        domain["ioThreadsPolicy"] = "supplementalPool"
        domain["ioThreads"] = {"supplementalPoolThreadCount": sample.io_threads}
    spec: dict[str, Any] = {"architecture": arch, "domain": domain}
    if sample.downward_metrics:
        spec["volumes"] = [{"name": "metrics", "downwardMetrics": {}}]
    probe = {"exec": {"command": ["true"]}}
    if sample.exec_probes >= 1:
        spec["livenessProbe"] = probe
    if sample.exec_probes >= 2:
        spec["readinessProbe"] = copy.deepcopy(probe)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "sample"},
        "spec": spec,
    }
