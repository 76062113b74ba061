"""Calibration: measurement records, fits of new tables from them, activation rules, evaluation.

Pure domain logic over :mod:`overhead_service.model`; the store keeps what it produces and the web
layer and CLI call it.  Nothing here imports Flask, SQL or HTTP libraries.

The rooms:

- :mod:`.records` — the measurement record, defined once as marshmallow schemas of the strict field
  kinds in :mod:`.record_fields` (validation at ingestion; the store's columns and a fit's inputs
  derive from it); :mod:`.values` reads timestamps and storable text for every request;
- :mod:`.samples` — a record reduced to what a fit reads, alone or as numpy columns (of one scope,
  or of several fitted together: :mod:`.scopes` says what each scope's samples measure);
- :mod:`.prediction` — what a model predicts for samples, by the engine's code and vectorised;
- :mod:`.fitting` — :func:`fit` / :func:`fit_arrays`, in steps: :mod:`.design` (which parameters the
  data identify), :mod:`.nnls`, :mod:`.conformal` (margin and held-out coverage), :mod:`.draft`
  (the draft table), :mod:`.summary` (:class:`FitSummary`, what the fit did);
- :mod:`.evaluation` — :func:`evaluate_table`, how a table covers measurements;
- :mod:`.activation` — when a fitted table may be activated, and its id;
- :mod:`.selection` — which stored measurements a request picks, in words;
- :mod:`.report` — the HTML report on a table (imported on its own: it loads matplotlib).

``__all__`` below is the package's contract with the web layer, the CLI and the benchmarks.
"""

from overhead_service.calibration.activation import check_activation, fit_id, wilson_upper
from overhead_service.calibration.conformal import minimum_samples
from overhead_service.calibration.design import MIN_SUPPORT
from overhead_service.calibration.evaluation import evaluate_table
from overhead_service.calibration.fitting import fit, fit_arrays
from overhead_service.calibration.nnls import nnls, nnls_gram
from overhead_service.calibration.prediction import (
    SCOPE_COMPONENTS,
    predict,
    predict_arrays,
    scope_components,
)
from overhead_service.calibration.records import (
    HYPERVISORS,
    MAX_BATCH,
    SCOPES,
    parse_timestamp,
    storable_text,
    validate_batch,
    validate_record,
)
from overhead_service.calibration.samples import (
    Sample,
    SampleArrays,
    ScopedSamples,
    check_scopes,
    sample_from_record,
    sample_vmi,
)
from overhead_service.calibration.selection import describe_selection
from overhead_service.calibration.summary import ComponentFit, FitSummary

__all__ = [
    "HYPERVISORS",
    "MAX_BATCH",
    "MIN_SUPPORT",
    "SCOPES",
    "SCOPE_COMPONENTS",
    "ComponentFit",
    "FitSummary",
    "Sample",
    "SampleArrays",
    "ScopedSamples",
    "check_activation",
    "check_scopes",
    "describe_selection",
    "evaluate_table",
    "fit",
    "fit_arrays",
    "fit_id",
    "minimum_samples",
    "nnls",
    "nnls_gram",
    "parse_timestamp",
    "predict",
    "predict_arrays",
    "sample_from_record",
    "sample_vmi",
    "scope_components",
    "storable_text",
    "validate_batch",
    "validate_record",
    "wilson_upper",
]
