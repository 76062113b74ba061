"""A calibration table's report: one self-contained HTML page with its fit and how it does on measurements.

Pure domain code (no Flask, no SQL): :func:`render_report` takes a table document, the measurements
to judge it on and the upstream table to compare with, and returns the page.  ``GET
/v1/tables/{id}/report`` and ``overhead-service report`` both call it, so they give the same bytes
for the same inputs (nothing in the page depends on the clock).

The page holds, in order:

- the table: id, title, kind, parent, and its provenance as recorded;
- its fit report when it has one (fitted tables): coefficients with standard errors, sample
  count, held-out coverage against the target (per fold too), the margin, residual quantiles,
  over-provisioning, warnings and the host facts of the measurements it was fitted on; a built-in
  table without a fit section says so;
- the measurements it is judged on here: how many, which ones, their host facts;
- :func:`overhead_service.calibration.fitting.evaluate` of the table and of the upstream table on *all* those
  samples, side by side (coverage, under-provisioned samples, over-provisioning quantiles);
- four plots, PNG embedded as ``data:`` URIs: measured vs predicted (with y = x), residuals
  (predicted − measured) by vCPUs and by guest RAM, and the distribution of over-provisioning, each
  for the table and the upstream table.  Above :data:`MAX_PLOT_SAMPLES` samples the plots show a
  seeded random subset (the same every time), and the page says so.

Every text that comes from a document or a record is HTML-escaped.  matplotlib is imported only
when there is something to plot, with the Agg canvas and without pyplot (no global figure state);
rendering is serialised by a lock because matplotlib is not thread-safe.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.calibration import fitting
from overhead_service.errors import InputError, NotInTable, TableFormatError
from overhead_service.model import tables

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_TARGET",
    "MAX_PLOT_SAMPLES",
    "PLOT_SEED",
    "UPSTREAM_TABLE",
    "Measurements",
    "default_target",
    "render_report",
]

UPSTREAM_TABLE: Final = "kubevirt-v1.9.0"
DEFAULT_TARGET: Final = ("kvm", "amd64", "qemu")  # hypervisor, arch, scope of a table without a fit
MAX_PLOT_SAMPLES: Final = 20_000
PLOT_SEED: Final = 0
HYPERVISORS: Final = ("kvm", "mshv")
MIB: Final = float(1 << 20)
GIB: Final = float(1 << 30)
_SHAPE_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(fitting.Sample) if f.name not in ("scope", "overhead_bytes")
)
_RENDER_LOCK: Final = threading.Lock()
_COLOURS: Final = ("#1f77b4", "#d95f02")  # the table, the upstream table
_DPI: Final = 96

Records = Sequence[Mapping[str, Any]]
Measurements = Sequence[fitting.Sample] | fitting.SampleArrays | Records


def default_target(document: Mapping[str, Any]) -> tuple[str, str, str]:
    """(hypervisor, arch, scope) a report shows by default: the table's fit's own, else kvm/amd64/qemu.

    A table without a kvm model (``mshv-l1vh-provisional``) defaults to its first model's
    hypervisor instead (and that model's arch, unless it is ``*``).
    """
    fit = document.get("fit")
    if isinstance(fit, Mapping):
        found = (fit.get("hypervisor"), fit.get("arch"), fit.get("scope"))
        if all(isinstance(value, str) and value for value in found):
            return str(found[0]), str(found[1]), str(found[2])
    models = document.get("models")
    if isinstance(models, list):
        entries = [m for m in models if isinstance(m, Mapping)]
        if entries and not any(m.get("hypervisor") == DEFAULT_TARGET[0] for m in entries):
            hypervisor, arch = entries[0].get("hypervisor"), entries[0].get("arch", "*")
            if isinstance(hypervisor, str) and isinstance(arch, str):
                return hypervisor, DEFAULT_TARGET[1] if arch == "*" else arch, DEFAULT_TARGET[2]
    return DEFAULT_TARGET


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Selected:
    """The samples a report judges the table on, and what was left out of the input."""

    arrays: fitting.SampleArrays
    given: int  # items in the input
    left_out: int  # of another hypervisor, arch or scope
    facts: dict[str, list[str]] | None  # host facts of the records (None: not records)


def _check_target(hypervisor: Any, arch: Any, scope: Any) -> None:
    if hypervisor not in HYPERVISORS:
        raise InputError("hypervisor", "must be kvm or mshv")
    if not isinstance(arch, str) or not arch or len(arch) > 64:
        raise InputError("arch", "must be an architecture such as amd64")
    if scope not in fitting.SCOPES:
        raise InputError("scope", f"must be one of {', '.join(fitting.SCOPES)}")


def _select(samples: Measurements, hypervisor: str, arch: str, scope: str) -> _Selected:
    """Samples of (hypervisor, arch, scope) from Samples, columns or ingestion records."""
    if isinstance(samples, fitting.SampleArrays):
        return _Selected(samples, len(samples), 0, None)
    items = list(samples)
    if all(isinstance(item, fitting.Sample) for item in items):
        chosen = [s for s in items if isinstance(s, fitting.Sample) and s.scope == scope]
        arrays = fitting.SampleArrays.from_samples(chosen, scope)
        return _Selected(arrays, len(items), len(items) - len(chosen), None)
    chosen_records: list[Mapping[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InputError(f"measurements[{index}]", "must be a measurement record (an object)")
        if (item.get("hypervisor"), item.get("arch"), item.get("scope")) == (hypervisor, arch, scope):
            chosen_records.append(item)
    converted = [
        fitting.sample_from_record(r, path=f"measurements[{i}]") for i, r in enumerate(chosen_records)
    ]
    facts: dict[str, set[str]] = {}
    for r in chosen_records:
        host = r.get("host")
        if isinstance(host, Mapping):
            for key, value in host.items():
                if value is not None:
                    facts.setdefault(str(key), set()).add(str(value))
    return _Selected(
        fitting.SampleArrays.from_samples(converted, scope),
        len(items),
        len(items) - len(chosen_records),
        {key: sorted(values) for key, values in sorted(facts.items())},
    )


def _compile(document: Mapping[str, Any], path: str) -> tables.Table:
    try:
        return tables.compile_table(document)
    except TableFormatError as err:
        raise InputError(path, f"not a valid table: {err}") from None


def _predictions(model: tables.Model, a: fitting.SampleArrays, scope: str, arch: str) -> NDArray[np.int64]:
    """:func:`fitting.predict` (the engine's own code) for every sample, once per distinct shape."""
    if len(a) == 0:
        return np.zeros(0, np.int64)
    shapes = np.column_stack([getattr(a, name).astype(np.int64) for name in _SHAPE_FIELDS])
    _, first, inverse = np.unique(shapes, axis=0, return_index=True, return_inverse=True)
    values = np.array([fitting.predict(model, a.sample(int(i), scope), arch) for i in first], np.int64)
    result: NDArray[np.int64] = values[inverse.reshape(-1)]
    return result


def _plot_subset(n: int, cap: int) -> NDArray[np.intp] | None:
    """Indices of a seeded random subset of ``cap`` of ``n`` samples (sorted), or None for all."""
    if n <= cap:
        return None
    picked: NDArray[np.intp] = np.sort(np.random.default_rng(PLOT_SEED).choice(n, size=cap, replace=False))
    return picked


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Series:
    """One table's predictions on the plotted samples."""

    label: str
    predicted: NDArray[np.int64]
    coverage: float  # evaluate()'s, on all samples
    colour: str


def render_report(
    table_document: Mapping[str, Any],
    samples: Measurements,
    *,
    hypervisor: str,
    arch: str,
    scope: str,
    upstream_document: Mapping[str, Any] | None,
    source: str | None = None,
    measurement_facts: Mapping[str, Sequence[str]] | None = None,
    max_plot_samples: int = MAX_PLOT_SAMPLES,
) -> str:
    """The HTML report of ``table_document`` judged on ``samples`` of (hypervisor, arch, scope).

    ``samples``: :class:`fitting.Sample` objects (those of another scope are left out),
    :class:`fitting.SampleArrays` (all of ``scope``), or ingestion records (those of another
    hypervisor, arch or scope are left out; each kept one is read by
    :func:`fitting.sample_from_record`).  ``upstream_document``: the table to compare with (the
    caller's choice, usually :data:`UPSTREAM_TABLE`), or None for no comparison.  ``source``
    says in words where the measurements came from; ``measurement_facts`` are their host facts
    (taken from the records when records are given).

    Raises :class:`InputError` for a bad hypervisor, arch or scope, a document that is not a
    table, or :class:`NotInTable` when the table has no model for ``hypervisor`` on ``arch``.
    No samples is not an error: the page says so and shows the table alone.
    """
    _check_target(hypervisor, arch, scope)
    if type(max_plot_samples) is not int or max_plot_samples < 1:
        raise ValueError("max_plot_samples must be a positive integer")
    table = _compile(table_document, "table")
    model = table.model_for(hypervisor, arch)
    if model is None:
        raise NotInTable("hypervisor", f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
    upstream: tables.Table | None = None
    upstream_model: tables.Model | None = None
    upstream_note: str | None = None
    if upstream_document is not None:
        upstream = _compile(upstream_document, "upstream")
        if upstream.id == table.id:
            upstream_note = f"This is the upstream table {upstream.id} itself: there is nothing to compare."
            upstream = None
        else:
            upstream_model = upstream.model_for(hypervisor, arch)
            if upstream_model is None:
                upstream_note = f"The upstream table {upstream.id} has no model for {hypervisor} on {arch}."
                upstream = None
    selected = _select(samples, hypervisor, arch, scope)
    facts = selected.facts if measurement_facts is None else measurement_facts
    a = selected.arrays
    n = len(a)

    parts = [_head(table), _table_section(table), _fit_section(table.document)]
    parts.append(
        _measurements_section(
            selected, facts, source, hypervisor, arch, scope, max_plot_samples, upstream_note
        )
    )
    if n:
        evaluation = fitting.evaluate(table, a, hypervisor=hypervisor, arch=arch, scope=scope)
        upstream_evaluation = (
            fitting.evaluate(upstream, a, hypervisor=hypervisor, arch=arch, scope=scope)
            if upstream is not None
            else None
        )
        parts.append(_evaluation_section(table.id, evaluation, upstream, upstream_evaluation))
        subset = _plot_subset(n, max_plot_samples)
        shown = a if subset is None else a.take(subset)
        series = [
            _Series(table.id, _predictions(model, shown, scope, arch), evaluation["coverage"], _COLOURS[0])
        ]
        if upstream is not None and upstream_model is not None and upstream_evaluation is not None:
            series.append(
                _Series(
                    upstream.id,
                    _predictions(upstream_model, shown, scope, arch),
                    upstream_evaluation["coverage"],
                    _COLOURS[1],
                )
            )
        parts.append(_plots_section(shown, series, n, scope))
    return _page(table, "\n".join(parts))


# --------------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:75rem;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ccc}
h3{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88rem}
.note{background:#f6f8fa;border-left:4px solid #888;padding:.5rem .8rem}
.warn{background:#fff6e5;border-left:4px solid #d08c00;padding:.5rem .8rem}
.ok{color:#146c2e;font-weight:600}.bad{color:#b3261e;font-weight:600}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #e0e0e0}
figcaption{font-size:.9rem;color:#444;margin-top:.3rem}
nav ol{columns:2;font-size:.95rem}
"""


def _e(value: Any) -> str:
    """``value`` as escaped HTML text (None as an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False, default=str)


def _plain(value: Any) -> str:
    """A document value as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return _json(value)


def _number(value: Any, digits: int = 6) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _plain(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _mib(value: Any) -> str:
    """Bytes as MiB with two decimals (and the bytes in a title), or the value as text."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _e(_plain(value))
    return f'<span title="{_e(_number(value))} bytes">{value / MIB:,.2f} MiB</span>'


def _percent(share: float, digits: int = 3) -> str:
    return f"{share * 100:.{digits}f} %"


def _cell(text_html: str, *, key: str | None = None, table_id: str | None = None, value: Any = None) -> str:
    """A numeric cell; ``key``/``value`` become data attributes (the exact figure, for tools and tests)."""
    attributes = ' class="num"'
    if key is not None:
        attributes += f' data-key="{_e(key)}"'
    if table_id is not None:
        attributes += f' data-table="{_e(table_id)}"'
    if value is not None:
        attributes += f' data-value="{_e(_plain(value))}"'
    return f"<td{attributes}>{text_html}</td>"


def _key_values(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table: escaped keys, values already HTML."""
    body = "".join(f"<tr><th>{_e(key)}</th><td>{value}</td></tr>" for key, value in rows)
    return f"<table>{body}</table>"


def _head(table: tables.Table) -> str:
    doc = table.document
    title = doc.get("title")
    return (
        f"<h1>Calibration table report: <code>{_e(table.id)}</code></h1>\n"
        + (f"<p>{_e(title)}</p>\n" if title else "")
        + "<nav><ol>"
        + "".join(
            f'<li><a href="#{anchor}">{name}</a></li>'
            for anchor, name in (
                ("table", "The table and its provenance"),
                ("fit", "Fit report"),
                ("measurements", "Measurements judged on"),
                ("evaluation", "Evaluation, side by side"),
                ("plots", "Plots"),
            )
        )
        + "</ol></nav>"
    )


def _table_section(table: tables.Table) -> str:
    doc = table.document
    builtin = bool(doc.get("builtin", False))
    provenance = doc.get("provenance")
    rows = [
        ("id", f"<code>{_e(table.id)}</code>"),
        ("kind", _e("built-in" if builtin else "stored (fitted or draft)")),
        ("parent", _e(doc.get("parent"))),
        ("description", _e(doc.get("description"))),
        (
            "models",
            _e(
                ", ".join(
                    f"{m.hypervisor}/{m.arch}" + (" (provisional)" if m.provisional else "")
                    for m in table.models
                )
            ),
        ),
    ]
    parts = ['<section id="table">', "<h2>The table and its provenance</h2>", _key_values(rows)]
    parts.append("<h3>Provenance</h3>")
    if isinstance(provenance, Mapping) and provenance:
        parts.append(
            _key_values((str(k), f'<span class="mono">{_e(_plain(v))}</span>') for k, v in provenance.items())
        )
    else:
        parts.append('<p class="note">The table records no provenance.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _fit_section(doc: Mapping[str, Any]) -> str:
    fit = doc.get("fit")
    parts = ['<section id="fit">', "<h2>Fit report</h2>"]
    if not isinstance(fit, Mapping):
        kind = doc.get("provenance", {}).get("kind") if isinstance(doc.get("provenance"), Mapping) else None
        parts.append(
            '<p class="note">This table has no fit section: it was not fitted from measurements here'
            + (f" (provenance kind: {_e(kind)})" if kind else "")
            + ". Its constants are as written in the document; the evaluation below is the only "
            "evidence this page has about it.</p>"
        )
        parts.append("</section>")
        return "\n".join(parts)

    held_out = fit.get("heldOut")
    held: Mapping[str, Any] = held_out if isinstance(held_out, Mapping) else {}
    target = fit.get("target")
    samples = fit.get("samples")
    coverage = held.get("coverage")
    meets = held.get("meetsTarget")
    verdict = ""
    if isinstance(meets, bool):
        verdict = (
            ' <span class="ok">meets the target</span>'
            if meets
            else ' <span class="bad">below the target</span>'
        )
    coverage_html = (
        f'<span data-key="heldOutCoverage" data-value="{_e(coverage)}">{_percent(coverage)}</span>'
        if isinstance(coverage, int | float) and not isinstance(coverage, bool)
        else _e(_plain(coverage))
    )
    target_html = (
        _percent(target, 2)
        if isinstance(target, int | float) and not isinstance(target, bool)
        else _e(target)
    )
    rows = [
        ("hypervisor / arch / scope", _e(f"{fit.get('hypervisor')}/{fit.get('arch')}/{fit.get('scope')}")),
        ("parent", _e(fit.get("parent"))),
        (
            "samples",
            f'<span data-key="samples" data-value="{_e(samples)}">{_e(_number(samples))}</span>',
        ),
        (
            "held-out coverage vs target",
            f"{coverage_html} (covered {_e(_number(held.get('covered')))} of "
            f"{_e(_number(held.get('samples')))}) vs target {target_html}{verdict}",
        ),
        ("margin (in the fixed part)", _mib(fit.get("marginBytes"))),
        ("residual standard deviation σ", _mib(fit.get("sigmaBytes"))),
        ("fixed part", _e(fit.get("fixedPart"))),
        ("folds / seed", _e(f"{fit.get('folds')} / {fit.get('seed')}")),
        ("requested by", _e(fit.get("requestedBy"))),
    ]
    parts.append(_key_values(rows))

    warnings = fit.get("warnings")
    parts.append("<h3>Warnings</h3>")
    if isinstance(warnings, list) and warnings:
        parts.append('<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    else:
        parts.append("<p>None.</p>")

    parts.append("<h3>Coefficients</h3>")
    parts.append(_coefficients(fit.get("components")))

    per_fold = held.get("perFold")
    if isinstance(per_fold, list) and per_fold:
        parts.append("<h3>Held-out coverage per fold</h3>")
        rows_html = "".join(
            "<tr>"
            + _cell(str(index + 1))
            + _cell(_e(_number(f.get("samples"))))
            + _cell(_e(_number(f.get("covered"))))
            + _cell(_percent(f["coverage"]) if isinstance(f.get("coverage"), int | float) else "—")
            + _cell(_mib(f.get("marginBytes")))
            + "</tr>"
            for index, f in enumerate(per_fold)
            if isinstance(f, Mapping)
        )
        parts.append(
            "<table><tr><th>fold</th><th>samples</th><th>covered</th><th>coverage</th>"
            f"<th>margin from the other folds</th></tr>{rows_html}</table>"
        )

    residuals = fit.get("residuals")
    if isinstance(residuals, Mapping) and residuals:
        parts.append("<h3>Residuals (measured − point fit, before the margin)</h3>")
        parts.append(_quantile_table(residuals, {"inSample": "in sample", "heldOut": "held out"}))
    over = fit.get("overProvisioning")
    if isinstance(over, Mapping) and isinstance(over.get("bytes"), Mapping):
        parts.append("<h3>Over-provisioning on held-out folds (predicted − measured)</h3>")
        parts.append(
            _quantile_table(
                {"bytes": over["bytes"], "% of measured": over.get("percentOfMeasured", {})},
                cells={"% of measured": _percent_cell},
            )
        )

    parts.append("<h3>Host facts of the measurements fitted on</h3>")
    parts.append(_facts(fit.get("hostFacts")))
    method = fit.get("method")
    if isinstance(method, Mapping):
        parts.append("<h3>Method</h3>")
        parts.append(_key_values((str(k), _e(_plain(v))) for k, v in method.items()))
    parts.append("</section>")
    return "\n".join(parts)


def _friendly(estimate: Any, unit: Any) -> str:
    """An estimate in everyday units: MiB, MiB per vCPU, MiB per GiB of guest RAM."""
    if isinstance(estimate, bool) or not isinstance(estimate, int | float):
        return "—"
    if unit == "bytes/guest byte":
        return f"{estimate * GIB / MIB:.4g} MiB/GiB"
    if isinstance(unit, str) and unit.startswith("bytes"):
        return f"{estimate / MIB:.4g} MiB{unit[len('bytes') :]}"
    return _e(_number(estimate))


def _coefficients(components: Any) -> str:
    if not isinstance(components, list) or not components:
        return "<p>The fit report lists no components.</p>"
    header = (
        "<tr><th>component</th><th>parameter</th><th>status</th><th>estimate</th><th>standard error</th>"
        "<th>unit</th><th>≈</th><th>table value</th><th>parent value</th><th>why kept</th></tr>"
    )
    rows = []
    for c in components:
        if not isinstance(c, Mapping):
            continue
        name = f"{c.get('component')}.{c.get('parameter')}"
        estimate, error, unit = c.get("estimate"), c.get("standardError"), c.get("unit")
        rows.append(
            "<tr>"
            f"<td><code>{_e(c.get('component'))}</code></td><td>{_e(c.get('parameter'))}</td>"
            f"<td>{_e(c.get('status'))}</td>"
            + _cell(_e(_number(estimate)) if estimate is not None else "—", key="estimate", value=estimate)
            + _cell(f"± {_e(_number(error, 3))}" if error is not None else "—", key=f"se:{name}", value=error)
            + f"<td>{_e(unit)}</td><td>{_friendly(estimate, unit)}</td>"
            f"<td><code>{_e(c.get('value'))}</code></td><td><code>{_e(c.get('parentValue'))}</code></td>"
            f"<td>{_e(c.get('reason')) if c.get('reason') else ''}</td>"
            "</tr>"
        )
    return f"<table>{header}{''.join(rows)}</table>"


def _mib_cell(value: Any) -> str:
    return _cell(_mib(value))


def _percent_cell(value: Any) -> str:
    return _cell(f"{value:.2f} %" if isinstance(value, int | float) else "—")


def _quantile_table(
    groups: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
    cells: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """Quantiles per group: one row per group, one column per level; cells in MiB unless
    ``cells`` names another formatter for the group."""
    levels: list[str] = []
    for values in groups.values():
        if isinstance(values, Mapping):
            levels.extend(k for k in values if k not in levels)
    header = "<tr><th></th>" + "".join(f"<th>{_e(level)}</th>" for level in levels) + "</tr>"
    rows = []
    for group, values in groups.items():
        if not isinstance(values, Mapping):
            continue
        formatter = (cells or {}).get(group, _mib_cell)
        row = "".join(formatter(values.get(level)) for level in levels)
        rows.append(f"<tr><th>{_e((names or {}).get(group, group))}</th>{row}</tr>")
    return f"<table>{header}{''.join(rows)}</table>"


def _facts(facts: Any) -> str:
    if not isinstance(facts, Mapping) or not facts:
        return "<p>None recorded.</p>"
    rows = []
    for key, value in facts.items():
        values = value if isinstance(value, list | tuple) else [value]
        rows.append((str(key), "<br>".join(f'<span class="mono">{_e(_plain(v))}</span>' for v in values)))
    return _key_values(rows)


def _measurements_section(
    selected: _Selected,
    facts: Mapping[str, Sequence[str]] | None,
    source: str | None,
    hypervisor: str,
    arch: str,
    scope: str,
    cap: int,
    upstream_note: str | None,
) -> str:
    n = len(selected.arrays)
    parts = ['<section id="measurements">', "<h2>Measurements judged on</h2>"]
    rows = [
        ("hypervisor / arch / scope", _e(f"{hypervisor}/{arch}/{scope}")),
        ("source", _e(source) if source else "given by the caller"),
        ("samples", f'<span data-key="measurements" data-value="{n}">{n:,}</span>'),
    ]
    if selected.left_out:
        rows.append(
            (
                "left out",
                _e(
                    f"{selected.left_out:,} of the {selected.given:,} given "
                    "(another hypervisor, arch or scope)"
                ),
            )
        )
    parts.append(_key_values(rows))
    if n == 0:
        parts.append(
            '<p class="note" id="no-samples">No measurements of '
            f"{_e(f'{hypervisor}/{arch}/{scope}')} match this selection: there is nothing to evaluate "
            "or plot. Upload measurements (<code>POST /v1/measurements</code>) or change the selection "
            "(hypervisor, arch, scope, runs, since, until).</p>"
        )
    elif n > cap:
        parts.append(
            f'<p class="note" id="sampled">The plots show {cap:,} of the {n:,} samples, drawn at random '
            f"with seed {PLOT_SEED} (the same subset every time for the same measurements); every number "
            "in the evaluation uses all of them.</p>"
        )
    if upstream_note:
        parts.append(f'<p class="note">{_e(upstream_note)}</p>')
    parts.append("<h3>Host facts of these measurements</h3>")
    unknown = "<p>Not known (the caller gave samples without their hosts).</p>"
    parts.append(_facts(facts) if facts is not None else unknown)
    parts.append("</section>")
    return "\n".join(parts)


def _evaluation_section(
    table_id: str,
    evaluation: Mapping[str, Any],
    upstream: tables.Table | None,
    upstream_evaluation: Mapping[str, Any] | None,
) -> str:
    columns: list[tuple[str, Mapping[str, Any]]] = [(table_id, evaluation)]
    if upstream is not None and upstream_evaluation is not None:
        columns.append((upstream.id, upstream_evaluation))
    header = "<tr><th></th>" + "".join(f"<th><code>{_e(tid)}</code></th>" for tid, _ in columns) + "</tr>"

    def row(label: str, render: Any) -> str:
        return f"<tr><th>{_e(label)}</th>{''.join(render(tid, ev) for tid, ev in columns)}</tr>"

    rows = [
        row("samples", lambda t, ev: _cell(f"{ev['n']:,}", key="n", table_id=t, value=ev["n"])),
        row(
            "coverage (predicted ≥ measured)",
            lambda t, ev: _cell(_percent(ev["coverage"]), key="coverage", table_id=t, value=ev["coverage"]),
        ),
        row(
            "under-provisioned samples",
            lambda t, ev: _cell(
                f"{ev['underProvisioned']['count']:,}",
                key="underProvisioned",
                table_id=t,
                value=ev["underProvisioned"]["count"],
            ),
        ),
        row(
            "largest shortfall",
            lambda t, ev: _cell(
                _mib(ev["underProvisioned"]["worst"][0]["shortfallBytes"])
                if ev["underProvisioned"]["worst"]
                else "none",
            ),
        ),
    ]
    levels = list(evaluation["overProvisioning"]["bytes"])
    for level in levels:
        rows.append(
            row(
                f"over-provisioning {level}",
                lambda t, ev, level=level: _cell(
                    _mib(ev["overProvisioning"]["bytes"].get(level)),
                    key=f"over:{level}",
                    table_id=t,
                    value=ev["overProvisioning"]["bytes"].get(level),
                ),
            )
        )
    for level in levels:
        rows.append(
            row(
                f"over-provisioning {level}, % of measured",
                lambda t, ev, level=level: _cell(
                    _over_percent(ev["overProvisioning"]["percentOfMeasured"].get(level)),
                    key=f"overPercent:{level}",
                    table_id=t,
                    value=ev["overProvisioning"]["percentOfMeasured"].get(level),
                ),
            )
        )
    parts = ['<section id="evaluation">', "<h2>Evaluation, side by side</h2>"]
    parts.append(
        "<p>Both tables predict the overhead of every sample above with the engine's own code (no "
        "ratio, no network binding); <em>coverage</em> is the share of samples with predicted ≥ "
        "measured, <em>over-provisioning</em> is predicted − measured (quantiles of observed values).</p>"
    )
    parts.append(f"<table>{header}{''.join(rows)}</table>")
    if len(columns) == 2:
        ours = evaluation["overProvisioning"]["bytes"].get("p50")
        theirs = columns[1][1]["overProvisioning"]["bytes"].get("p50")
        if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs > 0:
            ratio = ours / theirs
            parts.append(
                f"<p>Median over-provisioning of <code>{_e(table_id)}</code> is "
                f'<span data-key="medianRatio" data-value="{ratio!r}">{ratio * 100:.1f} %</span> '
                f"of <code>{_e(columns[1][0])}</code>'s on the same samples.</p>"
            )
    for tid, ev in columns:
        worst = ev["underProvisioned"]["worst"]
        if worst:
            parts.append(f"<h3>Worst under-provisioned samples: <code>{_e(tid)}</code></h3>")
            body = "".join(
                "<tr>"
                + _cell(str(w["index"]))
                + f'<td class="mono">{_e(_json(w["shape"]))}</td>'
                + _cell(_mib(w["measuredBytes"]))
                + _cell(_mib(w["predictedBytes"]))
                + _cell(_mib(w["shortfallBytes"]))
                + "</tr>"
                for w in worst
            )
            parts.append(
                "<table><tr><th>sample</th><th>shape</th><th>measured</th><th>predicted</th>"
                f"<th>shortfall</th></tr>{body}</table>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def _over_percent(value: Any) -> str:
    return f"{value:.2f} %" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _page(table: tables.Table, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Report: {_e(table.id)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def _plots_section(a: fitting.SampleArrays, series: list[_Series], total: int, scope: str) -> str:
    figures = _figures(a, series, scope)
    shown = len(a)
    subset = ""
    if shown < total:
        subset = f" ({shown:,} of {total:,} samples, chosen at random with seed {PLOT_SEED})"
    parts = ['<section id="plots">', "<h2>Plots</h2>"]
    if subset:
        parts.append(f'<p class="note">Every plot shows a subset{_e(subset)}.</p>')
    for anchor, title, caption, png in figures:
        parts.append(
            f'<figure id="{anchor}"><h3>{_e(title)}</h3>'
            f'<img alt="{_e(title)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _text(label: str) -> str:
    """A label as matplotlib shows it literally: a ``$`` would otherwise start mathtext."""
    return label.replace("$", r"\$")


def _figures(a: fitting.SampleArrays, series: list[_Series], scope: str) -> list[tuple[str, str, str, str]]:
    """(anchor, title, caption, base64 PNG) of each plot."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    measured = a.overhead_bytes.astype(np.float64) / MIB
    vcpus = a.vcpus.astype(np.float64)
    guest = a.guest_memory_bytes.astype(np.float64) / GIB
    rng = np.random.default_rng(PLOT_SEED)
    jitter = 2.0 ** rng.uniform(-0.1, 0.1, len(a))  # spreads equal values sideways (log axes)
    residuals = [(s.predicted.astype(np.float64) / MIB) - measured for s in series]
    width = 4.6 * len(series) + 0.6

    def png(figure: Figure) -> str:
        FigureCanvasAgg(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def log2_if_wide(ax: Axes, values: NDArray[np.float64]) -> None:
        """A base-2 log x axis (ticks 0.25, 1, 4 …) when the values span a factor of 8 or more."""
        low, high = float(values.min()), float(values.max())
        if low > 0 and high / low >= 8:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())

    def legend(ax: Axes) -> None:
        shown = ax.legend(loc="upper left", fontsize=8, markerscale=2)
        for handle in shown.legend_handles:
            if handle is not None:
                handle.set_alpha(1.0)

    out: list[tuple[str, str, str, str]] = []
    with _RENDER_LOCK, rc_context({"font.size": 9, "axes.titlesize": 10}):
        # 1. measured vs predicted, every table on one axes, with y = x.
        figure = Figure(figsize=(6.4, 5.0), layout="constrained")
        ax = figure.add_subplot()
        low, high = float(measured.min()), float(measured.max())
        pad = (high - low) * 0.05 or 1.0
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#444", lw=1, ls="--", label="y = x")
        ax.set_xlim(low - pad, high + pad)
        for s in series:
            ax.scatter(
                measured,
                s.predicted / MIB,
                s=8,
                alpha=0.5,
                color=s.colour,
                label=_text(s.label),
                linewidths=0,
            )
        ax.set_xlabel(f"measured overhead, scope {scope} (MiB)")
        ax.set_ylabel("predicted overhead (MiB)")
        legend(ax)
        ax.grid(alpha=0.3)
        out.append(
            (
                "plot-measured-vs-predicted",
                "Measured vs predicted",
                "Each dot is a sample; on or above the dashed line y = x the table covers it. Distance "
                "above the line is over-provisioning.",
                png(figure),
            )
        )

        # 2, 3. residuals by vCPUs and by guest RAM, one panel per table.
        common = (
            "Predicted − measured for each sample, each table on its own scale. Below the red line a "
            "sample is under-provisioned; "
        )
        for anchor, title, xs, label, caption in (
            (
                "plot-residuals-vcpus",
                "Residuals by vCPUs",
                vcpus,
                "vCPUs",
                common + "a trend with vCPUs means the per-vCPU term is off.",
            ),
            (
                "plot-residuals-ram",
                "Residuals by guest RAM",
                guest,
                "guest RAM (GiB)",
                common + "a trend with guest RAM means the per-GiB term is off.",
            ),
        ):
            figure = Figure(figsize=(width, 3.8), layout="constrained")
            axes = figure.subplots(1, len(series), squeeze=False)[0]
            placed = xs * jitter
            for ax, s, r in zip(axes, series, residuals, strict=True):
                ax.axhline(0, color="#b3261e", lw=1)
                ax.scatter(placed, r, s=8, alpha=0.5, color=s.colour, linewidths=0)
                log2_if_wide(ax, xs)
                ax.set_title(_text(s.label))
                ax.set_xlabel(label)
                ax.set_ylabel("predicted − measured (MiB)")
                ax.grid(alpha=0.3)
            spread = " Equal values are spread a little sideways so that overlapping dots show."
            out.append((anchor, title, caption + spread, png(figure)))

        # 4. over-provisioning distribution, one histogram per table.
        figure = Figure(figsize=(width, 3.6), layout="constrained")
        axes = figure.subplots(1, len(series), squeeze=False)[0]
        for ax, s, r in zip(axes, series, residuals, strict=True):
            ax.hist(r, bins=min(60, max(10, int(math.sqrt(len(r))))), color=s.colour, alpha=0.85)
            ax.axvline(0, color="#b3261e", lw=1)
            ax.set_title(_text(f"{s.label}: coverage {s.coverage * 100:.2f} %"))
            ax.set_xlabel("predicted − measured (MiB)")
            ax.set_ylabel("samples")
            ax.grid(alpha=0.3)
        out.append(
            (
                "plot-over-provisioning",
                "Coverage and over-provisioning",
                "Distribution of predicted − measured. Left of the red line: under-provisioned; the "
                "coverage in each title is the share at or right of it (on all samples).",
                png(figure),
            )
        )
    return out
