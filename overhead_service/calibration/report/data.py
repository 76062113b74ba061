"""What a report shows, before any markup: the samples it judges on, the tables' predictions and
:func:`~overhead_service.calibration.evaluation.evaluate_table` of each, and the samples its plots show.

Everything the report needs from the rest of :mod:`overhead_service.calibration` is imported here
and nowhere else in the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.calibration.evaluation import evaluate_table
from overhead_service.calibration.prediction import predict
from overhead_service.calibration.samples import SCOPES, Sample, SampleArrays, sample_from_record
from overhead_service.errors import InputError, NotInTable, TableFormatError
from overhead_service.model import tables

__all__ = [
    "HYPERVISORS",
    "PLOT_SEED",
    "Comparison",
    "Measurements",
    "Plotted",
    "Selection",
    "Series",
    "Upstream",
    "check_target",
    "compare",
    "compile_document",
    "plot_subset",
    "plotted",
    "predictions",
    "select",
    "table_model",
    "upstream",
]

HYPERVISORS: Final = ("kvm", "mshv")
PLOT_SEED: Final = 0
# The fields that decide a prediction: a sample's shape (its scope is the report's, its overhead is
# what is predicted).
_SHAPE_FIELDS: Final = tuple(
    field.name for field in dataclasses.fields(Sample) if field.name not in ("scope", "overhead_bytes")
)

Records = Sequence[Mapping[str, Any]]
Measurements = Sequence[Sample] | SampleArrays | Records


# --- the tables ------------------------------------------------------------------------------------


def check_target(hypervisor: Any, arch: Any, scope: Any) -> tuple[str, ...]:
    """The scopes of (hypervisor, arch, scope), in :data:`SCOPES` order, or :class:`InputError`
    unless they name something a table can model; ``scope`` may be several, each once."""
    if hypervisor not in HYPERVISORS:
        raise InputError("hypervisor", "must be kvm or mshv")
    if not isinstance(arch, str) or not arch or len(arch) > 64:
        raise InputError("arch", "must be an architecture such as amd64")
    if isinstance(scope, str):
        if scope not in SCOPES:
            raise InputError("scope", f"must be one of {', '.join(SCOPES)}")
        return (scope,)
    scopes = scope
    if (
        type(scopes) not in (list, tuple)
        or not scopes
        or any(one not in SCOPES for one in scopes)
        or len(set(scopes)) != len(scopes)
    ):
        raise InputError("scope", f"must be one of {', '.join(SCOPES)}, or several of them, each once")
    return tuple(one for one in SCOPES if one in scopes)


def compile_document(document: Mapping[str, Any], path: str) -> tables.Table:
    """``document`` compiled, or an :class:`InputError` at ``path`` saying why it is not a table."""
    try:
        return tables.compile_table(document)
    except TableFormatError as err:
        raise InputError(path, f"not a valid table: {err}") from None


def table_model(table: tables.Table, hypervisor: str, arch: str) -> tables.Model:
    """The model the report judges, or :class:`NotInTable` when the table has none."""
    model = table.model_for(hypervisor, arch)
    if model is None:
        raise NotInTable("hypervisor", f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
    return model


@dataclass(frozen=True, slots=True)
class Upstream:
    """The table compared with and its model, or (both None) the note that says why there is none."""

    table: tables.Table | None = None
    model: tables.Model | None = None
    note: str | None = None


def upstream(document: Mapping[str, Any] | None, table: tables.Table, hypervisor: str, arch: str) -> Upstream:
    """The upstream table to compare ``table`` with: none asked for, the table itself, or no model."""
    if document is None:
        return Upstream()
    compared = compile_document(document, "upstream")
    if compared.id == table.id:
        return Upstream(note=f"This is the upstream table {compared.id} itself: there is nothing to compare.")
    model = compared.model_for(hypervisor, arch)
    if model is None:
        return Upstream(note=f"The upstream table {compared.id} has no model for {hypervisor} on {arch}.")
    return Upstream(compared, model)


# --- the samples -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """The samples a report judges the table on, and what was left out of the input."""

    samples: SampleArrays
    given: int  # items in the input
    left_out: int  # of another hypervisor, arch or scope
    facts: dict[str, list[str]] | None  # host facts of the records (None: not records)


def select(measurements: Measurements, hypervisor: str, arch: str, scope: str) -> Selection:
    """Samples of (hypervisor, arch, scope) from Samples, columns or ingestion records."""
    if isinstance(measurements, SampleArrays):
        return Selection(measurements, len(measurements), 0, None)
    items = list(measurements)
    if all(isinstance(item, Sample) for item in items):
        chosen = [item for item in items if isinstance(item, Sample) and item.scope == scope]
        return Selection(SampleArrays.from_samples(chosen, scope), len(items), len(items) - len(chosen), None)
    chosen_records: list[Mapping[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InputError(f"measurements[{index}]", "must be a measurement record (an object)")
        if (item.get("hypervisor"), item.get("arch"), item.get("scope")) == (hypervisor, arch, scope):
            chosen_records.append(item)
    converted = [
        sample_from_record(record, path=f"measurements[{index}]")
        for index, record in enumerate(chosen_records)
    ]
    return Selection(
        SampleArrays.from_samples(converted, scope),
        len(items),
        len(items) - len(chosen_records),
        _host_facts(chosen_records),
    )


def _host_facts(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every value each host fact takes in ``records``, sorted, by fact name (sorted)."""
    facts: dict[str, set[str]] = {}
    for record in records:
        host = record.get("host")
        if isinstance(host, Mapping):
            for key, value in host.items():
                if value is not None:
                    facts.setdefault(str(key), set()).add(str(value))
    return {key: sorted(values) for key, values in sorted(facts.items())}


