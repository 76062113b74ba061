"""The repository stands on its own: nothing tracked cites material outside it."""

from __future__ import annotations

import re
import subprocess

from tests.support import ROOT

# Research notes kept next to a checkout are not part of it: cite the primary sources instead.
# The pattern is assembled from parts so that this file does not match it itself.
_SHARED, _NOTES, _SECTION = "shared", "notes", "\u00a7"
_OUTSIDE = re.compile(
    rf"\.\./{_SHARED}|{_SHARED}/({_NOTES}|vectors)|{_NOTES} {_SECTION}|(mshv|algorithm) {_NOTES}"
    rf"|{_SHARED} {_NOTES}"
)


def _tracked_text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if not name.endswith((".jsonl", ".png"))]


def test_no_tracked_file_cites_material_outside_the_repository() -> None:
    offenders = []
    for name in _tracked_text_files():
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [
            f"{name}:{number}" for number, line in enumerate(text.splitlines(), 1) if _OUTSIDE.search(line)
        ]
    assert offenders == []


def test_the_check_recognises_citations_of_outside_notes() -> None:
    assert _OUTSIDE.search(f"see ../{_SHARED}/{_NOTES}/kvm.md")
    assert _OUTSIDE.search(f"(mshv {_NOTES} {_SECTION}1.2)")
    assert not _OUTSIDE.search("drivers/hv/mshv_regions.c, kubevirt/kubevirt #17815")
