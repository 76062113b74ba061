"""Calibration tables: the overhead model as data.

A table document (JSON, ``schemaVersion`` 1) holds provenance and one *model* per hypervisor and
architecture (``arch`` ``"*"`` matches any).  A model is an ordered list of named *components*
that make up the pod overhead, and a second list, ``nodeComponents``, for memory the hypervisor
takes outside the pod (mshv deposits, for instance).  Each component is one *term*:

``fixed``              ``quantity``                         a constant
``perVcpu``            ``quantity``                         × upstream's vCPU count (int64 product)
``perGuestByte``       ``coefficient`` (decimal string)     × guest memory bytes, rounded up
``requestPageTables``  ``divisor``                          upstream's page-table estimate from
                                                            ``requests.memory`` (kB-rounded, int64)
``execProbes``         ``perProbe``, ``once``               per exec probe, plus once if any
``reservedOverhead``   (none)                               the VMI's ``reservedOverhead.addedOverhead``

A component may carry ``when``: ``{"feature": NAME}`` (see :data:`FEATURES`),
``{"notFeature": NAME}`` or ``{"arch": "arm64"}`` (exact string, as upstream compares it).
Order matters: Go's quantity format follows the first non-zero term, so the upstream tables list
their terms in upstream's order.  Tables are immutable; ids are unique.

A model may be ``provisional`` (nothing behind its numbers was measured for that hypervisor), and a
fitted one lists the measurement scopes fitted into it so far in ``measuredScopes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import Any, Final

from overhead_service.errors import InvalidQuantity, TableFormatError, UnknownTable
from overhead_service.model.quantity import KILO, Format, Quantity, parse_quantity, wrap_int64
from overhead_service.model.vmi import FEATURE_NAMES, VmiFeatures

__all__ = ["FEATURES", "Component", "Model", "Table", "TableRegistry"]

SCHEMA_VERSION: Final = 1

FEATURES: Final = FEATURE_NAMES

Terms = Callable[[VmiFeatures], tuple[Quantity, ...]]


@dataclass(frozen=True, slots=True)
class Component:
    """One named part of the overhead, compiled for evaluation.

    A ``fixed`` term keeps its ``constant``; the others compute their ``terms`` from the VMI.
    The condition is either an exact ``when_arch`` or a ``when_feature`` (negated by
    ``when_negate``), looked up in :attr:`VmiFeatures.flags`.
    """

    name: str
    constant: Quantity | None
    terms: Terms | None
    when_feature: str | None
    when_negate: bool
    when_arch: str | None
    spec: Mapping[str, Any]
    # Hot-path shortcuts: a constant that is a whole number in Go's int64 form (with its answer
    # entry ready-made), or a term computed as such a number without building a Quantity.
    fast_value: int | None = None
    part: dict[str, Any] | None = None
    int_term: Callable[[VmiFeatures], int] | None = None
    int_format: Format = Format.DECIMAL_SI

    def quantities(self, features: VmiFeatures) -> tuple[Quantity, ...]:
        """The terms as quantities (the general, exact path)."""
        if self.constant is not None:
            return (self.constant,)
        if self.int_term is not None:
            return (Quantity(self.int_term(features), 0, self.int_format),)
        assert self.terms is not None
        return self.terms(features)


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive unconditional whole-number constants, summed once when the table is compiled.

    Evaluating the block is exact only from a non-negative running sum (then Go's format rule
    reduces to "the first positive constant's format, if the sum was zero"); the evaluator falls
    back to the individual ``components`` otherwise.
    """

    total: int
    first_format: Format
    parts: tuple[dict[str, Any], ...]  # ready-made {"name", "bytes"} entries of the answer
    components: tuple[Component, ...]


Step = Block | Component


def _plan(components: tuple[Component, ...]) -> tuple[Step, ...]:
    steps: list[Step] = []
    run: list[Component] = []

    def close() -> None:
        if len(run) > 1:
            values = [c.constant.unscaled for c in run if c.constant is not None]
            first = next(c.constant.format for c in run if c.constant is not None and c.constant.unscaled)
            steps.append(
                Block(
                    sum(values),
                    first,
                    tuple({"name": c.name, "bytes": v} for c, v in zip(run, values, strict=True)),
                    tuple(run),
                )
            )
        else:
            steps.extend(run)
        run.clear()

    for component in components:
        constant = component.constant
        mergeable = (
            constant is not None
            and component.when_feature is None
            and component.when_arch is None
            and constant.exp == 0
            and not constant.big
            and constant.unscaled > 0
        )
        if mergeable:
            run.append(component)
        else:
            close()
            steps.append(component)
    close()
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class Model:
    hypervisor: str
    arch: str
    provisional: bool
    components: tuple[Component, ...]
    node_components: tuple[Component, ...]
    passt_binding: Quantity
    plan: tuple[Step, ...] = ()
    node_plan: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _plan(self.components))
        object.__setattr__(self, "node_plan", _plan(self.node_components))


