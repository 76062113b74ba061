"""The report's markup: the Jinja2 environment over ``templates/``, the filters and tests the templates
use to show document values, and :func:`render_page`.

The environment autoescapes every ``{{ … }}``.  Its ``finalize`` shows None as an em dash and
escapes text with :func:`html.escape` (``&quot;``, ``&#x27;``) rather than MarkupSafe's numeric
references, so pages read as they did before templates; markup from a macro passes unchanged.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

if TYPE_CHECKING:
    from overhead_service.calibration.report.data import Comparison, Plotted, Selection
    from overhead_service.calibration.report.plots import Plot
    from overhead_service.model import tables

__all__ = ["Part", "friendly", "mib", "number", "percent", "percent_value", "plain", "render_page"]

MIB: Final = float(1 << 20)
GIB: Final = float(1 << 30)
EMPTY: Final = "—"  # what the page shows for a missing value


def shown(value: Any) -> Any:
    """What ``{{ value }}`` prints: markup as it is, None as an em dash, anything else escaped text."""
    if hasattr(value, "__html__"):
        return value
    return EMPTY if value is None else Markup(html.escape(str(value), quote=True))


def is_real(value: Any) -> bool:
    """An int or float, and not a bool (JSON numbers as a document holds them)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return is_real(value) and math.isfinite(value)


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def plain(value: Any) -> str:
    """A document value as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return EMPTY
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, default=str)


def number(value: Any, digits: int = 6) -> str:
    """Integers with thousands separators, floats to ``digits`` significant digits, else :func:`plain`."""
    if not is_real(value):
        return plain(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def mib(value: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{value / MIB:,.2f} MiB"


def percent(share: float, digits: int = 3) -> str:
    """A share (0.995) as a percentage (``99.500 %``)."""
    return f"{share * 100:.{digits}f} %"


def percent_value(value: Any) -> str:
    """A value already in percent, with two decimals, or an em dash when it is not a number."""
    return f"{value:.2f} %" if is_real(value) else EMPTY


def friendly(estimate: Any, unit: Any) -> str:
    """An estimate in everyday units: MiB, MiB per vCPU, MiB per GiB of guest RAM."""
    if not is_real(estimate):
        return EMPTY
    if unit == "bytes/guest byte":
        return f"{estimate * GIB / MIB:.4g} MiB/GiB"
    if isinstance(unit, str) and unit.startswith("bytes"):
        return f"{estimate / MIB:.4g} MiB{unit[len('bytes') :]}"
    return number(estimate)


def quantile_levels(groups: Mapping[str, Any]) -> list[str]:
    """Every quantile level (``p50``, ``max`` …) of the groups that are mappings, in first-seen order."""
    levels: list[str] = []
    for values in groups.values():
        if isinstance(values, Mapping):
            levels.extend(level for level in values if level not in levels)
    return levels


_ENVIRONMENT: Final = Environment(
    loader=PackageLoader("overhead_service.calibration.report", "templates"),
    autoescape=True,
    finalize=shown,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENVIRONMENT.filters.update(
    friendly=friendly,
    mib=mib,
    number=number,
    percent=percent,
    percent_value=percent_value,
    plain=plain,
    quantile_levels=quantile_levels,
)
_ENVIRONMENT.tests.update(real=is_real, finite=is_finite, list=is_list)


@dataclass(frozen=True, slots=True)
class Part:
    """What the page shows about one scope: the measurements, the evaluation, the plots."""

    scope: str | None  # None: the page is about one scope (its sections keep their plain ids)
    target: str  # hypervisor/arch/scope
    selection: Selection
    host_facts: Mapping[str, Sequence[str]] | None
    comparison: Comparison | None
    plotted: Plotted | None
    plots: Sequence[Plot]

    @property
    def suffix(self) -> str:
        """What this scope's section ids end with (``-qemu``; nothing for a one-scope page)."""
        return "" if self.scope is None else f"-{self.scope}"

    @property
    def heading(self) -> str:
        """What this scope's section headings end with (``: qemu``; nothing for a one-scope page)."""
        return "" if self.scope is None else f": {self.scope}"


def render_page(
    *,
    table: tables.Table,
    source: str | None,
    parts: Sequence[Part],
    cap: int,
    seed: int,
    upstream_note: str | None,
) -> str:
    """The page: ``report.html.j2`` and the section templates it includes, which read these names
    (the per-scope sections read ``part``)."""
    return _ENVIRONMENT.get_template("report.html.j2").render(
        table=table, source=source, parts=parts, cap=cap, seed=seed, upstream_note=upstream_note
    )
