"""The admission decision, checked from the outside: patches applied with the ``jsonpatch`` library,
the pod rendered before and after with the upstream table (what the cluster's KubeVirt would do),
the patched VMI answered by the service (still valid for its request schema). Property tests draw
many VMI shapes and cluster configurations; the examples pin the cases the issue names.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.harness.reviews import defaulted_vmi
from overhead_service.model.admission import ANNOTATIONS, LABEL, Admission, Decision
from overhead_service.model.headroom import MIB, read_memory
from overhead_service.model.quantity import parse_quantity
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

UPSTREAM = "kubevirt-v1.9.0"
GATE = {"developerConfiguration": {"featureGates": ["ReservedOverheadMemlock"]}}
GI = 1 << 30


def _admission(active: str | None = "kubevirt-main") -> Admission:
    service = OverheadService(TableRegistry.builtin())
    if active is not None:
        service.set_active({("kvm", "*"): active, ("mshv", "*"): active})
    return Admission(service, UPSTREAM)


def _pod(admission: Admission, vmi: dict[str, Any], configuration: dict[str, Any]) -> dict[str, Any]:
    body = {"vmi": vmi, "kubevirtConfiguration": configuration, "table": UPSTREAM}
    return render(body, admission.service)


def _memory(resources: dict[str, str]) -> int:
    """Memory and hugepages: what the pod holds for guest and overhead."""
    return sum(
        parse_quantity(v).value() for k, v in resources.items() if k == "memory" or k.startswith("hugepages-")
    )


def _others(resources: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in resources.items() if k != "memory"}


def _applied(vmi: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The patch applied by the library; it must give the VMI the decision describes."""
    patched = jsonpatch.apply_patch(vmi, decision.patch)
    assert patched == decision.patched
    return dict(patched)


def _without_annotations(vmi: dict[str, Any]) -> dict[str, Any]:
    vmi = copy.deepcopy(vmi)
    vmi["metadata"].pop("annotations", None)
    return vmi


def _check_annotations(vmi: dict[str, Any], decision: Decision, admission: Admission, config: Any) -> None:
    annotations = vmi["metadata"]["annotations"]
    ours = admission.service.compute({"vmi": vmi, "kubevirtConfiguration": config})
    body = {"vmi": vmi, "kubevirtConfiguration": config, "table": UPSTREAM}
    assert annotations[ANNOTATIONS["mode"]] == decision.mode
    assert annotations[ANNOTATIONS["table"]] == decision.table
    assert int(annotations[ANNOTATIONS["predicted-bytes"]]) == decision.predicted
    assert int(annotations[ANNOTATIONS["upstream-bytes"]]) == decision.upstream
    # T and B are the service's own answers for the VMI as it was sent.
    original = _without_annotations(vmi) if decision.mode == "shadow" else None
    if original is not None:
        assert decision.predicted == ours["overhead"]["bytes"]
        assert decision.upstream == admission.service.compute(body)["overhead"]["bytes"]
    assert (ANNOTATIONS["delta-bytes"] in annotations) == (decision.delta is not None)


def _verify(admission: Admission, vmi: dict[str, Any], config: dict[str, Any], decision: Decision) -> None:
    """Every invariant of the decision, recomputed independently."""
    if decision.outcome in ("error", "skipped") or decision.mode == "off":
        assert decision.patch == []
        return
    patched = _applied(vmi, decision)
    _check_annotations(patched, decision, admission, config)
    # The patched VMI is still a valid request for the service (and for the renderer).
    admission.service.compute({"vmi": patched, "kubevirtConfiguration": config})
    if decision.mode in ("shadow", "none"):
        assert _without_annotations(patched)["spec"] == vmi["spec"]
        return
    before, after = _pod(admission, vmi, config), _pod(admission, patched, config)
    for kind in ("requests", "limits"):
        assert _others(after["resources"][kind]) == _others(before["resources"][kind])
    guest = read_memory(vmi).effective_guest()
    assert guest is not None and read_memory(patched).effective_guest() == guest
    memory = read_memory(vmi)
    carries = not memory.overcommit_guest_overhead or memory.page is not None
    if decision.mode == "headroom":
        wanted = decision.predicted - decision.upstream  # type: ignore[operator]
        exact = memory.page is None and (memory.request is not None or memory.limit is not None)
        ceiling = wanted + MIB if exact else max(wanted + MIB, 2 * wanted)
        growths = []
        if carries:
            growths.append(_memory(after["resources"]["requests"]) - _memory(before["resources"]["requests"]))
        if "memory" in before["resources"]["limits"]:
            limits = before["resources"]["limits"], after["resources"]["limits"]
            growths.append(_memory(limits[1]) - _memory(limits[0]))
        assert growths
        for growth in growths:
            assert wanted <= growth < ceiling, (growth, wanted)
        assert decision.delta == growths[0]
    else:
        assert decision.mode == "reserved-overhead"
        figure = int(after["annotations"]["kubevirt.io/memory-overhead-bytes"])
        assert figure >= decision.predicted  # type: ignore[operator]
        floor = guest.value()
        request = _memory(after["resources"]["requests"])
        if carries:
            assert request >= min(_memory(before["resources"]["requests"]), floor)
        # Within 1 MiB of T, unless keeping the pod's memory at the guest's is what set it.
        if figure >= decision.predicted + MIB:  # type: ignore[operator]
            assert carries and request - min(_memory(before["resources"]["requests"]), floor) < MIB
        assert decision.delta == figure - decision.upstream  # type: ignore[operator]


