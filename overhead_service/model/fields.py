"""Reading decoded JSON the way Go's ``encoding/json`` fills KubeVirt's structs.

An absent key and ``null`` both give the zero value (an empty object, an empty list, ``None`` for a
pointer or an optional scalar); a value of the wrong type is an
:class:`~overhead_service.errors.InputError` at the field's JSON path. Shared by the overhead model's
VMI reader (:mod:`overhead_service.model.vmi`), the request reader (:mod:`overhead_service.model.service`)
and the pod renderer (:mod:`overhead_service.model.render`).
"""

from __future__ import annotations

from typing import Any, Final

from overhead_service.errors import InputError

__all__ = [
    "EMPTY",
    "read_array",
    "read_bool",
    "read_items",
    "read_object",
    "read_pointer",
    "read_string",
    "read_text",
]

# The zero struct. Shared and never mutated: readers only look into it.
EMPTY: Final[dict[str, Any]] = {}


def read_object(value: Any, path: str) -> dict[str, Any]:
    """A struct value: ``null`` is the zero struct."""
    if value is None:
        return EMPTY
    if type(value) is not dict:
        raise InputError(path, "must be an object or null")
    return value


def read_pointer(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    """A pointer-to-struct field: None when absent or null, else the object."""
    value = parent.get(key)
    if value is None:
        return None
    if type(value) is not dict:
        raise InputError(f"{path}.{key}", "must be an object or null")
    return value


def read_array(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    """A slice field: ``[]`` when absent or null."""
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise InputError(f"{path}.{key}", "must be an array or null")
    return value


def read_items(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    """A slice of structs. A null element still decodes to a zero struct and counts toward the
    slice's length, as in Go."""
    items = read_array(parent, key, path)
    for index, item in enumerate(items):
        if item is not None and type(item) is not dict:
            raise InputError(f"{path}.{key}[{index}]", "must be an object or null")
    return [EMPTY if item is None else item for item in items]


def read_bool(parent: dict[str, Any], key: str, path: str) -> bool | None:
    """An optional boolean field."""
    value = parent.get(key)
    if value is None or type(value) is bool:
        return value
    raise InputError(f"{path}.{key}", "must be a boolean or null")


def read_string(parent: dict[str, Any], key: str, path: str) -> str | None:
    """An optional string field."""
    value = parent.get(key)
    if value is None or type(value) is str:
        return value
    raise InputError(f"{path}.{key}", "must be a string or null")


def read_text(value: Any, path: str, limit: int) -> str | None:
    """An optional string of the request itself (not a KubeVirt struct): bounded, as it may key a
    memo or a lookup."""
    if value is None:
        return None
    if type(value) is not str:
        raise InputError(path, "must be a string")
    if len(value) > limit:
        raise InputError(path, f"must be at most {limit} characters")
    return value