@dataclass(frozen=True, slots=True)
class Table:
    id: str
    document: Mapping[str, Any]
    models: tuple[Model, ...]

    def model_for(self, hypervisor: str, arch: str) -> Model | None:
        """The model for ``hypervisor`` on ``arch``: an exact arch entry first, then ``"*"``."""
        fallback = None
        for model in self.models:
            if model.hypervisor == hypervisor:
                if model.arch == arch:
                    return model
                if model.arch == "*" and fallback is None:
                    fallback = model
        return fallback

    def summary(self) -> dict[str, Any]:
        doc = self.document
        return {
            "id": self.id,
            "title": doc.get("title", ""),
            "builtin": bool(doc.get("builtin", False)),
            "provenance": doc.get("provenance", {}),
            "models": [
                {"hypervisor": m.hypervisor, "arch": m.arch, "provisional": m.provisional}
                for m in self.models
            ],
        }


def _quantity(spec: Mapping[str, Any], key: str, where: str) -> Quantity:
    value = spec.get(key)
    if not isinstance(value, str):
        raise TableFormatError(f"{where}: '{key}' must be a quantity string")
    try:
        return parse_quantity(value)
    except InvalidQuantity as err:
        raise TableFormatError(f"{where}: '{key}': {err.detail}") from None


def _page_tables(divisor: int) -> Callable[[VmiFeatures], int]:
    def term(f: VmiFeatures) -> int:
        # Upstream: NewScaledQuantity(R.ScaledValue(Kilo), Kilo), then Set(Value() / 512).
        kilo_bytes = wrap_int64(f.memory_request.scaled_value(KILO) * 1000)
        quotient = abs(kilo_bytes) // divisor
        return quotient if kilo_bytes >= 0 else -quotient

    return term


def _per_vcpu(each: Quantity) -> Callable[[VmiFeatures], int]:
    per = each.value()
    return lambda f: wrap_int64(per * f.vcpus)


