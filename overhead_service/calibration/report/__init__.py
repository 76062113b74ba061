"""A calibration table's report: one self-contained HTML page with its fit and how it does on measurements.

Pure domain code (no Flask, no SQL): :func:`render_report` takes a table document, the measurements
to judge it on and the upstream table to compare with, and returns the page.  ``GET
/v1/tables/{id}/report`` and ``overhead-service report`` both call it, so they give the same bytes
for the same inputs (nothing in the page depends on the clock).

The page holds, in order:

- the table: id, title, kind, parent, and its provenance as recorded;
- its fit summary when it has one (fitted tables): coefficients with standard errors, sample
  count, held-out coverage against the target (per fold too), the margin, residual quantiles,
  over-provisioning, warnings and the host facts of the measurements it was fitted on; a built-in
  table without a fit section says so;
- the measurements it is judged on here: how many, which ones, their host facts;
- :func:`overhead_service.calibration.evaluation.evaluate_table` of the table and of the upstream
  table on *all* those samples, side by side (coverage, under-provisioned samples,
  over-provisioning quantiles);
- four plots, PNG embedded as ``data:`` URIs: measured vs predicted (with y = x), residuals
  (predicted − measured) by vCPUs and by guest RAM, and the distribution of over-provisioning, each
  for the table and the upstream table.  Above :data:`MAX_PLOT_SAMPLES` samples the plots show a
  seeded random subset (the same every time), and the page says so.

A report on several scopes (a table fitted on several at once) has a summary by scope, then the
measurements, the evaluation and the plots of each scope in turn.

The work is split three ways: :mod:`.data` chooses the samples and computes the predictions and
evaluations, :mod:`.plots` draws the figures, and :mod:`.page` renders the Jinja2 templates in
``templates/``, which escape every text that comes from a document or a record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from overhead_service.calibration.report import data, page, plots
from overhead_service.calibration.report.data import PLOT_SEED, Measurements

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


Facts = Mapping[str, Sequence[str]]


def default_target(document: Mapping[str, Any]) -> tuple[str, str, str | tuple[str, ...]]:
    """(hypervisor, arch, scope) a report shows by default: the table's fit's own, else kvm/amd64/qemu.

    The scope of a fit of several scopes is their tuple.  A table without a kvm model
    (``mshv-l1vh-provisional``) defaults to its first model's hypervisor instead (and that model's
    arch, unless it is ``*``).
    """
    fit = document.get("fit")
    if isinstance(fit, Mapping):
        found = (fit.get("hypervisor"), fit.get("arch"))
        scope = fit.get("scope")
        scopes = (
            tuple(scope)
            if isinstance(scope, list) and scope and all(isinstance(s, str) for s in scope)
            else scope
        )
        if all(isinstance(value, str) and value for value in found) and (
            isinstance(scopes, tuple) or (isinstance(scopes, str) and scopes)
        ):
            return str(found[0]), str(found[1]), scopes
    models = document.get("models")
    if isinstance(models, list):
        entries = [model for model in models if isinstance(model, Mapping)]
        if entries and not any(model.get("hypervisor") == DEFAULT_TARGET[0] for model in entries):
            hypervisor, arch = entries[0].get("hypervisor"), entries[0].get("arch", "*")
            if isinstance(hypervisor, str) and isinstance(arch, str):
                return hypervisor, DEFAULT_TARGET[1] if arch == "*" else arch, DEFAULT_TARGET[2]
    return DEFAULT_TARGET


def render_report(
    table_document: Mapping[str, Any],
    samples: Measurements | Mapping[str, Measurements],
    *,
    hypervisor: str,
    arch: str,
    scope: str | Sequence[str],
    upstream_document: Mapping[str, Any] | None,
    source: str | None = None,
    measurement_facts: Facts | Mapping[str, Facts] | None = None,
    max_plot_samples: int = MAX_PLOT_SAMPLES,
) -> str:
    """The HTML report of ``table_document`` judged on ``samples`` of (hypervisor, arch, scope).

    ``samples``: :class:`~overhead_service.calibration.samples.Sample` objects (those of another
    scope are left out), :class:`~overhead_service.calibration.samples.SampleArrays` (all of
    ``scope``), or ingestion records (those of another hypervisor, arch or scope are left out;
    each kept one is read by :func:`~overhead_service.calibration.samples.sample_from_record`).
    ``upstream_document``: the table to compare with (the caller's choice, usually
    :data:`UPSTREAM_TABLE`), or None for no comparison.  ``source``
    says in words where the measurements came from; ``measurement_facts`` are their host facts
    (taken from the records when records are given).

    ``scope`` may be several scopes: then ``samples`` is either one of the above for every scope
    (records or Samples, each scope taking its own) or a mapping of each scope to its samples, and
    ``measurement_facts`` a mapping of each scope to its facts.

    Raises :class:`InputError` for a bad hypervisor, arch or scope, a document that is not a
    table, or :class:`NotInTable` when the table has no model for ``hypervisor`` on ``arch``.
    No samples is not an error: the page says so and shows the table alone.
    """
    scopes = data.check_target(hypervisor, arch, scope)
    if type(max_plot_samples) is not int or max_plot_samples < 1:
        raise ValueError("max_plot_samples must be a positive integer")
    table = data.compile_document(table_document, "table")
    model = data.table_model(table, hypervisor, arch)
    upstream = data.upstream(upstream_document, table, hypervisor, arch)
    single = isinstance(scope, str)
    parts = []
    for one in scopes:
        given = samples[one] if isinstance(samples, Mapping) else samples
        facts = measurement_facts
        if not single and measurement_facts is not None:
            facts = measurement_facts.get(one)  # type: ignore[assignment]
        parts.append(
            _part(table, model, upstream, given, hypervisor, arch, one, single, facts, max_plot_samples)
        )
    return page.render_page(
        table=table,
        source=source,
        parts=parts,
        cap=max_plot_samples,
        seed=PLOT_SEED,
        upstream_note=upstream.note,
    )


def _part(
    table: Any,
    model: Any,
    upstream: data.Upstream,
    samples: Measurements,
    hypervisor: str,
    arch: str,
    scope: str,
    single: bool,
    facts: Any,
    cap: int,
) -> page.Part:
    """One scope's measurements, evaluation and plots."""
    selection = data.select(samples, hypervisor, arch, scope)
    comparison = plotted = None
    figures: list[plots.Plot] = []
    if len(selection.samples):
        comparison = data.compare(
            table, upstream, selection.samples, hypervisor=hypervisor, arch=arch, scope=scope
        )
        models = {table.id: model}
        if upstream.table is not None and upstream.model is not None:
            models[upstream.table.id] = upstream.model
        plotted = data.plotted(selection.samples, models, comparison, scope=scope, arch=arch, cap=cap)
        figures = plots.draw(plotted, scope)
    return page.Part(
        scope=None if single else scope,
        target=f"{hypervisor}/{arch}/{scope}",
        selection=selection,
        host_facts=selection.facts if facts is None else facts,
        comparison=comparison,
        plotted=plotted,
        plots=figures,
    )