# --- examples -----------------------------------------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {
    "request": defaulted_vmi({"requests": {"memory": "1Gi"}}),
    "request-and-limit": defaulted_vmi({"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}),
    "limits-only": defaulted_vmi({"limits": {"memory": "3Gi"}}),
    "guest-only": defaulted_vmi({}, {"guest": "4Gi"}),
    "hugepages-2Mi": defaulted_vmi({"requests": {"memory": "2Gi"}}, {"hugepages": {"pageSize": "2Mi"}}),
    "hugepages-1Gi": defaulted_vmi({"requests": {"memory": "4Gi"}}, {"hugepages": {"pageSize": "1Gi"}}),
    "dedicated": defaulted_vmi(
        {"requests": {"memory": "2Gi", "cpu": "2"}, "limits": {"memory": "2Gi", "cpu": "2"}},
        cpu={"cores": 2, "dedicatedCpuPlacement": True},
    ),
    "dedicated-overcommit-overhead": defaulted_vmi(
        {"requests": {"memory": "2Gi", "cpu": "2"}, "overcommitGuestOverhead": True},
        cpu={"cores": 2, "dedicatedCpuPlacement": True},
    ),
    "overcommit-overhead": defaulted_vmi({"requests": {"memory": "1Gi"}, "overcommitGuestOverhead": True}),
    "overcommit-overhead-limit": defaulted_vmi(
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}, "overcommitGuestOverhead": True}
    ),
}
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ratio-1.5": {"additionalGuestMemoryOverheadRatio": "1.5"},
    "overcommit-150": {"developerConfiguration": {"memoryOvercommit": 150}},
    "gate-ratio-2.335": {**GATE, "additionalGuestMemoryOverheadRatio": "2.335"},
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["shadow", "headroom", "reserved-overhead", "off"])
def test_every_case_in_every_mode(case: str, config: str, mode: str) -> None:
    admission = _admission()
    vmi, configuration = CASES[case], CONFIGS[config]
    decision = admission.review(vmi, configuration, mode)
    _verify(admission, vmi, configuration, decision)
    assert decision.outcome != "error", decision.warnings
    if mode == "off":
        assert (decision.mode, decision.patch) == ("off", [])
        return
    assert decision.predicted is not None and decision.upstream is not None
    assert decision.predicted > decision.upstream  # kubevirt-main's QEMU is 20Mi more
    gate = "ReservedOverheadMemlock" in str(configuration)
    if mode == "shadow":
        assert decision.mode == "shadow"
    elif mode == "reserved-overhead" and gate:
        assert decision.mode == "reserved-overhead"
    elif case in ("hugepages-1Gi", "overcommit-overhead"):
        # A whole 1Gi page is far more than T - B; without a limit nothing carries the overhead.
        assert decision.mode == "none" and decision.reason
    else:
        assert decision.mode == "headroom", decision.reason
        assert (mode == "reserved-overhead") == any("feature gate" in w for w in decision.warnings)


def test_headroom_grows_the_pod_by_t_minus_b_exactly_where_it_can() -> None:
    admission = _admission()
    vmi = CASES["request-and-limit"]
    decision = admission.review(vmi, {}, "headroom")
    assert decision.delta == decision.wanted == 20 * MIB  # QEMU 50Mi on main vs 30Mi
    patched = _applied(vmi, decision)
    resources = patched["spec"]["domain"]["resources"]
    # The page-table term follows the request: the raise is a little less than T - B.
    raised = parse_quantity(resources["requests"]["memory"]).value() - GI
    assert 20 * MIB - 41 * 1000 < raised < 20 * MIB
    assert parse_quantity(resources["limits"]["memory"]).value() - 2 * GI == raised
    assert patched["spec"]["domain"]["memory"]["guest"] == "1Gi"


