"""The hand-built JSON Patch: the same document as the ``jsonpatch`` library makes of it, the
original untouched, RFC 6901 escapes, missing and null parents added whole."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from overhead_service.model.jsonpatch import apply_edits, pointer


def test_pointer_escapes() -> None:
    assert pointer(("metadata", "annotations", "overhead.kubevirt.io/mode")) == (
        "/metadata/annotations/overhead.kubevirt.io~1mode"
    )
    assert pointer(("a~b", "c/d~1")) == "/a~0b/c~1d~01"


@pytest.mark.parametrize(
    "document",
    [
        {"metadata": {"name": "x"}},
        {"metadata": {"name": "x", "annotations": None}},
        {"metadata": {"annotations": {"a/b": "1", "~": "2"}}},
        {},
    ],
)
def test_edits_and_their_patch_agree(document: dict[str, Any]) -> None:
    original = copy.deepcopy(document)
    edits = [
        (("metadata", "annotations", "overhead.kubevirt.io/mode"), "shadow"),
        (("metadata", "annotations", "x~y"), "z"),
        (("spec", "domain", "memory", "guest"), "1Gi"),
        (("spec", "domain", "resources", "requests", "memory"), "2Gi"),
    ]
    edited, patch = apply_edits(document, edits)
    assert document == original  # copy on write
    assert jsonpatch.apply_patch(document, patch) == edited
    assert edited["metadata"]["annotations"]["overhead.kubevirt.io/mode"] == "shadow"
    assert edited["spec"]["domain"]["resources"]["requests"]["memory"] == "2Gi"
    assert all(op["op"] == "add" for op in patch)


def test_a_non_object_in_the_way_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="/spec"):
        apply_edits({"spec": []}, [(("spec", "domain"), {})])
