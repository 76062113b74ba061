"""The committed reports of the measured tables show what ``overhead-service report`` writes today.

They were written by::

    overhead-service report kvm-measured-pvm-2026-11 \\
        --records overhead_service/data/measurements/kvm-amd64-pvm-2026-11-26.jsonl \\
        --out docs/reports/kvm-measured-pvm-2026-11.html
    overhead-service report kvm-libvirt-measured-pvm-2026-12 \\
        --records overhead_service/data/measurements/kvm-amd64-pvm-libvirt-2026-12-04.jsonl \\
        --out docs/reports/kvm-libvirt-measured-pvm-2026-12.html

This test runs that command again and compares what the two pages *show*: the text of every table
cell, every heading and paragraph, every number and every ``data-``/``title`` attribute.  Markup and
whitespace between tags may differ, and so may the PNG bytes (they depend on matplotlib and
FreeType versions); the number of plots may not.  When it fails after a deliberate change to the
fit, the table or the page, run the command above and commit the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from overhead_service import cli
from tests.support import ROOT

MEASUREMENTS = ROOT / "overhead_service" / "data" / "measurements"
# table -> its raw records, and how many plots its report has (four per scope)
REPORTS = {
    "kvm-measured-pvm-2026-11": (MEASUREMENTS / "kvm-amd64-pvm-2026-11-26.jsonl", 4),
    "kvm-libvirt-measured-pvm-2026-12": (MEASUREMENTS / "kvm-amd64-pvm-libvirt-2026-12-04.jsonl", 12),
}
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
SHOWN_ATTRIBUTES = ("id", "title", "alt", "data-key", "data-table", "data-value")


@dataclass
class Shown:
    """What a page shows, in document order."""

    texts: list[str] = field(default_factory=list)  # every text run, whitespace collapsed
    cells: list[list[list[str]]] = field(default_factory=list)  # per table, per row, per cell
    attributes: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, name, value)
    images: int = 0

    @property
    def numbers(self) -> list[str]:
        return [number for text in self.texts for number in NUMBER.findall(text)]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shown = Shown()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.shown.cells.append([])
        elif tag == "tr":
            self.shown.cells[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.shown.images += 1
        for name, value in attrs:
            if name in SHOWN_ATTRIBUTES:
                self.shown.attributes.append((tag, name, value or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.shown.cells[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if text:
            self.shown.texts.append(text)
        if self._cell is not None:
            self._cell.append(data)


def shown(page: str) -> Shown:
    reader = _Reader()
    reader.feed(page)
    reader.close()
    return reader.shown


@pytest.mark.parametrize("table", list(REPORTS))
def test_the_committed_report_shows_what_the_command_writes(table: str, tmp_path: Path) -> None:
    records, plots = REPORTS[table]
    environment = {"OVERHEAD_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    runner = CliRunner()
    assert runner.invoke(cli.main, ["init-db"], env=environment).exit_code == 0
    out = tmp_path / "report.html"
    arguments = ["report", table, "--records", str(records), "--out", str(out)]
    result = runner.invoke(cli.main, arguments, env=environment)
    assert result.exit_code == 0, result.output

    committed = ROOT / "docs" / "reports" / f"{table}.html"
    written, committed_shown = (
        shown(out.read_text(encoding="utf-8")),
        shown(committed.read_text(encoding="utf-8")),
    )
    assert written.cells == committed_shown.cells
    assert written.texts == committed_shown.texts
    assert written.numbers == committed_shown.numbers
    assert written.attributes == committed_shown.attributes
    assert written.images == committed_shown.images == plots
    # Not vacuous: the evaluation's figures are among them.
    assert sum(len(row) for table in written.cells for row in table) > 150
    assert ("td", "data-key", "coverage") in written.attributes
