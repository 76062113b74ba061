"""Reading decoded JSON as Go fills structs: zero values for absent and null, paths on errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from overhead_service.errors import InputError
from overhead_service.model.fields import (
    EMPTY,
    read_array,
    read_bool,
    read_items,
    read_object,
    read_pointer,
    read_string,
    read_text,
)

Reader = Callable[[dict[str, Any], str, str], Any]


@pytest.mark.parametrize(
    ("reader", "zero"),
    [(read_pointer, None), (read_array, []), (read_items, []), (read_bool, None), (read_string, None)],
)
@pytest.mark.parametrize("parent", [{}, {"k": None}], ids=["absent", "null"])
def test_absent_and_null_give_the_zero_value(reader: Reader, zero: Any, parent: dict[str, Any]) -> None:
    assert reader(parent, "k", "a.b") == zero


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        (read_pointer, [], "must be an object or null"),
        (read_pointer, "x", "must be an object or null"),
        (read_array, {}, "must be an array or null"),
        (read_items, "x", "must be an array or null"),
        (read_bool, 0, "must be a boolean or null"),  # 0 is not false in Go
        (read_bool, "true", "must be a boolean or null"),
        (read_string, 1, "must be a string or null"),
    ],
)
def test_a_wrong_type_names_the_field(reader: Reader, value: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        reader({"k": value}, "k", "a.b")
    assert (caught.value.path, caught.value.detail) == ("a.b.k", message)


def test_values_of_the_right_type_come_back_as_they_are() -> None:
    parent = {"p": {"x": 1}, "a": [1, "2"], "b": False, "s": ""}
    assert read_pointer(parent, "p", "") is parent["p"]
    assert read_array(parent, "a", "") is parent["a"]
    assert read_bool(parent, "b", "") is False
    assert read_string(parent, "s", "") == ""


def test_read_object() -> None:
    assert read_object(None, "a") is EMPTY
    assert read_object({"x": 1}, "a") == {"x": 1}
    with pytest.raises(InputError) as caught:
        read_object([], "a.b")
    assert caught.value.path == "a.b"


def test_null_items_are_zero_structs_and_count() -> None:
    assert read_items({"k": [None, {"n": 1}]}, "k", "a") == [{}, {"n": 1}]
    with pytest.raises(InputError) as caught:
        read_items({"k": [{}, 3]}, "k", "a")
    assert (caught.value.path, caught.value.detail) == ("a.k[1]", "must be an object or null")


def test_read_text_is_an_optional_bounded_string() -> None:
    assert read_text(None, "a", 3) is None
    assert read_text("abc", "a", 3) == "abc"
    for value, message in ((1, "must be a string"), ("abcd", "must be at most 3 characters")):
        with pytest.raises(InputError) as caught:
            read_text(value, "a.b", 3)
        assert (caught.value.path, caught.value.detail) == ("a.b", message)
