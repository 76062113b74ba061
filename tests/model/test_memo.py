"""Remembered answers must be exactly the answers that would have been computed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.corpus import corpus
from overhead_service.errors import InputError
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import DATA

VECTORS = DATA / "vectors" / "kubevirt-main.public.jsonl"


@pytest.fixture(scope="module")
def registry() -> TableRegistry:
    return TableRegistry.builtin()


def _answer(service: OverheadService, body: dict[str, Any]) -> Any:
    try:
        return service.compute(body)
    except InputError as err:
        return (type(err).__name__, err.path, err.detail)


def test_memo_agrees_with_fresh_computation_on_every_vector(registry: TableRegistry) -> None:
    memo, fresh = OverheadService(registry), OverheadService(registry, memo=False)
    bodies = []
    for line in VECTORS.read_text().splitlines():
        given_ = json.loads(line)["input"]
        body = {"vmi": given_["vmi"], "cpuArch": given_["cpuArch"], "table": "kubevirt-main"}
        if given_.get("kubevirtConfiguration") is not None:
            body["kubevirtConfiguration"] = given_["kubevirtConfiguration"]
        bodies.append(body)
    for _ in range(2):  # the second pass is answered from the memo
        for body in bodies:
            assert _answer(memo, body) == _answer(fresh, body)


def test_every_field_the_engine_reads_is_part_of_the_key(registry: TableRegistry) -> None:
    memo = OverheadService(registry)
    base = {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}}
    first = memo.compute(base)["overhead"]["bytes"]
    changes: list[tuple[str, str, Any]] = [
        ("spec", "volumes", [{"name": "m", "downwardMetrics": {}}]),
        ("spec", "livenessProbe", {"exec": {"command": ["true"]}}),
        ("domain", "devices", {"autoattachGraphicsDevice": False}),
        ("domain", "cpu", {"cores": 4}),
        ("domain", "memory", {"reservedOverhead": {"addedOverhead": "1Mi"}}),
        ("domain", "launchSecurity", {"sev": {}}),
    ]
    for where, key, value in changes:
        body = copy.deepcopy(base)
        target = body["vmi"]["spec"] if where == "spec" else body["vmi"]["spec"]["domain"]
        target[key] = value
        assert memo.compute(body)["overhead"]["bytes"] != first, key
    assert memo.compute({**base, "cpuArch": "arm64"})["overhead"]["bytes"] != first
    ratio = {"additionalGuestMemoryOverheadRatio": "2"}
    assert memo.compute({**base, "kubevirtConfiguration": ratio})["overhead"]["bytes"] != first
    assert memo.compute(base)["overhead"]["bytes"] == first


def test_a_returned_answer_can_be_changed_without_touching_the_memo(registry: TableRegistry) -> None:
    memo = OverheadService(registry)
    body: dict[str, Any] = {"vmi": {"spec": {}}}
    answer = memo.compute(body)
    answer["overhead"] = "tampered"
    answer["table"] = None
    again = memo.compute(body)
    assert again["overhead"]["quantity"] == "268Mi"
    assert again["table"] == {"id": "kubevirt-v1.9.0", "provisional": False}


def test_errors_are_not_remembered(registry: TableRegistry) -> None:
    memo = OverheadService(registry)
    bad = {"vmi": {"spec": {"domain": {"cpu": {"cores": -1}}}}}
    for _ in range(2):
        with pytest.raises(InputError) as raised:
            memo.compute(bad)
        assert raised.value.path == "vmi.spec.domain.cpu.cores"


QUANTITIES = st.sampled_from(["1Gi", "512Mi", "2G", "1.5Gi", "0", "100m", None, 1073741824])
VMIS = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.fixed_dictionaries(
            {}, optional={"memory": QUANTITIES, "cpu": st.sampled_from(["1", "2"])}
        ),
        "limits": st.fixed_dictionaries(
            {}, optional={"memory": QUANTITIES, "cpu": st.sampled_from(["1", "2"])}
        ),
        "cores": st.integers(0, 8),
        "graphics": st.sampled_from([None, True, False]),
        "tpm": st.sampled_from([None, {}, {"enabled": False}]),
        "downward": st.booleans(),
        "added": QUANTITIES,
    },
)


def _vmi(shape: dict[str, Any]) -> dict[str, Any]:
    domain: dict[str, Any] = {"resources": {k: shape[k] for k in ("requests", "limits") if k in shape}}
    if "cores" in shape:
        domain["cpu"] = {"cores": shape["cores"]}
    domain["devices"] = {"autoattachGraphicsDevice": shape.get("graphics"), "tpm": shape.get("tpm")}
    if "added" in shape:
        domain["memory"] = {"reservedOverhead": {"addedOverhead": shape["added"]}}
    spec: dict[str, Any] = {"domain": domain}
    if shape.get("downward"):
        spec["volumes"] = [{"name": "metrics", "downwardMetrics": {}}]
    return {"spec": spec}


@settings(max_examples=300, deadline=None)
@given(st.lists(VMIS, min_size=1, max_size=6))
def test_memo_property(shapes: list[dict[str, Any]]) -> None:
    registry = TableRegistry.builtin()
    memo, fresh = OverheadService(registry), OverheadService(registry, memo=False)
    for shape in shapes + shapes:
        body = {"vmi": _vmi(shape)}
        assert _answer(memo, body) == _answer(fresh, body)


def test_benchmark_corpus_answers_match(registry: TableRegistry) -> None:
    memo, fresh = OverheadService(registry), OverheadService(registry, memo=False)
    requests = corpus(300)
    assert memo.compute_batch(requests) == fresh.compute_batch(requests)
    assert memo.compute_batch(requests) == fresh.compute_batch(requests)
