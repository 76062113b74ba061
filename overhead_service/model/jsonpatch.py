"""RFC 6902 JSON Patch operations for a few edits of a decoded JSON document, built by hand.

The admission webhook changes at most a handful of known fields (annotations, memory quantities),
so its patch is a short list of ``add`` operations computed alongside the edited copy; no diff of
the whole object is needed. ``add`` replaces an existing object member (RFC 6902 §4.1), and a
missing (or ``null``) parent object is added whole, with the rest of the path inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["apply_edits", "pointer"]


def pointer(path: Iterable[str]) -> str:
    """The RFC 6901 JSON Pointer of ``path`` (``~`` and ``/`` escaped)."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in path)


def _nested(keys: tuple[str, ...], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def apply_edits(
    document: dict[str, Any], edits: Iterable[tuple[tuple[str, ...], Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``document`` with each ``(path, value)`` set (a new copy along the paths; the original is
    untouched), and the JSON Patch that makes the same change.

    Every step of a path must be an object member: lists are never edited. A non-object in the
    way is a programming error (``TypeError``); callers read the fields they edit first.
    """
    root = dict(document)
    copied = {id(root)}
    operations: list[dict[str, Any]] = []
    for path, value in edits:
        node = root
        for index, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                node[key] = _nested(path[index + 1 :], value)
                operations.append({"op": "add", "path": pointer(path[: index + 1]), "value": node[key]})
                break
            if type(child) is not dict:
                raise TypeError(f"{pointer(path[: index + 1])} is not an object")
            if id(child) not in copied:
                child = dict(child)
                copied.add(id(child))
                node[key] = child
            node = child
        else:
            node[path[-1]] = value
            operations.append({"op": "add", "path": pointer(path), "value": value})
    return root, operations