def predictions(model: tables.Model, samples: SampleArrays, scope: str, arch: str) -> NDArray[np.int64]:
    """:func:`prediction.predict` (the engine's own code) for every sample, once per distinct shape."""
    if len(samples) == 0:
        return np.zeros(0, np.int64)
    shapes = np.column_stack([getattr(samples, name).astype(np.int64) for name in _SHAPE_FIELDS])
    _, first, inverse = np.unique(shapes, axis=0, return_index=True, return_inverse=True)
    values = np.array([predict(model, samples.sample(int(index), scope), arch) for index in first], np.int64)
    result: NDArray[np.int64] = values[inverse.reshape(-1)]
    return result


def plot_subset(count: int, cap: int) -> NDArray[np.intp] | None:
    """Indices of a seeded random subset of ``cap`` of ``count`` samples (sorted), or None for all."""
    if count <= cap:
        return None
    picked: NDArray[np.intp] = np.sort(
        np.random.default_rng(PLOT_SEED).choice(count, size=cap, replace=False)
    )
    return picked


# --- the evaluation and the plotted samples --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """:func:`evaluate_table` of the table (first) and of the upstream table (second, if any) on the same
    samples, keyed by table id in order."""

    evaluations: dict[str, dict[str, Any]]

    @property
    def levels(self) -> list[str]:
        """The over-provisioning quantile levels, as the table's evaluation lists them."""
        first = next(iter(self.evaluations.values()))
        return list(first["overProvisioning"]["bytes"])

    @property
    def median_ratio(self) -> float | None:
        """The table's median over-provisioning over the upstream table's (None: not comparable)."""
        if len(self.evaluations) != 2:
            return None
        ours, theirs = (
            evaluation["overProvisioning"]["bytes"].get("p50") for evaluation in self.evaluations.values()
        )
        if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs > 0:
            return float(ours / theirs)
        return None


def compare(
    table: tables.Table, compared: Upstream, samples: SampleArrays, *, hypervisor: str, arch: str, scope: str
) -> Comparison:
    """Each table's :func:`evaluate_table` on ``samples``."""
    evaluations = {table.id: evaluate_table(table, samples, hypervisor=hypervisor, arch=arch, scope=scope)}
    if compared.table is not None:
        evaluations[compared.table.id] = evaluate_table(
            compared.table, samples, hypervisor=hypervisor, arch=arch, scope=scope
        )
    return Comparison(evaluations)


@dataclass(frozen=True, slots=True)
class Series:
    """One table's predictions on the plotted samples."""

    label: str
    predicted_bytes: NDArray[np.int64]
    coverage: float  # evaluate_table()'s, on all samples


@dataclass(frozen=True, slots=True)
class Plotted:
    """The samples the plots show (all of them or a seeded subset) and each table's predictions."""

    measured_bytes: NDArray[np.int64]
    vcpus: NDArray[np.int64]
    guest_memory_bytes: NDArray[np.int64]
    series: list[Series]
    total: int  # samples judged on, of which these are a subset when fewer

    def __len__(self) -> int:
        return len(self.measured_bytes)


def plotted(
    samples: SampleArrays,
    models: Mapping[str, tables.Model],
    comparison: Comparison,
    *,
    scope: str,
    arch: str,
    cap: int,
) -> Plotted:
    """Up to ``cap`` of ``samples`` (:func:`plot_subset`) and the predictions of ``models`` (by table
    id, in the comparison's order) for them."""
    subset = plot_subset(len(samples), cap)
    shown = samples if subset is None else samples.take(subset)
    series = [
        Series(table_id, predictions(model, shown, scope, arch), comparison.evaluations[table_id]["coverage"])
        for table_id, model in models.items()
    ]
    return Plotted(shown.overhead_bytes, shown.vcpus, shown.guest_memory_bytes, series, len(samples))
