"""How well a table covers measurements: :func:`evaluate_table`.

Coverage (the share of samples the table predicts at least their measured overhead), the worst
under-provisioned shapes and the over-provisioning distribution, from the vectorised predictions
(:func:`~overhead_service.calibration.prediction.predict_arrays`).  A fit's summary holds one of
these for its draft table (in-sample), and reuses :func:`over_provisioning` and :func:`quantiles`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from overhead_service.calibration.prediction import predict_arrays, table_model
from overhead_service.calibration.samples import FloatArray, Sample, SampleArrays, check_scope
from overhead_service.errors import NotEnoughData
from overhead_service.model import tables

__all__ = [
    "OVER_LEVELS",
    "RESIDUAL_LEVELS",
    "WORST",
    "evaluate_table",
    "over_provisioning",
    "quantiles",
]

WORST: Final = 5  # under-provisioned samples listed by evaluate_table()
RESIDUAL_LEVELS: Final = (
    ("min", 0.0),
    ("p1", 0.01),
    ("p5", 0.05),
    ("p50", 0.5),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.5", 0.995),
    ("max", 1.0),
)
OVER_LEVELS: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def quantiles(values: FloatArray, levels: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Inverted-CDF quantiles (observed values) of ``values``."""
    if len(values) == 0:
        return {}
    points = np.quantile(values, [q for _, q in levels], method="inverted_cdf")
    return {name: float(v) for (name, _), v in zip(levels, points, strict=True)}


def over_provisioning(over: FloatArray, measured: FloatArray) -> dict[str, Any]:
    """Quantiles of predicted − measured, in whole bytes (rounded up) and in % of measured."""
    positive = measured > 0
    in_bytes = quantiles(over, OVER_LEVELS)
    in_percent = quantiles(over[positive] / measured[positive] * 100.0, OVER_LEVELS)
    return {
        "bytes": {level: math.ceil(value) for level, value in in_bytes.items()},
        "percentOfMeasured": {level: round(value, 4) for level, value in in_percent.items()},
    }


def _model(
    model_or_document: tables.Model | tables.Table | Mapping[str, Any], hypervisor: str, arch: str
) -> tuple[tables.Model, str | None]:
    """The model to evaluate, and the id of its table (None when given a bare model)."""
    if isinstance(model_or_document, tables.Model):
        return model_or_document, None
    table, model = table_model(model_or_document, hypervisor, arch, path="table")
    return model, table.id


def evaluate_table(
    model_or_document: tables.Model | tables.Table | Mapping[str, Any],
    samples: Sequence[Sample] | SampleArrays,
    *,
    hypervisor: str,
    arch: str,
    scope: str,
) -> dict[str, Any]:
    """How a table covers measurements of ``scope``: coverage, the under-provisioned, the over-provisioning.

    ``coverage`` is the share of samples with predicted >= measured; ``underProvisioned`` counts
    the others and lists the worst few (shape, shortfall); ``overProvisioning`` gives quantiles
    (observed values) of predicted − measured over all samples, in bytes and in % of measured.
    """
    check_scope(scope)
    model, table_id = _model(model_or_document, hypervisor, arch)
    columns = samples if isinstance(samples, SampleArrays) else SampleArrays.from_samples(samples, scope)
    count = len(columns)
    if count == 0:
        raise NotEnoughData("measurements", "no measurements match: nothing to evaluate")
    predicted = predict_arrays(model, scope, columns, arch)
    measured = columns.overhead_bytes
    difference = predicted - measured
    under = np.flatnonzero(difference < 0)
    worst = under[np.argsort(difference[under], kind="stable")[:WORST]]
    return {
        "table": table_id,
        "hypervisor": hypervisor,
        "arch": arch,
        "scope": scope,
        "n": count,
        "coverage": float(np.count_nonzero(difference >= 0)) / count,
        "underProvisioned": {
            "count": len(under),
            "worst": [
                {
                    "index": int(i),
                    "shape": columns.shape_json(int(i)),
                    "measuredBytes": int(measured[i]),
                    "predictedBytes": int(predicted[i]),
                    "shortfallBytes": int(-difference[i]),
                }
                for i in worst
            ],
        },
        "overProvisioning": over_provisioning(difference.astype(np.float64), measured.astype(np.float64)),
    }