def test_guest_memory_is_pinned_when_the_vmi_left_it_to_kubevirt() -> None:
    vmi = defaulted_vmi({"requests": {"memory": "2Gi"}})
    del vmi["spec"]["domain"]["memory"]["guest"]  # as an older KubeVirt's defaults leave it
    decision = _admission().review(vmi, {}, "headroom")
    _verify(_admission(), vmi, {}, decision)
    assert decision.mode == "headroom"
    assert {"op": "add", "path": "/spec/domain/memory/guest", "value": "2Gi"} in decision.patch


def test_t_below_b_changes_nothing_in_headroom_and_lowers_kubevirts_figure_in_reserved_overhead() -> None:
    admission = _admission("kvm-measured-pvm-2026-11")
    vmi = CASES["request"]
    headroom = admission.review(vmi, GATE, "headroom")
    assert headroom.wanted is not None and headroom.wanted < 0
    assert (headroom.mode, headroom.delta) == ("none", None)
    assert [op["path"] for op in headroom.patch] == ["/metadata/annotations"]
    reserved = admission.review(vmi, GATE, "reserved-overhead")
    _verify(admission, vmi, GATE, reserved)
    assert reserved.mode == "reserved-overhead" and reserved.delta is not None and reserved.delta < 0
    added = _applied(vmi, reserved)["spec"]["domain"]["memory"]["reservedOverhead"]["addedOverhead"]
    assert parse_quantity(added).value() < 0


def test_reserved_overhead_never_takes_the_pod_below_the_guest() -> None:
    """A table far below upstream: the figure stops where the request meets the guest memory."""
    admission = _admission("kvm-measured-pvm-2026-11")
    vmi = defaulted_vmi({"requests": {"memory": "1Gi"}}, {"guest": "1100Mi"})  # request below guest
    decision = admission.review(vmi, GATE, "reserved-overhead")
    _verify(admission, vmi, GATE, decision)
    assert decision.mode == "reserved-overhead"
    after = _pod(admission, _applied(vmi, decision), GATE)
    assert _memory(after["resources"]["requests"]) >= 1100 * MIB


def test_a_vmi_with_its_own_added_overhead_is_left_alone() -> None:
    vmi = defaulted_vmi({"requests": {"memory": "1Gi"}}, {"reservedOverhead": {"addedOverhead": "10Mi"}})
    decision = _admission().review(vmi, GATE, "reserved-overhead")
    assert (decision.mode, decision.outcome) == ("none", "annotated")
    assert "addedOverhead" in (decision.reason or "")


def test_the_label_overrides_the_mode_and_a_bad_label_means_shadow() -> None:
    admission = _admission()
    off = defaulted_vmi(labels={LABEL: "off"})
    assert admission.review(off, {}, "headroom").mode == "off"
    opted_in = defaulted_vmi(labels={LABEL: "headroom"})
    assert admission.review(opted_in, {}, "shadow").mode == "headroom"
    typo = defaulted_vmi(labels={LABEL: "hedroom"})
    decision = admission.review(typo, {}, "headroom")
    assert decision.mode == "shadow" and "hedroom" in decision.warnings[0]


def test_only_a_vmi_defaulted_by_kubevirt_and_not_yet_admitted_is_changed() -> None:
    admission = _admission()
    raw = defaulted_vmi()
    del raw["status"]
    raw["metadata"]["finalizers"] = []
    first = admission.review(raw, {}, "headroom")
    assert (first.outcome, first.patch) == ("skipped", [])  # reinvoked once KubeVirt has defaulted it
    vmi = defaulted_vmi()
    again = admission.review(_applied(vmi, admission.review(vmi, {}, "headroom")), {}, "headroom")
    assert (again.outcome, again.reason, again.patch) == ("skipped", "already admitted", [])


@pytest.mark.parametrize(
    ("vmi", "reason", "path"),
    [
        ("not a vmi", "invalid-vmi", "vmi"),
        ({**defaulted_vmi(), "spec": {"domain": {"cpu": {"cores": "two"}}}}, "invalid-vmi", "cores"),
        (defaulted_vmi({"requests": {"memory": "a lot"}}), "invalid-vmi", "requests.memory"),
        ({**defaulted_vmi(), "metadata": {"labels": ["x"], "finalizers": []}}, "invalid-vmi", "labels"),
    ],
)
def test_unreadable_vmis_are_errors_with_the_path(vmi: Any, reason: str, path: str) -> None:
    decision = _admission().review(vmi, {}, "headroom")
    assert (decision.outcome, decision.reason, decision.patch) == ("error", reason, [])
    assert path in decision.warnings[0]


