"""Tests for overhead_service.model.tables: the built-in registry and the table format compiler.

Numbers in the custom-table tests are worked out by hand from the term definitions in the
module docstring (``perGuestByte`` rounds the product up, ``requestPageTables`` is upstream's
``ceil(R/1000)*1000/512``), and from Go's ``Quantity.Add`` format rule.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import overhead_service
from overhead_service.errors import InputError, TableFormatError, UnknownTable
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import FEATURES, Table, TableRegistry, compile_table

Mi = 1 << 20
Gi = 1 << 30
DATA = Path(overhead_service.__file__).parent / "data" / "tables"
UPSTREAM_COMPONENTS = [
    "pagetables",
    "virtLauncherMonitor",
    "virtLauncher",
    "virtlogd",
    "virtqemud",
    "qemu",
    "vcpus",
    "ioThread",
    "video",
    "pflash",
    "vfio",
    "downwardMetrics",
    "probes",
    "sev",
    "tpm",
    "dedicatedCpu",
    "reservedOverhead",
]


def _file(table_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / f"{table_id}.json").read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def registry() -> TableRegistry:
    return TableRegistry.builtin()


# --------------------------------------------------------------------------------------------------
# Built-in registry
# --------------------------------------------------------------------------------------------------


def test_builtin_ids(registry: TableRegistry) -> None:
    assert registry.ids() == [
        "kubevirt-v1.9.0",
        "kubevirt-main",
        "mshv-l1vh-provisional",
        "kvm-measured-pvm-2026-11",
        "kvm-libvirt-measured-pvm-2026-12",
    ]
    assert "kubevirt-main" in registry
    assert "kubevirt-v1.9.0" in registry
    assert "kubevirt-v1.8.0" not in registry
    assert 5 not in registry


@pytest.mark.parametrize(
    ("table_id", "ref", "commit"),
    [("kubevirt-v1.9.0", "v1.9.0", "79d34c1762"), ("kubevirt-main", "main", "d923fdb815")],
)
def test_builtin_summary(registry: TableRegistry, table_id: str, ref: str, commit: str) -> None:
    summary = next(s for s in registry.summaries() if s["id"] == table_id)
    assert summary == registry.get(table_id).summary()
    assert summary["builtin"] is True
    assert summary["title"] == _file(table_id)["title"]
    provenance = summary["provenance"]
    assert provenance == _file(table_id)["provenance"]
    assert (provenance["kind"], provenance["repository"], provenance["ref"], provenance["commit"]) == (
        "upstream",
        "kubevirt/kubevirt",
        ref,
        commit,
    )
    assert summary["models"] == [
        {"hypervisor": "kvm", "arch": "*", "provisional": False},
        {"hypervisor": "mshv", "arch": "*", "provisional": True},
    ]


@pytest.mark.parametrize("table_id", ["kubevirt-v1.9.0", "kubevirt-main"])
def test_builtin_document(registry: TableRegistry, table_id: str) -> None:
    document = registry.document(table_id)
    assert document == _file(table_id)
    document["id"] = "changed"  # a copy: the registry keeps its own
    assert registry.document(table_id)["id"] == table_id


@pytest.mark.parametrize("table_id", ["kubevirt-v1.9.0", "kubevirt-main"])
@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
def test_builtin_models(registry: TableRegistry, table_id: str, hypervisor: str) -> None:
    table = registry.get(table_id)
    assert isinstance(table, Table)
    for arch in ("amd64", "arm64", "s390x", "ppc64le", ""):
        model = table.model_for(hypervisor, arch)
        assert model is not None
        assert (model.hypervisor, model.arch, model.provisional) == (hypervisor, "*", hypervisor == "mshv")
        assert [c.name for c in model.components] == UPSTREAM_COMPONENTS
        assert model.node_components == ()
    assert table.model_for("xen", "amd64") is None


@pytest.mark.parametrize(
    ("table_id", "none", "one_gi"),
    [
        # worked by hand from GetMemoryOverhead: 240Mi+8+8+32 = 288Mi on main, 20Mi less (QEMU 30Mi) in v1.9.0
        ("kubevirt-main", ("288Mi", 301989888), ("304087040", 304087040)),
        ("kubevirt-v1.9.0", ("268Mi", 281018368), ("283115520", 283115520)),
    ],
)
@pytest.mark.parametrize("hypervisor", ["kvm", "mshv"])
def test_builtin_worked_totals(
    registry: TableRegistry, table_id: str, none: tuple[str, int], one_gi: tuple[str, int], hypervisor: str
) -> None:
    service = OverheadService(registry)
    base = {"table": table_id, "hypervisor": hypervisor}
    empty = service.compute({"vmi": {}, **base})["overhead"]
    assert (empty["quantity"], empty["bytes"]) == none
    mem = service.compute(
        {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}, **base}
    )
    assert (mem["overhead"]["quantity"], mem["overhead"]["bytes"]) == one_gi


def test_get_unknown(registry: TableRegistry) -> None:
    with pytest.raises(UnknownTable) as raised:
        registry.get("kubevirt-v0.1")
    assert raised.value.path == "table"
    assert isinstance(raised.value, LookupError)
    assert isinstance(raised.value, InputError)
    with pytest.raises(UnknownTable):
        registry.document("nope")


def test_registry_rejects_duplicate_ids() -> None:
    table = compile_table(_minimal())
    registry = TableRegistry([table])
    with pytest.raises(TableFormatError):
        registry.add(compile_table(_minimal()))
    with pytest.raises(TableFormatError):
        TableRegistry([table, table])
    assert registry.ids() == ["t"]


def test_builtin_documents_compile_again() -> None:
    for table_id in TableRegistry.BUILTIN:
        table = compile_table(_file(table_id))
        assert table.id == table_id


# --------------------------------------------------------------------------------------------------
# compile_table errors
# --------------------------------------------------------------------------------------------------


def _minimal() -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "id": "t",
        "models": [
            {
                "hypervisor": "kvm",
                "arch": "*",
                "components": [{"name": "base", "term": "fixed", "quantity": "1Mi"}],
            }
        ],
    }


def _component(doc: dict[str, Any]) -> dict[str, Any]:
    component: dict[str, Any] = doc["models"][0]["components"][0]
    return component


def _mutate(change: str) -> dict[str, Any]:
    doc = _minimal()
    model = doc["models"][0]
    comp = _component(doc)
    if change == "unknown-term":
        comp["term"] = "perDisk"
    elif change == "missing-term":
        del comp["term"]
    elif change == "unknown-feature":
        comp["when"] = {"feature": "gpu"}
    elif change == "unknown-not-feature":
        comp["when"] = {"notFeature": "nope"}
    elif change == "when-two-keys":
        comp["when"] = {"feature": "vfio", "arch": "arm64"}
    elif change == "when-string":
        comp["when"] = "graphics"
    elif change == "when-arch-number":
        comp["when"] = {"arch": 64}
    elif change == "when-unknown-kind":
        comp["when"] = {"os": "linux"}
    elif change == "bad-quantity":
        comp["quantity"] = "1Gb"
    elif change == "quantity-number":
        comp["quantity"] = 1048576
    elif change == "missing-quantity":
        del comp["quantity"]
    elif change == "name-missing":
        del comp["name"]
    elif change == "name-empty":
        comp["name"] = ""
    elif change == "component-string":
        model["components"][0] = "base"
    elif change == "components-object":
        model["components"] = {"base": comp}
    elif change == "node-components-object":
        model["nodeComponents"] = {}
    elif change == "divisor-zero":
        model["components"][0] = {"name": "pt", "term": "requestPageTables", "divisor": 0}
    elif change == "divisor-string":
        model["components"][0] = {"name": "pt", "term": "requestPageTables", "divisor": "512"}
    elif change == "divisor-bool":
        model["components"][0] = {"name": "pt", "term": "requestPageTables", "divisor": True}
    elif change == "coefficient-text":
        model["components"][0] = {"name": "g", "term": "perGuestByte", "coefficient": "abc"}
    elif change == "coefficient-missing":
        model["components"][0] = {"name": "g", "term": "perGuestByte"}
    elif change == "coefficient-div-zero":
        model["components"][0] = {"name": "g", "term": "perGuestByte", "coefficient": "1/0"}
    elif change == "probes-missing-once":
        model["components"][0] = {"name": "p", "term": "execProbes", "perProbe": "10Mi"}
    elif change == "per-vcpu-bad":
        model["components"][0] = {"name": "v", "term": "perVcpu", "quantity": "8 Mi"}
    elif change == "passt-bad":
        model["networkBinding"] = {"passt": "lots"}
    elif change == "duplicate-model":
        doc["models"].append(copy.deepcopy(model))
    elif change == "duplicate-model-default-arch":
        twin = copy.deepcopy(model)
        del twin["arch"]  # "*" is the default
        doc["models"].append(twin)
    elif change == "hypervisor-unknown":
        model["hypervisor"] = "xen"
    elif change == "hypervisor-upstream-name":
        model["hypervisor"] = "hyperv-direct"
    elif change == "hypervisor-missing":
        del model["hypervisor"]
    elif change == "arch-empty":
        model["arch"] = ""
    elif change == "arch-number":
        model["arch"] = 64
    elif change == "model-string":
        doc["models"][0] = "kvm"
    elif change == "models-empty":
        doc["models"] = []
    elif change == "models-missing":
        del doc["models"]
    elif change == "models-object":
        doc["models"] = {"kvm": model}
    elif change == "schema-2":
        doc["schemaVersion"] = 2
    elif change == "schema-string":
        doc["schemaVersion"] = "1"
    elif change == "schema-missing":
        del doc["schemaVersion"]
    elif change == "schema-true":
        doc["schemaVersion"] = True
    elif change == "id-missing":
        del doc["id"]
    elif change == "id-empty":
        doc["id"] = ""
    elif change == "id-number":
        doc["id"] = 7
    else:  # pragma: no cover - a typo in the parameter list
        raise AssertionError(change)
    return doc


FORMAT_ERRORS = [
    "unknown-term",
    "missing-term",
    "unknown-feature",
    "unknown-not-feature",
    "when-two-keys",
    "when-string",
    "when-arch-number",
    "when-unknown-kind",
    "bad-quantity",
    "quantity-number",
    "missing-quantity",
    "name-missing",
    "name-empty",
    "component-string",
    "components-object",
    "node-components-object",
    "divisor-zero",
    "divisor-string",
    "divisor-bool",
    "coefficient-text",
    "coefficient-missing",
    "coefficient-div-zero",
    "probes-missing-once",
    "per-vcpu-bad",
    "passt-bad",
    "duplicate-model",
    "duplicate-model-default-arch",
    "hypervisor-unknown",
    "hypervisor-upstream-name",
    "hypervisor-missing",
    "arch-empty",
    "arch-number",
    "model-string",
    "models-empty",
    "models-missing",
    "models-object",
    "schema-2",
    "schema-string",
    "schema-missing",
    "schema-true",
    "id-missing",
    "id-empty",
    "id-number",
]


@pytest.mark.parametrize("change", FORMAT_ERRORS)
def test_compile_table_rejects(change: str) -> None:
    with pytest.raises(TableFormatError):
        compile_table(_mutate(change))


def test_minimal_table_compiles() -> None:
    table = compile_table(_minimal())
    assert table.id == "t"
    model = table.model_for("kvm", "amd64")
    assert model is not None
    assert (model.arch, model.provisional, [c.name for c in model.components]) == ("*", False, ["base"])
    assert table.model_for("mshv", "amd64") is None
    assert table.summary() == {
        "id": "t",
        "title": "",
        "builtin": False,
        "provenance": {},
        "models": [{"hypervisor": "kvm", "arch": "*", "provisional": False}],
    }


def test_feature_names() -> None:
    assert set(FEATURES) == {
        "graphics",
        "vfio",
        "downwardMetricsVolume",
        "execProbe",
        "sev",
        "tpm",
        "dedicatedCpu",
        "guaranteedQos",
        "dedicatedCpuOrGuaranteedQos",
        "reservedOverhead",
        "passt",
    }


@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("kind", ["feature", "notFeature"])
def test_every_feature_compiles(feature: str, kind: str) -> None:
    doc = _minimal()
    _component(doc)["when"] = {kind: feature}
    compile_table(doc)


# --------------------------------------------------------------------------------------------------
# model_for: an exact arch beats "*"
# --------------------------------------------------------------------------------------------------


def _models(*pairs: tuple[str, str]) -> Table:
    return compile_table(
        {
            "schemaVersion": 1,
            "id": "m",
            "models": [
                {
                    "hypervisor": h,
                    "arch": a,
                    "components": [{"name": f"{h}-{a}", "term": "fixed", "quantity": "1Mi"}],
                }
                for h, a in pairs
            ],
        }
    )


@pytest.mark.parametrize(
    ("pairs", "hypervisor", "arch", "expected"),
    [
        ((("kvm", "*"), ("kvm", "arm64")), "kvm", "arm64", "arm64"),
        ((("kvm", "arm64"), ("kvm", "*")), "kvm", "arm64", "arm64"),
        ((("kvm", "*"), ("kvm", "arm64")), "kvm", "amd64", "*"),
        ((("kvm", "*"), ("kvm", "arm64")), "kvm", "aarch64", "*"),
        ((("kvm", "arm64"),), "kvm", "amd64", None),
        ((("kvm", "*"), ("mshv", "s390x")), "mshv", "amd64", None),
        ((("kvm", "*"), ("mshv", "s390x")), "mshv", "s390x", "s390x"),
        ((("mshv", "*"), ("kvm", "amd64")), "kvm", "amd64", "amd64"),
        ((("mshv", "*"),), "kvm", "amd64", None),
    ],
)
def test_model_for(
    pairs: tuple[tuple[str, str], ...], hypervisor: str, arch: str, expected: str | None
) -> None:
    model = _models(*pairs).model_for(hypervisor, arch)
    if expected is None:
        assert model is None
    else:
        assert model is not None
        assert (model.hypervisor, model.arch) == (hypervisor, expected)
        assert model.components[0].name == f"{hypervisor}-{expected}"


# --------------------------------------------------------------------------------------------------
# A custom table, evaluated through the service
# --------------------------------------------------------------------------------------------------

CUSTOM = {
    "schemaVersion": 1,
    "id": "custom",
    "title": "test table",
    "provenance": {"kind": "measured"},
    "models": [
        {
            "hypervisor": "kvm",
            "arch": "*",
            "components": [
                {"name": "base", "term": "fixed", "quantity": "100Mi"},
                {"name": "guest", "term": "perGuestByte", "coefficient": "0.01"},
                {
                    "name": "noGraphics",
                    "term": "fixed",
                    "quantity": "1Mi",
                    "when": {"notFeature": "graphics"},
                },
                {"name": "tpm", "term": "fixed", "quantity": "2Mi", "when": {"feature": "tpm"}},
                {"name": "onS390", "term": "fixed", "quantity": "3Mi", "when": {"arch": "s390x"}},
            ],
            "nodeComponents": [
                {"name": "deposit", "term": "perGuestByte", "coefficient": "0.015625"},
                {"name": "fixedNode", "term": "fixed", "quantity": "10Mi"},
            ],
        },
        {
            "hypervisor": "kvm",
            "arch": "arm64",
            "components": [{"name": "armBase", "term": "fixed", "quantity": "1Gi"}],
        },
        {
            "hypervisor": "mshv",
            "arch": "*",
            "provisional": True,
            "components": [
                {"name": "pagetables", "term": "requestPageTables", "divisor": 512},
                {"name": "perVcpu", "term": "perVcpu", "quantity": "4Mi"},
                {"name": "probes", "term": "execProbes", "perProbe": "1Mi", "once": "5Mi"},
                {"name": "reserved", "term": "reservedOverhead"},
                {"name": "passtOnly", "term": "fixed", "quantity": "7Mi", "when": {"feature": "passt"}},
            ],
            "nodeComponents": [{"name": "deposit", "term": "perGuestByte", "coefficient": "1/64"}],
            "networkBinding": {"passt": "100Mi"},
        },
    ],
}


@pytest.fixture(scope="module")
def custom() -> OverheadService:
    return OverheadService(TableRegistry([compile_table(CUSTOM)]), default_table="custom")


def _vmi(domain: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"spec": {"domain": domain or {}, **spec}}


CUSTOM_CASES = [
    # requests 1Gi: 100Mi + ceil(0.01 * 2^30 = 10737418.24); the first term is BinarySI
    (
        "guest-from-requests",
        {"vmi": _vmi({"resources": {"requests": {"memory": "1Gi"}}})},
        ("115595019", 115595019),
        [("base", 100 * Mi), ("guest", 10737419)],
        ("27262976", 27262976),
        [("deposit", 16 * Mi), ("fixedNode", 10 * Mi)],
    ),
    # memory.guest wins over requests.memory for the guest size
    (
        "guest-from-memory-guest",
        {"vmi": _vmi({"memory": {"guest": "2Gi"}, "resources": {"requests": {"memory": "1Gi"}}})},
        ("126332437", 126332437),
        [("base", 100 * Mi), ("guest", 21474837)],
        ("44040192", 44040192),
        [("deposit", 32 * Mi), ("fixedNode", 10 * Mi)],
    ),
    # limits only
    (
        "guest-from-limits",
        {"vmi": _vmi({"resources": {"limits": {"memory": "4Gi"}}})},
        ("147807273", 147807273),
        [("base", 100 * Mi), ("guest", 42949673)],
        ("77594624", 77594624),
        [("deposit", 64 * Mi), ("fixedNode", 10 * Mi)],
    ),
    # no memory: the guest term is 0 and the node sum starts with a zero DecimalSI term, so the
    # fixed 10Mi hands its BinarySI format over
    (
        "no-memory",
        {"vmi": _vmi()},
        ("100Mi", 100 * Mi),
        [("base", 100 * Mi), ("guest", 0)],
        ("10Mi", 10 * Mi),
        [("deposit", 0), ("fixedNode", 10 * Mi)],
    ),
    # notFeature graphics, feature tpm, arch s390x
    (
        "conditions",
        {
            "vmi": _vmi({"devices": {"autoattachGraphicsDevice": False, "tpm": {}}}),
            "cpuArch": "s390x",
        },
        ("106Mi", 106 * Mi),
        [("base", 100 * Mi), ("guest", 0), ("noGraphics", Mi), ("tpm", 2 * Mi), ("onS390", 3 * Mi)],
        ("10Mi", 10 * Mi),
        [("deposit", 0), ("fixedNode", 10 * Mi)],
    ),
    # the arm64 model is preferred over "*"
    (
        "arm64-model",
        {"vmi": _vmi({"resources": {"requests": {"memory": "1Gi"}}}), "cpuArch": "arm64"},
        ("1Gi", Gi),
        [("armBase", Gi)],
        ("0", 0),
        [],
    ),
    # the ratio multiplies the pod overhead only: k = ceil(115595019/1000) = 115596
    (
        "ratio-leaves-node-alone",
        {
            "vmi": _vmi({"resources": {"requests": {"memory": "1Gi"}}}),
            "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "2"},
        },
        ("231191019", 231191019),
        [("base", 100 * Mi), ("guest", 10737419), ("ratio", 115596000)],
        ("27262976", 27262976),
        [("deposit", 16 * Mi), ("fixedNode", 10 * Mi)],
    ),
    # mshv model: page tables 2097152 (DecimalSI first), 2 vCPUs x 4Mi, probes 1+1+5Mi,
    # reserved 1Mi, passt feature 7Mi; then passt network memory 100Mi after everything
    (
        "mshv-terms",
        {
            "hypervisor": "mshv",
            "vmi": _vmi(
                {
                    "cpu": {"cores": 2},
                    "resources": {"requests": {"memory": "1Gi"}},
                    "memory": {"reservedOverhead": {"addedOverhead": "1Mi"}},
                    "devices": {"interfaces": [{"name": "a", "passtBinding": {}}]},
                },
                livenessProbe={"exec": {"command": ["true"]}},
                readinessProbe={"exec": {"command": ["true"]}},
            ),
        },
        ("131072k", 131072000),
        [
            ("pagetables", 2097152),
            ("perVcpu", 8 * Mi),
            ("probes", 7 * Mi),
            ("reserved", Mi),
            ("passtOnly", 7 * Mi),
            ("networkBinding", 100 * Mi),
        ],
        ("16777216", 16 * Mi),  # the node sum starts with a DecimalSI term
        [("deposit", 16 * Mi)],
    ),
]


@pytest.mark.parametrize(
    ("body", "overhead", "components", "node", "node_components"),
    [c[1:] for c in CUSTOM_CASES],
    ids=[c[0] for c in CUSTOM_CASES],
)
def test_custom_table(
    custom: OverheadService,
    body: dict[str, Any],
    overhead: tuple[str, int],
    components: list[tuple[str, int]],
    node: tuple[str, int],
    node_components: list[tuple[str, int]],
) -> None:
    answer = custom.compute(body)
    assert answer["overhead"] == {"quantity": overhead[0], "bytes": overhead[1]}
    assert answer["components"] == [{"name": n, "bytes": b} for n, b in components]
    assert answer["nodeOverhead"] == {"quantity": node[0], "bytes": node[1]}
    assert answer["nodeComponents"] == [{"name": n, "bytes": b} for n, b in node_components]
    assert answer["table"]["id"] == "custom"
    assert sum(c["bytes"] for c in answer["components"]) == overhead[1]
    assert sum(c["bytes"] for c in answer["nodeComponents"]) == node[1]


@pytest.mark.parametrize(
    ("added", "quantity", "total"),
    [
        # -1Mi + 1Mi reaches zero (still BinarySI); the zero receiver then takes the DecimalSI
        # format of 1,000,000, which prints "1M" (as BinarySI it would print "1000000")
        ("-1Mi", "1M", 1000000),
        # never zero in between: the BinarySI of the first term stays
        ("-2Mi", "-48576", -48576),
        ("0", "2048576", 2048576),  # a zero term: DecimalSI, then 1Mi hands over BinarySI
        ("0.5", "2048576500m", 2048577),  # DecimalSI from the first non-zero term, milli scale
        (None, "2048576", 2048576),
    ],
)
def test_go_format_rule_across_a_zero_crossing(added: str | None, quantity: str, total: int) -> None:
    doc = {
        "schemaVersion": 1,
        "id": "zero",
        "models": [
            {
                "hypervisor": "kvm",
                "components": [
                    {"name": "reserved", "term": "reservedOverhead"},
                    {"name": "one", "term": "fixed", "quantity": "1Mi"},
                    {"name": "million", "term": "fixed", "quantity": "1000000"},
                ],
            }
        ],
    }
    service = OverheadService(TableRegistry([compile_table(doc)]), default_table="zero")
    memory = {} if added is None else {"reservedOverhead": {"addedOverhead": added}}
    answer = service.compute({"vmi": {"spec": {"domain": {"memory": memory}}}})
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}


def test_custom_table_without_a_model_for_the_hypervisor() -> None:
    doc = _minimal()
    service = OverheadService(TableRegistry([compile_table(doc)]), default_table="t")
    assert service.compute({"vmi": {}})["overhead"] == {"quantity": "1Mi", "bytes": Mi}
    with pytest.raises(InputError) as raised:
        service.compute({"vmi": {}, "hypervisor": "mshv"})
    assert raised.value.path == "table"


def test_service_needs_its_default_table() -> None:
    with pytest.raises(UnknownTable):
        OverheadService(TableRegistry([compile_table(_minimal())]))  # default is kubevirt-v1.9.0
