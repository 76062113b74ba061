"""``QuantityVar``: Go's ``Quantity`` struct copies share an ``inf.Dec`` and ``Add`` changes it in place.

Expected values follow ``k8s.io/apimachinery/pkg/api/resource/quantity.go``: ``ParseQuantity`` keeps
``1.5Gi`` as an ``inf.Dec`` and ``1536Mi`` as an ``int64Amount``; ``Add`` on an int64 amount that
overflows moves the receiver alone to a new decimal (``ToDec``).
"""

from __future__ import annotations

from overhead_service.model.goquantity import QuantityVar
from overhead_service.model.quantity import MAX_INT64, Format, Quantity, parse_quantity

MI = 1 << 20


def test_copies_of_a_decimal_share_every_addition() -> None:
    request = QuantityVar(parse_quantity("1.5Gi"))
    limit = request.copy()
    assert request.shares_value_with(limit)
    overhead = Quantity(300 * MI)
    request.add(overhead)
    limit.add(overhead)
    assert request.get().value() == limit.get().value() == 1536 * MI + 600 * MI
    assert str(request) == str(limit) == "2136Mi"


def test_copies_of_an_int64_amount_are_independent() -> None:
    request = QuantityVar(parse_quantity("1536Mi"))
    limit = request.copy()
    assert not request.shares_value_with(limit)
    request.add(Quantity(300 * MI))
    limit.add(Quantity(300 * MI))
    assert str(request) == str(limit) == "1836Mi"


def test_a_new_variable_from_the_same_value_has_its_own_decimal() -> None:
    parsed = parse_quantity("0.5Gi")  # the parse is cached: one immutable value, two fields
    guest, limit = QuantityVar(parsed), QuantityVar(parsed)
    assert not guest.shares_value_with(limit)
    guest.add(Quantity(1))
    assert limit.get().value() == 512 * MI


def test_the_format_is_per_copy() -> None:
    zero = QuantityVar(Quantity(0, 0, Format.NONE, big=True))
    twin = zero.copy()
    zero.add(Quantity(5, 0, Format.BINARY_SI))  # a zero receiver takes the operand's format
    assert zero.format is Format.BINARY_SI
    assert twin.format is Format.NONE
    assert twin.get().value() == 5  # ... but the decimal is the same


def test_sub_changes_the_shared_decimal_too() -> None:
    first = QuantityVar(parse_quantity("2.5Gi"))
    second = first.copy()
    first.sub(parse_quantity("0.5Gi"))
    assert str(second) == "2Gi"


def test_an_int64_overflow_gives_the_receiver_a_decimal_of_its_own() -> None:
    big = QuantityVar(Quantity(MAX_INT64))
    twin = big.copy()
    big.add(Quantity(1))
    assert big.get().big and big.get().value() != twin.get().value()
    assert twin.get() == Quantity(MAX_INT64) and not big.shares_value_with(twin)
    again = big.copy()
    big.add(Quantity(1))
    assert again.get().exact_ceil() == MAX_INT64 + 2  # from now on, copies share