def test_a_bad_or_missing_configuration_is_an_error() -> None:
    admission = _admission()
    bad = admission.review(defaulted_vmi(), {"additionalGuestMemoryOverheadRatio": "lots"}, "headroom")
    assert (bad.outcome, bad.reason) == ("error", "invalid-configuration")
    missing = admission.review(defaulted_vmi(), None, "headroom")
    assert (missing.outcome, missing.reason) == ("error", "configuration-unavailable")


def test_the_upstream_table_must_be_a_builtin_upstream_one() -> None:
    service = OverheadService(TableRegistry.builtin())
    with pytest.raises(LookupError):
        Admission(service, "kvm-measured-pvm-2026-11")


# --- properties ---------------------------------------------------------------------------------------

GUESTS = st.sampled_from([512, 1024, 1536, 2048, 3000, 4096, 8192, 16384, 65536])  # MiB


@st.composite
def vmis(draw: st.DrawFn) -> dict[str, Any]:
    guest_mib = draw(GUESTS)
    page = draw(st.sampled_from([None, None, None, "2Mi", "1Gi"]))
    if page == "1Gi":
        guest_mib = max(1024, guest_mib // 1024 * 1024)
    guest = f"{guest_mib}Mi"
    extra = draw(st.sampled_from([0, 0, 64, 1000]))  # MiB requested beyond the guest
    if page is not None:
        extra = extra // (1024 if page == "1Gi" else 2) * (1024 if page == "1Gi" else 2)
    request = f"{guest_mib + extra}Mi"
    shape = draw(st.sampled_from(["request", "request+limit", "equal", "limits-only", "guest-only"]))
    dedicated = draw(st.booleans())
    cores = draw(st.integers(1, 8))
    resources: dict[str, Any] = {}
    if shape in ("request", "request+limit", "equal"):
        resources["requests"] = {"memory": request}
    if shape == "request+limit":
        resources["limits"] = {"memory": f"{guest_mib + extra + draw(st.sampled_from([0, 512]))}Mi"}
    if shape in ("equal", "limits-only") or (dedicated and shape == "request"):
        resources.setdefault("limits", {})["memory"] = request
    if dedicated:
        for kind in ("requests", "limits"):
            if kind in resources:
                resources[kind]["cpu"] = str(cores)
        if "requests" in resources and "limits" in resources:
            resources["limits"]["memory"] = resources["requests"]["memory"]
    if draw(st.booleans()):
        resources["overcommitGuestOverhead"] = True
    memory: dict[str, Any] = {"guest": guest}
    if page is not None:
        memory["hugepages"] = {"pageSize": page}
    devices: dict[str, Any] = {"autoattachGraphicsDevice": draw(st.booleans())}
    if draw(st.booleans()):
        devices["tpm"] = {}
    annotations = draw(st.sampled_from([None, {}, {"team": "a/b~c"}]))
    return defaulted_vmi(
        resources,
        memory,
        {"cores": cores, "dedicatedCpuPlacement": dedicated},
        devices=devices,
        annotations=annotations,
    )


configurations = st.fixed_dictionaries(
    {},
    optional={
        "additionalGuestMemoryOverheadRatio": st.sampled_from(["1", "1.25", "1.5", "2.335", "3"]),
        "developerConfiguration": st.fixed_dictionaries(
            {},
            optional={
                "featureGates": st.sampled_from(
                    [[], ["ReservedOverheadMemlock"], ["ReservedOverheadMemlock"]]
                ),
                "memoryOvercommit": st.sampled_from([100, 150, 90]),
            },
        ),
    },
)
ADMISSIONS = {table: _admission(table) for table in ("kubevirt-main", "kvm-measured-pvm-2026-11", None)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vmi=vmis(),
    configuration=configurations,
    mode=st.sampled_from(["shadow", "headroom", "reserved-overhead"]),
    table=st.sampled_from(list(ADMISSIONS)),
)
def test_invariants_hold_for_many_vmi_shapes(
    vmi: dict[str, Any], configuration: dict[str, Any], mode: str, table: str | None
) -> None:
    admission = ADMISSIONS[table]
    decision = admission.review(vmi, configuration, mode)
    assert decision.outcome != "error", (decision.reason, decision.warnings)
    _verify(admission, vmi, configuration, decision)
    memory = read_memory(vmi)
    wanted = decision.wanted or 0
    plain = memory.page is None and memory.request is not None and not memory.overcommit_guest_overhead
    if mode == "headroom" and wanted > 0 and plain:
        assert decision.mode == "headroom", decision.reason  # the common shape is never skipped
