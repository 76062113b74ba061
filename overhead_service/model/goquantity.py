"""A Go ``resource.Quantity`` *variable*: what virt-controller's renderer keeps in its resource maps.

:class:`~overhead_service.model.quantity.Quantity` is an immutable value, which is all the overhead
needs.  The pod renderer needs one more Go fact: a ``Quantity`` struct holds its value either as an
``int64Amount`` (copied with the struct) or as a *pointer* to an ``inf.Dec``
(``k8s.io/apimachinery/pkg/api/resource/quantity.go``).  A plain struct copy (``a := b``, a map
assignment) therefore shares the decimal, and ``Quantity.Add`` / ``Sub`` change that decimal in
place (``q.ToDec().d.Dec.Add(q.d.Dec, y.AsDec())``): every copy sees the new value.

``ParseQuantity`` keeps a value in the decimal form when its int64 fast path fails: a binary-suffixed
value with a fraction (``1.5Gi``, ``0.5Gi``), a binary integer with too many digits
(``100000Gi``), or a decimal one with more than 18 digits or finer than nano.  That is how
KubeVirt's renderer gives the overhead twice to a memory request and limit that are copies of one
such quantity (``WithMemoryRequests`` copies the limit into the request; ``WithCPUPinning`` copies
the request into the limit; ``WithMemoryOverhead`` then adds the overhead to each).

:class:`QuantityVar` models exactly that: :meth:`QuantityVar.copy` is Go's struct copy (the
decimal is shared, the int64 value and the format are not), :meth:`QuantityVar.add` and
:meth:`QuantityVar.sub` are Go's pointer-receiver methods.  The value arithmetic and the format rules
are :class:`Quantity`'s.
"""

from __future__ import annotations

from overhead_service.model.quantity import Format, Quantity

__all__ = ["QuantityVar"]


class _Dec:
    """An ``inf.Dec`` that one or more Quantity structs point at: ``unscaled × 10**exp``."""

    __slots__ = ("exp", "unscaled")

    def __init__(self, unscaled: int, exp: int) -> None:
        self.unscaled = unscaled
        self.exp = exp


class QuantityVar:
    """One Go ``resource.Quantity`` variable (a struct value, as stored in a ``ResourceList``)."""

    __slots__ = ("_dec", "_exp", "_unscaled", "format")

    _dec: _Dec | None
    _unscaled: int
    _exp: int
    format: Format

    def __init__(self, value: Quantity) -> None:
        """A variable holding a *new* quantity (parsed or constructed: its decimal, if any, is its own)."""
        self.format = value.format
        if value.big:
            self._dec, self._unscaled, self._exp = _Dec(value.unscaled, value.exp), 0, 0
        else:
            self._dec, self._unscaled, self._exp = None, value.unscaled, value.exp

    def copy(self) -> QuantityVar:
        """Go's struct copy: the int64 amount and the format are copied, the decimal is shared."""
        twin = QuantityVar.__new__(QuantityVar)
        twin._dec, twin._unscaled, twin._exp, twin.format = self._dec, self._unscaled, self._exp, self.format
        return twin

    def get(self) -> Quantity:
        """The value now (an immutable snapshot)."""
        dec = self._dec
        if dec is None:
            return Quantity(self._unscaled, self._exp, self.format)
        return Quantity(dec.unscaled, dec.exp, self.format, big=True)

    def shares_value_with(self, other: QuantityVar) -> bool:
        """Whether both point at one decimal, so that changing either changes both."""
        return self._dec is not None and self._dec is other._dec

    def add(self, other: Quantity) -> None:
        """Go's ``q.Add(y)``: in the decimal form the shared decimal itself changes."""
        self._store(self.get().add(other))

    def sub(self, other: Quantity) -> None:
        """Go's ``q.Sub(y)``, with the same sharing as :meth:`add`."""
        self._store(self.get().sub(other))

    def _store(self, result: Quantity) -> None:
        self.format = result.format
        if self._dec is None and not result.big:
            self._unscaled, self._exp = result.unscaled, result.exp
        elif self._dec is None:  # ToDec: an int64 amount that leaves its form gets a decimal of its own
            self._dec = _Dec(result.unscaled, result.exp)
        else:
            self._dec.unscaled, self._dec.exp = result.unscaled, result.exp

    def __str__(self) -> str:
        return str(self.get())

    def __repr__(self) -> str:
        return f"QuantityVar({self.get()!r}{', shared decimal' if self._dec is not None else ''})"
