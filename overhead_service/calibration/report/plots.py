"""A report's four plots, as PNG images for ``data:`` URIs.

matplotlib is imported only when there is something to plot, with the Agg canvas and without
pyplot (no global figure state); rendering is serialised by a lock because matplotlib is not
thread-safe.  The PNGs carry no timestamp or software tag, so the same samples give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import NDArray

from overhead_service.calibration.report.data import PLOT_SEED, Plotted

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Plot", "draw"]

MIB: Final = float(1 << 20)
GIB: Final = float(1 << 30)
_RENDER_LOCK: Final = threading.Lock()
_COLOURS: Final = ("#1f77b4", "#d95f02")  # the table, the upstream table
_DPI: Final = 96
_RESIDUALS_CAPTION: Final = (
    "Predicted − measured for each sample, each table on its own scale. Below the red line a "
    "sample is under-provisioned; "
)
_SPREAD: Final = " Equal values are spread a little sideways so that overlapping dots show."


@dataclass(frozen=True, slots=True)
class Plot:
    """One figure of the page: its anchor, title and caption, and the PNG in base64."""

    anchor: str
    title: str
    caption: str
    png_base64: str


@dataclass(frozen=True, slots=True)
class _Columns:
    """The plotted samples in the plots' units, and each table's residuals (predicted − measured)."""

    measured_mib: NDArray[np.float64]
    vcpus: NDArray[np.float64]
    guest_gib: NDArray[np.float64]
    jitter: NDArray[np.float64]  # factors near 1 that spread equal values sideways (log axes)
    residuals_mib: list[NDArray[np.float64]]

    @classmethod
    def of(cls, shown: Plotted) -> _Columns:
        measured = shown.measured_bytes.astype(np.float64) / MIB
        jitter = 2.0 ** np.random.default_rng(PLOT_SEED).uniform(-0.1, 0.1, len(shown))
        return cls(
            measured,
            shown.vcpus.astype(np.float64),
            shown.guest_memory_bytes.astype(np.float64) / GIB,
            jitter,
            [(series.predicted_bytes.astype(np.float64) / MIB) - measured for series in shown.series],
        )


def draw(shown: Plotted, scope: str) -> list[Plot]:
    """Measured vs predicted, residuals by vCPUs and by guest RAM, over-provisioning: each table's."""
    from matplotlib import rc_context

    with _RENDER_LOCK, rc_context({"font.size": 9, "axes.titlesize": 10}):
        columns = _Columns.of(shown)
        return [
            _measured_vs_predicted(shown, columns, scope),
            *_residuals(shown, columns),
            _over_provisioning(shown, columns),
        ]


def _text(label: str) -> str:
    """A label as matplotlib shows it literally: a ``$`` would otherwise start mathtext."""
    return label.replace("$", r"\$")


def _png(figure: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _side_by_side(count: int, height: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` axes side by side, one per table."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6 * count + 0.6, height), layout="constrained")
    return figure, list(figure.subplots(1, count, squeeze=False)[0])


def _log2_if_wide(panel: Axes, values: NDArray[np.float64]) -> None:
    """A base-2 log x axis (ticks 0.25, 1, 4 …) when the values span a factor of 8 or more."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    low, high = float(values.min()), float(values.max())
    if low > 0 and high / low >= 8:
        panel.set_xscale("log", base=2)
        panel.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        panel.xaxis.set_minor_formatter(NullFormatter())


def _measured_vs_predicted(shown: Plotted, columns: _Columns, scope: str) -> Plot:
    """Every table on one axes, with y = x."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 5.0), layout="constrained")
    panel = figure.add_subplot()
    measured = columns.measured_mib
    low, high = float(measured.min()), float(measured.max())
    pad = (high - low) * 0.05 or 1.0
    panel.plot([low - pad, high + pad], [low - pad, high + pad], color="#444", lw=1, ls="--", label="y = x")
    panel.set_xlim(low - pad, high + pad)
    for index, series in enumerate(shown.series):
        panel.scatter(
            measured,
            series.predicted_bytes / MIB,
            s=8,
            alpha=0.5,
            color=_COLOURS[index],
            label=_text(series.label),
            linewidths=0,
        )
    panel.set_xlabel(f"measured overhead, scope {scope} (MiB)")
    panel.set_ylabel("predicted overhead (MiB)")
    legend = panel.legend(loc="upper left", fontsize=8, markerscale=2)
    for handle in legend.legend_handles:
        if handle is not None:
            handle.set_alpha(1.0)
    panel.grid(alpha=0.3)
    return Plot(
        "plot-measured-vs-predicted",
        "Measured vs predicted",
        "Each dot is a sample; on or above the dashed line y = x the table covers it. Distance "
        "above the line is over-provisioning.",
        _png(figure),
    )


def _residuals(shown: Plotted, columns: _Columns) -> list[Plot]:
    """Residuals by vCPUs and by guest RAM, one panel per table."""
    out = []
    for anchor, title, values, label, trend in (
        (
            "plot-residuals-vcpus",
            "Residuals by vCPUs",
            columns.vcpus,
            "vCPUs",
            "a trend with vCPUs means the per-vCPU term is off.",
        ),
        (
            "plot-residuals-ram",
            "Residuals by guest RAM",
            columns.guest_gib,
            "guest RAM (GiB)",
            "a trend with guest RAM means the per-GiB term is off.",
        ),
    ):
        placed = values * columns.jitter
        figure, panels = _side_by_side(len(shown.series), 3.8)
        for index, (panel, series) in enumerate(zip(panels, shown.series, strict=True)):
            panel.axhline(0, color="#b3261e", lw=1)
            panel.scatter(
                placed, columns.residuals_mib[index], s=8, alpha=0.5, color=_COLOURS[index], linewidths=0
            )
            _log2_if_wide(panel, values)
            panel.set_title(_text(series.label))
            panel.set_xlabel(label)
            panel.set_ylabel("predicted − measured (MiB)")
            panel.grid(alpha=0.3)
        out.append(Plot(anchor, title, _RESIDUALS_CAPTION + trend + _SPREAD, _png(figure)))
    return out


def _over_provisioning(shown: Plotted, columns: _Columns) -> Plot:
    """The distribution of predicted − measured, one histogram per table."""
    figure, panels = _side_by_side(len(shown.series), 3.6)
    for index, (panel, series) in enumerate(zip(panels, shown.series, strict=True)):
        residuals = columns.residuals_mib[index]
        bins = min(60, max(10, int(math.sqrt(len(residuals)))))
        panel.hist(residuals, bins=bins, color=_COLOURS[index], alpha=0.85)
        panel.axvline(0, color="#b3261e", lw=1)
        panel.set_title(_text(f"{series.label}: coverage {series.coverage * 100:.2f} %"))
        panel.set_xlabel("predicted − measured (MiB)")
        panel.set_ylabel("samples")
        panel.grid(alpha=0.3)
    return Plot(
        "plot-over-provisioning",
        "Coverage and over-provisioning",
        "Distribution of predicted − measured. Left of the red line: under-provisioned; the "
        "coverage in each title is the share at or right of it (on all samples).",
        _png(figure),
    )