def _per_guest_byte(coefficient: Fraction) -> Terms:
    def terms(f: VmiFeatures) -> tuple[Quantity, ...]:
        product = coefficient * f.guest_memory.value()
        return (Quantity(-((-product.numerator) // product.denominator), 0, Format.DECIMAL_SI),)

    return terms


def _exec_probes(per_probe: Quantity, once: Quantity) -> Terms:
    def terms(f: VmiFeatures) -> tuple[Quantity, ...]:
        count = f.exec_probes
        return (per_probe,) * count + (once,) if count else ()

    return terms


def _reserved(f: VmiFeatures) -> tuple[Quantity, ...]:
    return (f.reserved_overhead,) if f.reserved_overhead is not None else ()


def _compile_when(when: Any, where: str) -> tuple[str | None, bool, str | None]:
    """``(feature, negate, arch)`` for a component's ``when``."""
    if when is None:
        return None, False, None
    if not isinstance(when, Mapping) or len(when) != 1:
        raise TableFormatError(f"{where}: 'when' must be an object with one of feature, notFeature, arch")
    ((kind, value),) = when.items()
    if kind in ("feature", "notFeature"):
        if value not in FEATURES:
            raise TableFormatError(f"{where}: unknown feature {value!r}; known: {', '.join(FEATURES)}")
        return value, kind == "notFeature", None
    if kind == "arch" and isinstance(value, str):
        return None, False, value
    raise TableFormatError(f"{where}: unsupported condition {kind!r}")


def _compile_component(spec: Any, where: str) -> Component:
    if not isinstance(spec, Mapping):
        raise TableFormatError(f"{where}: a component must be an object")
    name, term = spec.get("name"), spec.get("term")
    if not isinstance(name, str) or not name:
        raise TableFormatError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} ({name})"
    terms: Terms | None = None
    int_term: Callable[[VmiFeatures], int] | None = None
    int_format = Format.DECIMAL_SI
    constant = None
    if term == "fixed":
        constant = _quantity(spec, "quantity", where)
    elif term == "perVcpu":
        each = _quantity(spec, "quantity", where)
        int_term, int_format = _per_vcpu(each), each.format
    elif term == "perGuestByte":
        try:
            coefficient = Fraction(str(spec.get("coefficient")))
        except (ValueError, ZeroDivisionError):
            raise TableFormatError(f"{where}: 'coefficient' must be a decimal string") from None
        terms = _per_guest_byte(coefficient)
    elif term == "requestPageTables":
        divisor = spec.get("divisor")
        if type(divisor) is not int or divisor < 1:
            raise TableFormatError(f"{where}: 'divisor' must be a positive integer")
        int_term = _page_tables(divisor)
    elif term == "execProbes":
        terms = _exec_probes(_quantity(spec, "perProbe", where), _quantity(spec, "once", where))
    elif term == "reservedOverhead":
        terms = _reserved
    else:
        raise TableFormatError(f"{where}: unknown term {term!r}")
    feature, negate, arch = _compile_when(spec.get("when"), where)
    fast = constant.unscaled if constant is not None and constant.exp == 0 and not constant.big else None
    return Component(
        name,
        constant,
        terms,
        feature,
        negate,
        arch,
        dict(spec),
        fast_value=fast,
        part=None if fast is None else {"name": name, "bytes": fast},
        int_term=int_term,
        int_format=int_format,
    )


def _compile_model(spec: Any, where: str) -> Model:
    if not isinstance(spec, Mapping):
        raise TableFormatError(f"{where}: a model must be an object")
    hypervisor, arch = spec.get("hypervisor"), spec.get("arch", "*")
    if hypervisor not in ("kvm", "mshv"):
        raise TableFormatError(f"{where}: 'hypervisor' must be kvm or mshv")
    if not isinstance(arch, str) or not arch:
        raise TableFormatError(f"{where}: 'arch' must be a non-empty string ('*' for any)")
    where = f"{where} ({hypervisor}/{arch})"
    groups = []
    for key in ("components", "nodeComponents"):
        items = spec.get(key, [])
        if not isinstance(items, list):
            raise TableFormatError(f"{where}: '{key}' must be an array")
        groups.append(tuple(_compile_component(c, f"{where} {key}[{i}]") for i, c in enumerate(items)))
    binding = spec.get("networkBinding", {})
    passt = _quantity(binding, "passt", f"{where} networkBinding") if "passt" in binding else Quantity(0)
    return Model(hypervisor, arch, bool(spec.get("provisional", False)), groups[0], groups[1], passt)


def compile_table(document: Mapping[str, Any]) -> Table:
    """Check a table document and compile it for evaluation."""
    table_id = document.get("id")
    if not isinstance(table_id, str) or not table_id:
        raise TableFormatError("a table needs a non-empty string 'id'")
    if type(document.get("schemaVersion")) is not int or document["schemaVersion"] != SCHEMA_VERSION:
        raise TableFormatError(f"{table_id}: unsupported schemaVersion {document.get('schemaVersion')!r}")
    models = document.get("models")
    if not isinstance(models, list) or not models:
        raise TableFormatError(f"{table_id}: 'models' must be a non-empty array")
    compiled = tuple(_compile_model(m, f"{table_id} models[{i}]") for i, m in enumerate(models))
    seen = {(m.hypervisor, m.arch) for m in compiled}
    if len(seen) != len(compiled):
        raise TableFormatError(f"{table_id}: two models for the same hypervisor and arch")
    return Table(table_id, document, compiled)


class TableRegistry:
    """The tables the service knows, by id.  Built-in tables ship with the package."""

    BUILTIN: Final = (
        "kubevirt-v1.9.0",
        "kubevirt-main",
        "mshv-l1vh-provisional",
        "kvm-measured-pvm-2026-11",
        "kvm-libvirt-measured-pvm-2026-12",
    )

    def __init__(self, tables: Iterable[Table] = ()) -> None:
        self._tables: dict[str, Table] = {}
        for table in tables:
            self.add(table)

    @classmethod
    def builtin(cls) -> TableRegistry:
        folder = resources.files("overhead_service") / "data" / "tables"
        tables = []
        for table_id in cls.BUILTIN:
            document = json.loads((folder / f"{table_id}.json").read_text(encoding="utf-8"))
            tables.append(compile_table(document))
        return cls(tables)

    def add(self, table: Table) -> None:
        if table.id in self._tables:
            raise TableFormatError(f"table {table.id!r} exists already; tables are immutable")
        self._tables[table.id] = table

    def get(self, table_id: str) -> Table:
        try:
            return self._tables[table_id]
        except KeyError:
            raise UnknownTable("table", f"no table {table_id!r}; known: {', '.join(self._tables)}") from None

    def __contains__(self, table_id: object) -> bool:
        return table_id in self._tables

    def ids(self) -> list[str]:
        return list(self._tables)

    def summaries(self) -> list[dict[str, Any]]:
        return [table.summary() for table in self._tables.values()]

    def document(self, table_id: str) -> dict[str, Any]:
        return dict(self.get(table_id).document)
