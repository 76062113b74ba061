"""The fit (overhead_service.calibration): NNLS, the fit of a draft table, coverage, evaluation.

Synthetic measurements come from known constants plus Gaussian noise (the issue's example:
fixed 38 MiB, 0.07 MiB per vCPU, 2.1 MiB per GiB of guest memory, graphics +2.5 MiB, σ = 0.3 MiB)
on a grid of shapes.  The parent is the built-in ``kubevirt-v1.9.0`` table, whose qemu-scope
components are ``pagetables`` (requestPageTables/512), ``qemu`` 30Mi, ``vcpus`` 8Mi, ``ioThread``
8Mi (flat), ``video`` 32Mi (graphics) and ``pflash`` 128Mi (arm64 only).  The measured fixed part
therefore splits as ``qemu`` + the kept ``ioThread`` 8Mi: ``qemu`` should come out at 30 MiB.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import overhead_service
from overhead_service import calibration
from overhead_service.calibration import Sample, SampleArrays, ScopedSamples
from overhead_service.calibration.conformal import MIN_SAMPLES_FLOOR
from overhead_service.calibration.draft import COEFFICIENT_PLACES
from overhead_service.calibration.prediction import ceil_mul
from overhead_service.calibration.samples import MAX_BYTES
from overhead_service.errors import InputError
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import Model, Table, TableRegistry, compile_table

Mi = 1 << 20
Gi = 1 << 30
DATA = Path(overhead_service.__file__).parent / "data" / "tables"
PARENT: dict[str, Any] = json.loads((DATA / "kubevirt-v1.9.0.json").read_text())
VCPUS = (1, 2, 4, 8, 16, 32)
GUEST_GIB = (1, 2, 4, 8, 16, 32, 64)
TRUTH = {"fixed": 38 * Mi, "vcpu": 0.07 * Mi, "gib": 2.1 * Mi, "graphics": 2.5 * Mi}
SIGMA = 0.3 * Mi
QEMU_SCOPE = ("pagetables", "qemu", "vcpus", "ioThread", "video", "pflash")


def synthetic(
    n: int,
    seed: int,
    *,
    fixed: float = TRUTH["fixed"],
    per_vcpu: float = TRUTH["vcpu"],
    per_gib: float = TRUTH["gib"],
    graphics: float = TRUTH["graphics"],
    graphics_share: float = 0.5,
    per_io_thread: float = 0.0,
    io_threads: tuple[int, ...] = (1,),
    vcpus: tuple[int, ...] = VCPUS,
    guest_gib: tuple[int, ...] = GUEST_GIB,
    sigma: float = SIGMA,
    **extra: Any,
) -> SampleArrays:
    """Measurements from known constants plus noise, on a grid of shapes."""
    rng = np.random.default_rng(seed)
    v = rng.choice(vcpus, n)
    g = rng.choice(guest_gib, n) * Gi
    gr = rng.random(n) < graphics_share
    io = rng.choice(io_threads, n)
    y = fixed + per_vcpu * v + per_gib * g / Gi + graphics * gr + per_io_thread * io + rng.normal(0, sigma, n)
    return SampleArrays.of(
        overhead_bytes=np.round(y).astype(np.int64),
        vcpus=v,
        guest_memory_bytes=g,
        graphics=gr,
        io_threads=io,
        **extra,
    )


def samples_of(arrays: SampleArrays, scope: str = "qemu") -> list[Sample]:
    return [arrays.sample(i, scope) for i in range(len(arrays))]


def run_fit(
    arrays: SampleArrays | ScopedSamples, parent: dict[str, Any] | None = None, **options: Any
) -> tuple[dict[str, Any], calibration.FitSummary]:
    options = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "new_id": "fit-test", **options}
    options.setdefault("requested_by", "tester")
    return calibration.fit_arrays(arrays, parent if parent is not None else PARENT, **options)


def model_of(document: dict[str, Any] | Table, hypervisor: str = "kvm", arch: str = "amd64") -> Model:
    table = document if isinstance(document, Table) else compile_table(document)
    model = table.model_for(hypervisor, arch)
    assert model is not None
    return model


def within(entry: calibration.ComponentFit, truth: float, sigmas: float = 3.0) -> bool:
    assert entry.estimate is not None and entry.standard_error is not None
    return abs(entry.estimate - truth) <= sigmas * entry.standard_error


@pytest.fixture(scope="module")
def qemu_fit() -> tuple[dict[str, Any], calibration.FitSummary]:
    return run_fit(synthetic(20_000, seed=1))


# --------------------------------------------------------------------------------------------------
# NNLS
# --------------------------------------------------------------------------------------------------


def objective(x: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    r = x @ b - y
    return float(r @ r)


def brute_force_nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Best least-squares solution over every support set whose unconstrained solution is >= 0."""
    p = x.shape[1]
    best, best_value = np.zeros(p), objective(x, np.zeros(p), y)
    for size in range(1, p + 1):
        for support in itertools.combinations(range(p), size):
            cols = list(support)
            solution, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.all(solution >= 0):
                b = np.zeros(p)
                b[cols] = solution
                value = objective(x, b, y)
                if value < best_value:
                    best, best_value = b, value
    return best


@pytest.mark.parametrize("seed", range(120))
def test_nnls_matches_brute_force_and_is_never_negative(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, p = int(rng.integers(6, 30)), int(rng.integers(1, 6))
    x = rng.normal(size=(n, p)) * rng.uniform(0.01, 100, size=p)  # badly scaled columns too
    if seed % 3 == 0:
        x = np.abs(x)  # non-negative designs, as overhead columns are
    y = rng.normal(size=n) * 10
    b = calibration.nnls(x, y)
    assert b.shape == (p,)
    assert np.all(b >= 0)
    expected = brute_force_nnls(x, y)
    scale = max(1.0, objective(x, np.zeros(p), y))
    assert objective(x, b, y) <= objective(x, expected, y) + 1e-9 * scale
    np.testing.assert_allclose(b, expected, rtol=1e-6, atol=1e-8 * max(1.0, float(np.abs(expected).max())))


def test_nnls_recovers_an_interior_solution_exactly() -> None:
    rng = np.random.default_rng(7)
    x = np.column_stack([np.ones(200), rng.uniform(1, 64, 200), rng.integers(0, 2, 200)])
    truth = np.array([38.0, 0.07, 2.5])
    np.testing.assert_allclose(calibration.nnls(x, x @ truth), truth, rtol=1e-9)


def test_nnls_clips_a_negative_effect_to_zero() -> None:
    rng = np.random.default_rng(3)
    x = np.column_stack([np.ones(100), rng.uniform(0, 10, 100)])
    y = 50 - 2 * x[:, 1]  # the slope wants to be negative
    b = calibration.nnls(x, y)
    assert b[1] == 0
    assert b[0] == pytest.approx(float(np.mean(y)))


def test_nnls_survives_zero_and_collinear_columns() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(1, 5, 50)
    x = np.column_stack([base, np.zeros(50), 2 * base])
    y = 3 * base
    b = calibration.nnls(x, y)
    assert b[1] == 0 and np.all(b >= 0)
    assert objective(x, b, y) == pytest.approx(0, abs=1e-12)
    assert calibration.nnls_gram(np.zeros((0, 0)), np.zeros(0)).shape == (0,)


# --------------------------------------------------------------------------------------------------
# the fit recovers known constants
# --------------------------------------------------------------------------------------------------


def test_fit_recovers_each_coefficient_within_three_standard_errors(qemu_fit: Any) -> None:
    _, summary = qemu_fit
    assert summary.n == 20_000 and summary.fixed_part == "qemu"
    assert within(summary.component("qemu"), TRUTH["fixed"] - 8 * Mi)  # ioThread's 8Mi is kept
    assert within(summary.component("vcpus"), TRUTH["vcpu"])
    assert within(summary.component("pagetables"), TRUTH["gib"] / Gi)
    assert within(summary.component("video"), TRUTH["graphics"])
    for name in ("qemu", "vcpus", "pagetables", "video"):
        entry = summary.component(name)
        assert entry.status == "fitted" and entry.reason is None
        assert 0 < entry.standard_error < 0.02 * entry.estimate  # n = 20,000 pins them down
    assert summary.sigma_bytes == pytest.approx(SIGMA, rel=0.05)


def test_fitted_values_are_rounded_up_and_the_margin_sits_in_the_fixed_part(qemu_fit: Any) -> None:
    document, summary = qemu_fit
    specs = {c["name"]: c for c in document["models"][0]["components"]}
    assert document["models"][0]["arch"] == "amd64"
    assert specs["vcpus"] == {
        **specs["vcpus"],
        "term": "perVcpu",
        "quantity": summary.component("vcpus").value,
    }
    assert int(specs["vcpus"]["quantity"]) == math.ceil(summary.component("vcpus").estimate)
    assert int(specs["video"]["quantity"]) == math.ceil(summary.component("video").estimate)
    assert specs["video"]["when"] == {"feature": "graphics"}
    qemu = int(specs["qemu"]["quantity"])
    assert qemu == math.ceil(summary.component("qemu").estimate) + summary.margin_bytes
    # The margin is about the 99.5 % point of N(0, σ): 2.58 σ.
    assert summary.margin_bytes == pytest.approx(2.576 * SIGMA, rel=0.15)
    pagetables = specs["pagetables"]
    assert pagetables["term"] == "perGuestByte" and "divisor" not in pagetables
    coefficient = Fraction(pagetables["coefficient"])
    assert coefficient.denominator <= 10**COEFFICIENT_PLACES
    assert 0 <= coefficient - Fraction(summary.component("pagetables").estimate) < Fraction(1, 10**12)
    assert all(s.isdigit() for s in (specs["qemu"]["quantity"], specs["video"]["quantity"]))


def test_fit_accepts_sample_objects_and_gives_the_same_draft() -> None:
    arrays = synthetic(1500, seed=11)
    by_arrays, _ = run_fit(arrays)
    by_samples, _ = calibration.fit(
        samples_of(arrays),
        PARENT,
        hypervisor="kvm",
        arch="amd64",
        scope="qemu",
        new_id="fit-test",
        requested_by="tester",
    )
    assert by_samples == by_arrays


def test_fit_is_deterministic_for_a_seed_and_folds_depend_on_it() -> None:
    arrays = synthetic(2000, seed=12)
    first, summary = run_fit(arrays, seed=4)
    again, _ = run_fit(arrays, seed=4)
    other, other_summary = run_fit(arrays, seed=5)
    assert first == again
    assert summary.held_out["perFold"] != other_summary.held_out["perFold"]


# --------------------------------------------------------------------------------------------------
# coverage
# --------------------------------------------------------------------------------------------------


def test_the_table_meets_the_target_on_fresh_samples() -> None:
    """Six independent fits; each table is judged on 100,000 fresh samples from the same process.

    The coverage of one fit is random (its margin comes from ~100 tail residuals), roughly
    Beta-distributed with sd ≈ sqrt(0.995 · 0.005 / 20,000) = 0.0005; the mean of six must reach
    the target within 3 of its sd, each within 4 of its own.
    """
    target, coverages = 0.995, []
    for rep in range(6):
        document, summary = run_fit(synthetic(20_000, seed=100 + rep), target=target, seed=rep)
        fresh = synthetic(100_000, seed=1000 + rep)
        result = calibration.evaluate_table(document, fresh, hypervisor="kvm", arch="amd64", scope="qemu")
        coverages.append(result["coverage"])
        assert result["coverage"] >= target - 0.002
        assert abs(summary.held_out["coverage"] - result["coverage"]) < 0.003  # held-out is honest
    assert float(np.mean(coverages)) >= target - 0.0007


def test_held_out_coverage_is_measured_per_fold_and_pooled(qemu_fit: Any) -> None:
    _, summary = qemu_fit
    held = summary.held_out
    assert len(held["perFold"]) == 5
    assert sum(f["samples"] for f in held["perFold"]) == 20_000
    assert held["covered"] == sum(f["covered"] for f in held["perFold"])
    assert held["coverage"] == held["covered"] / 20_000
    assert held["meetsTarget"] is (held["coverage"] >= 0.995)
    assert held["coverage"] == pytest.approx(0.995, abs=0.002)
    # Each outer fold's margin comes from the other folds only, so the margins differ a little.
    margins = [f["marginBytes"] for f in held["perFold"]]
    assert len(set(margins)) > 1
    assert all(m == pytest.approx(summary.margin_bytes, rel=0.1) for m in margins)


def test_lower_target_gives_smaller_margin_and_coverage() -> None:
    arrays = synthetic(4000, seed=21)
    _, high = run_fit(arrays, target=0.995)
    _, low = run_fit(arrays, target=0.9)
    assert isinstance(low.margin_bytes, int) and isinstance(high.margin_bytes, int)  # one scope
    assert low.margin_bytes < high.margin_bytes
    assert low.margin_bytes == pytest.approx(1.2816 * SIGMA, rel=0.15)
    assert low.held_out["coverage"] == pytest.approx(0.9, abs=0.015)


def test_summary_is_recorded_in_the_provenance_as_json(qemu_fit: Any) -> None:
    document, summary = qemu_fit
    assert document["fit"] == summary.to_json()
    text = json.dumps(document, allow_nan=False)  # no NaN anywhere
    assert json.loads(text) == document
    fit = document["fit"]
    assert fit["parent"] == "kubevirt-v1.9.0" and fit["requestedBy"] == "tester"
    assert (fit["target"], fit["folds"], fit["seed"], fit["samples"]) == (0.995, 5, 0, 20_000)
    assert set(fit["residuals"]) == {"inSample", "heldOut"}
    assert fit["residuals"]["heldOut"]["p50"] == pytest.approx(0, abs=0.1 * SIGMA)
    assert set(fit["overProvisioning"]) == {"bytes", "percentOfMeasured"}
    assert set(fit["overProvisioning"]["bytes"]) == {"p50", "p90", "p99", "max"}
    assert fit["evaluation"]["coverage"] >= 0.99
    provenance = document["provenance"]
    assert provenance["kind"] == "fit" and provenance["parent"] == "kubevirt-v1.9.0"
    assert provenance["requestedBy"] == "tester" and provenance["samples"] == 20_000
    assert provenance["heldOutCoverage"] == summary.held_out["coverage"]


def test_host_facts_are_recorded() -> None:
    facts = {"qemu": ["9.2.0"], "kernel": ["6.12.1"], "accelerator": ["kvm"]}
    document, summary = run_fit(synthetic(600, seed=3), host_facts=facts, requested_by=None)
    assert summary.host_facts == facts
    assert document["fit"]["hostFacts"] == facts and document["provenance"]["hostFacts"] == facts
    assert document["fit"]["requestedBy"] is None


# --------------------------------------------------------------------------------------------------
# the draft table
# --------------------------------------------------------------------------------------------------


def test_draft_is_a_valid_table_and_the_parent_is_untouched(qemu_fit: Any) -> None:
    document, _ = qemu_fit
    assert json.loads((DATA / "kubevirt-v1.9.0.json").read_text()) == PARENT
    table = compile_table(document)
    assert table.id == "fit-test" and document["builtin"] is False and document["parent"] == "kubevirt-v1.9.0"
    arches = [(m["hypervisor"], m.get("arch", "*"), m["provisional"]) for m in document["models"]]
    # The parent's kvm model is for every arch: the fit adds an amd64 model and keeps the rest.
    assert arches == [("kvm", "amd64", False), ("kvm", "*", False), ("mshv", "*", True)]
    assert document["models"][1:] == PARENT["models"]
    assert model_of(table, arch="arm64").arch == "*"
    # Pod components outside the qemu scope are the parent's.
    fitted = {c["name"]: c for c in document["models"][0]["components"]}
    for spec in PARENT["models"][0]["components"]:
        if spec["name"] not in QEMU_SCOPE:
            assert fitted[spec["name"]] == spec


def test_a_fit_on_a_fitted_table_replaces_its_model_in_place(qemu_fit: Any) -> None:
    first, _ = qemu_fit
    second, summary = run_fit(synthetic(1000, seed=13), parent=first, new_id="fit-second")
    assert second["parent"] == "fit-test" and summary.parent_id == "fit-test"
    assert [(m["hypervisor"], m["arch"]) for m in second["models"]] == [
        (m["hypervisor"], m["arch"]) for m in first["models"]
    ]
    assert second["fit"]["samples"] == 1000 and second["provenance"]["parent"] == "fit-test"
    # pagetables is a perGuestByte term in the parent now: its coefficient is refitted.
    assert summary.component("pagetables").parent_value == first["models"][0]["components"][0]["coefficient"]
    assert compile_table(second).id == "fit-second"


def test_a_registry_takes_the_draft_and_the_service_answers_with_it(qemu_fit: Any) -> None:
    document, summary = qemu_fit
    registry = TableRegistry.builtin()
    registry.add(compile_table(document))
    service = OverheadService(registry)
    vmi = calibration.sample_vmi(Sample("pod", 0, vcpus=4, guest_memory_bytes=8 * Gi, graphics=True), "amd64")
    answer = service.compute({"vmi": vmi, "table": "fit-test", "cpuArch": "amd64"})
    assert answer["table"] == {"id": "fit-test", "provisional": False}
    parts = {p["name"]: p["bytes"] for p in answer["components"]}
    assert parts["vcpus"] == 4 * int(summary.component("vcpus").value)
    assert parts["video"] == int(summary.component("video").value)


@pytest.mark.parametrize("graphics", [False, True])
@pytest.mark.parametrize("vcpus", [1, 3, 32])
@pytest.mark.parametrize("guest", [1, Gi - 1, 3 * Gi + 12345, 64 * Gi])
def test_predict_through_the_draft_equals_the_fitted_formula(
    qemu_fit: Any, graphics: bool, vcpus: int, guest: int
) -> None:
    document, summary = qemu_fit
    values = {c.component: c.value for c in summary.components}
    coefficient = Fraction(values["pagetables"])
    formula = (
        int(values["qemu"])
        + int(values["vcpus"]) * vcpus
        + math.ceil(coefficient * guest)
        + 8 * Mi  # ioThread, kept
        + (int(values["video"]) if graphics else 0)
    )
    sample = Sample("qemu", 0, vcpus=vcpus, guest_memory_bytes=guest, graphics=graphics)
    assert calibration.predict(model_of(document), sample, "amd64") == formula


# --------------------------------------------------------------------------------------------------
# what the data cannot identify keeps the parent's constants
# --------------------------------------------------------------------------------------------------


def test_constant_features_keep_the_parents_constants_and_are_subtracted() -> None:
    # Graphics always on, one guest size: video and pagetables are not separable from the fixed part.
    arrays = synthetic(3000, seed=31, graphics_share=1.0, guest_gib=(4,))
    document, summary = run_fit(arrays)
    specs = {c["name"]: c for c in document["models"][0]["components"]}
    parent = {c["name"]: c for c in PARENT["models"][0]["components"]}
    for name in ("video", "pagetables", "ioThread", "pflash"):
        assert summary.component(name).status == "kept"
        assert specs[name] == parent[name]
    assert "constant" in str(summary.component("video").reason)
    assert "constant" in str(summary.component("pagetables").reason)
    assert summary.component("pflash").reason == "does not apply on 'amd64'"
    # The kept contributions were subtracted: qemu = measured fixed part − kept constants.
    page_tables = (4 * Gi // 1000 + (4 * Gi % 1000 > 0)) * 1000 // 512
    expected = TRUTH["fixed"] + TRUTH["graphics"] + 4 * TRUTH["gib"] - 8 * Mi - 32 * Mi - page_tables
    assert within(summary.component("qemu"), expected)
    assert within(summary.component("vcpus"), TRUTH["vcpu"])


def test_absent_and_rare_features_keep_the_parents_constants() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    tpm = np.zeros(n, bool)
    tpm[:2] = True  # two samples are not enough
    base = synthetic(n, seed=32, fixed=300 * Mi)
    arrays = SampleArrays.of(
        overhead_bytes=base.overhead_bytes + np.where(tpm, 10 * Mi, 0),
        vcpus=base.vcpus,
        guest_memory_bytes=base.guest_memory_bytes,
        graphics=base.graphics,
        tpm=tpm,
        sev=rng.random(n) < 0,  # all false
    )
    _, summary = run_fit(arrays, scope="pod")
    assert summary.component("tpm").status == "kept"
    assert (
        summary.component("tpm").reason == f"present in only 2 samples (fewer than {calibration.MIN_SUPPORT})"
    )
    assert summary.component("sev").reason == "absent from every sample"
    assert summary.component("reservedOverhead").status == "kept"
    for name in ("virtLauncherMonitor", "virtLauncher", "virtlogd", "virtqemud"):
        entry = summary.component(name)
        assert entry.status == "kept" and "not separable from the fixed part" in str(entry.reason)


def test_collinear_features_fit_the_first_and_keep_the_second() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    both = rng.random(n) < 0.3
    base = synthetic(n, seed=33, fixed=300 * Mi)  # a pod's fixed part is above the kept processes
    arrays = SampleArrays.of(
        overhead_bytes=base.overhead_bytes + np.where(both, 300 * Mi, 0),
        vcpus=base.vcpus,
        guest_memory_bytes=base.guest_memory_bytes,
        graphics=base.graphics,
        sev=both,
        tpm=both,
    )
    _, summary = run_fit(arrays, scope="pod")
    assert not summary.warnings
    assert summary.component("sev").status == "fitted"
    assert (
        summary.component("tpm").status == "kept" and summary.component("tpm").reason == "collinear with sev"
    )
    # sev absorbs the joint effect beyond the kept tpm 53Mi.
    assert within(summary.component("sev"), 300 * Mi - 53 * Mi)


def test_vcpus_offline_keeps_the_parents_per_vcpu_constant() -> None:
    base = synthetic(3000, seed=34, per_vcpu=8 * Mi)
    online = np.ones(3000, bool)
    online[17] = False
    arrays = SampleArrays.of(
        overhead_bytes=base.overhead_bytes,
        vcpus=base.vcpus,
        guest_memory_bytes=base.guest_memory_bytes,
        graphics=base.graphics,
        vcpus_online=online,
    )
    document, summary = run_fit(arrays)
    entry = summary.component("vcpus")
    assert entry.status == "kept" and entry.reason == "vcpusOnline is false for 1 samples"
    assert entry.value == "8Mi" and entry.estimate is None
    specs = {c["name"]: c for c in document["models"][0]["components"]}
    assert specs["vcpus"]["quantity"] == "8Mi"
    # Kept at its parent value and subtracted, so the rest still comes out right.
    assert within(summary.component("qemu"), TRUTH["fixed"] - 8 * Mi)
    assert within(summary.component("pagetables"), TRUTH["gib"] / Gi)


def test_constant_vcpus_keep_the_parents_constant() -> None:
    _, summary = run_fit(synthetic(1000, seed=35, vcpus=(2,)))
    assert summary.component("vcpus").status == "kept"
    assert summary.component("vcpus").value == "8Mi"


def test_a_fixed_part_below_the_kept_constants_hits_zero_with_a_warning() -> None:
    _, summary = run_fit(synthetic(1000, seed=36, fixed=2 * Mi))  # less than the kept ioThread 8Mi
    assert summary.component("qemu").estimate == 0
    assert any("fixed part 'qemu' hit zero" in w for w in summary.warnings)


# --------------------------------------------------------------------------------------------------
# other scopes and terms
# --------------------------------------------------------------------------------------------------


def test_pod_scope_fits_features_and_probes() -> None:
    rng = np.random.default_rng(40)
    n = 6000
    base = synthetic(n, seed=41, fixed=300 * Mi)
    vfio = rng.random(n) < 0.2
    probes = rng.choice([0, 1, 2], n)
    extra = np.where(vfio, 40 * Mi, 0) + np.where(probes > 0, 20 * Mi, 0) + probes * 3 * Mi
    arrays = SampleArrays.of(
        overhead_bytes=base.overhead_bytes + extra,
        vcpus=base.vcpus,
        guest_memory_bytes=base.guest_memory_bytes,
        graphics=base.graphics,
        vfio=vfio,
        exec_probes=probes,
    )
    document, summary = run_fit(arrays, scope="pod")
    assert summary.fixed_part == "qemu"
    kept_processes = (25 + 100 + 25 + 40 + 8) * Mi  # the per-process constants and ioThread
    assert within(summary.component("qemu"), 300 * Mi - kept_processes)
    assert within(summary.component("vfio"), 40 * Mi)
    assert within(summary.component("probes", "once"), 20 * Mi)
    assert within(summary.component("probes", "perProbe"), 3 * Mi)
    specs = {c["name"]: c for c in document["models"][0]["components"]}
    assert specs["probes"]["term"] == "execProbes"
    assert specs["probes"]["once"] == summary.component("probes", "once").value
    assert specs["vfio"]["when"] == {"feature": "vfio"}
    result = calibration.evaluate_table(
        document, synthetic(2, seed=1), hypervisor="kvm", arch="amd64", scope="pod"
    )
    assert result["n"] == 2


def test_io_threads_fall_back_to_a_flat_constant_for_the_most_threads() -> None:
    arrays = synthetic(4000, seed=42, io_threads=(1, 2, 4, 8), per_io_thread=0.4 * Mi)
    document, summary = run_fit(arrays)
    entry = summary.component("ioThread")
    assert entry.status == "fitted" and entry.unit == "bytes/IOThread"
    assert within(entry, 0.4 * Mi)
    assert entry.estimate is not None and entry.value == str(math.ceil(entry.estimate * 8))
    specs = {c["name"]: c for c in document["models"][0]["components"]}
    assert specs["ioThread"]["term"] == "fixed" and specs["ioThread"]["quantity"] == entry.value
    assert any("no per-IOThread term" in w for w in summary.warnings)
    assert summary.held_out["coverage"] >= 0.99
    assert within(summary.component("qemu"), TRUTH["fixed"])  # nothing kept from the parent now


def test_node_scope_fits_the_node_group() -> None:
    parent = copy.deepcopy(PARENT)
    parent["id"] = "with-node"
    parent["models"][1]["nodeComponents"] = [
        {"name": "partition", "term": "fixed", "quantity": "832Ki"},
        {"name": "vcpus", "term": "perVcpu", "quantity": "360Ki"},
        {"name": "pfnArray", "term": "perGuestByte", "coefficient": "0.001953125"},
    ]
    arrays = synthetic(2000, seed=43, fixed=Mi, per_vcpu=400 * 1024, per_gib=2.5 * Mi, graphics=0, sigma=1e4)
    document, summary = run_fit(arrays, parent=parent, hypervisor="mshv", scope="node")
    assert summary.fixed_part == "partition"
    assert within(summary.component("partition"), Mi)
    assert within(summary.component("vcpus"), 400 * 1024)
    assert within(summary.component("pfnArray"), 2.5 * Mi / Gi)
    arches = [(m["hypervisor"], m["arch"], m["provisional"]) for m in document["models"]]
    # Still provisional: the pod group is the parent's unmeasured copy.
    assert arches == [("kvm", "*", False), ("mshv", "amd64", True), ("mshv", "*", True)]
    assert document["models"][1]["measuredScopes"] == ["node"]
    mshv = document["models"][1]
    assert document["models"][2] == parent["models"][1]
    assert mshv["components"] == PARENT["models"][1]["components"]  # the pod group is untouched
    model = model_of(document, "mshv")
    sample = Sample("node", 0, vcpus=2, guest_memory_bytes=Gi)
    coefficient = Fraction(str(summary.component("pfnArray").value))
    expected = int(str(summary.component("partition").value)) + 2 * int(str(summary.component("vcpus").value))
    assert calibration.predict(model, sample, "amd64") == expected + math.ceil(coefficient * Gi)


# --------------------------------------------------------------------------------------------------
# predictions: the vectorised evaluator agrees with the engine
# --------------------------------------------------------------------------------------------------


def random_shapes(n: int, seed: int) -> SampleArrays:
    rng = np.random.default_rng(seed)
    return SampleArrays.of(
        overhead_bytes=rng.integers(0, 2 * Gi, n),
        vcpus=rng.integers(1, 300, n),
        guest_memory_bytes=rng.integers(1, 2**44, n),
        graphics=rng.random(n) < 0.5,
        io_threads=rng.integers(0, 9, n),
        vfio=rng.random(n) < 0.3,
        tpm=rng.random(n) < 0.3,
        sev=rng.random(n) < 0.3,
        dedicated_cpu=rng.random(n) < 0.3,
        downward_metrics=rng.random(n) < 0.3,
        exec_probes=rng.integers(0, 3, n),
    )


@pytest.mark.parametrize("table_id", ["kubevirt-v1.9.0", "kubevirt-main"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize("scope", ["qemu", "pod"])
def test_vectorised_predictions_equal_the_engine(table_id: str, arch: str, scope: str) -> None:
    model = model_of(TableRegistry.builtin().get(table_id), arch=arch)
    arrays = random_shapes(300, seed=len(table_id) + len(arch) + len(scope))
    fast = calibration.predict_arrays(model, scope, arrays, arch)
    for i in range(len(arrays)):
        assert fast[i] == calibration.predict(model, arrays.sample(i, scope), arch)


def test_pod_scope_prediction_is_the_services_answer_without_ratio_or_network() -> None:
    service = OverheadService(TableRegistry.builtin(), memo=False)
    model = model_of(TableRegistry.builtin().get("kubevirt-v1.9.0"), arch="arm64")
    arrays = random_shapes(60, seed=9)
    for i in range(len(arrays)):
        sample = arrays.sample(i, "pod")
        vmi = calibration.sample_vmi(sample, "arm64")
        answer = service.compute({"vmi": vmi, "cpuArch": "arm64", "hypervisor": "kvm"})
        assert answer["overhead"]["bytes"] == calibration.predict(model, sample, "arm64")


def test_fractional_constants_take_the_exact_engine_path() -> None:
    document = copy.deepcopy(PARENT)
    document["id"] = "fractional"
    for spec in document["models"][0]["components"]:
        if spec["name"] in ("qemu", "video"):
            spec["quantity"] = "1000001500m"  # 1,000,001.5 bytes: two halves make a whole byte
    model = model_of(document, arch="amd64")
    arrays = random_shapes(40, seed=4)
    predicted = calibration.predict_arrays(model, "qemu", arrays, "amd64")
    for i in range(len(arrays)):
        assert predicted[i] == calibration.predict(model, arrays.sample(i, "qemu"), "amd64")


@pytest.mark.parametrize(
    "coefficient",
    ["0.001953125", "0.00205078125", "0.002050975528", "1", "0", "0.333333333333333333333", "12.5"],
)
def test_ceil_mul_is_exact(coefficient: str) -> None:
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.integers(1, MAX_BYTES, 2000), np.arange(1, 100) << 30])
    value = Fraction(coefficient)
    got = ceil_mul(value, values.astype(np.int64))
    assert got.tolist() == [math.ceil(value * int(v)) for v in values]


def test_scope_components() -> None:
    assert calibration.SCOPE_COMPONENTS["qemu"] == QEMU_SCOPE
    model = model_of(PARENT, arch="arm64")
    assert [c.name for c in calibration.scope_components(model, "qemu")] == list(QEMU_SCOPE)
    assert calibration.scope_components(model, "pod") == model.components
    assert calibration.scope_components(model, "node") == ()
    with pytest.raises(InputError):
        calibration.scope_components(model, "vm")


def test_sample_vmi_reads_back_as_the_sample() -> None:
    from overhead_service.model.vmi import extract_features

    sample = Sample("pod", 0, 6, 3 * Gi, True, 4, True, True, True, True, True, 2)
    f = extract_features(calibration.sample_vmi(sample, "s390x"))
    assert (f.vcpus, f.guest_memory.value(), f.memory_request.value()) == (6, 3 * Gi, 3 * Gi)
    assert (f.graphics, f.vfio, f.tpm, f.sev, f.dedicated_cpu) == (True,) * 5
    assert (f.downward_metrics_volume, f.exec_probes, f.guaranteed_qos) == (True, 2, False)
    assert f.architecture == "s390x"
    plain = extract_features(calibration.sample_vmi(Sample("pod", 0, 1, Gi), "amd64"))
    assert not any(plain.flags.values())


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def test_evaluate_on_hand_made_samples() -> None:
    # kubevirt-v1.9.0, scope qemu, 1 vCPU, 1 GiB, no graphics: page tables 2,097,152 (1 GiB is
    # 1,073,741,824 = 1,073,742 kB rounded up; × 1000 / 512) + qemu 30Mi + vcpus 8Mi + ioThread 8Mi.
    predicted = 2_097_152 + 46 * Mi
    assert predicted == 50_331_648
    measured = [predicted - 10 * Mi, predicted, predicted + 1, predicted + 5 * Mi]
    samples = [Sample("qemu", m, 1, Gi) for m in measured]
    result = calibration.evaluate_table(PARENT, samples, hypervisor="kvm", arch="amd64", scope="qemu")
    assert result["table"] == "kubevirt-v1.9.0" and result["n"] == 4
    assert result["coverage"] == 0.5
    under = result["underProvisioned"]
    assert under["count"] == 2
    assert [w["index"] for w in under["worst"]] == [3, 2]
    assert [w["shortfallBytes"] for w in under["worst"]] == [5 * Mi, 1]
    assert under["worst"][0]["predictedBytes"] == predicted
    assert under["worst"][0]["measuredBytes"] == predicted + 5 * Mi
    assert under["worst"][0]["shape"] == {
        "vcpus": 1,
        "guestMemoryBytes": Gi,
        "graphics": False,
        "ioThreads": 0,
        "vfio": False,
        "tpm": False,
        "sev": False,
        "dedicatedCpu": False,
        "downwardMetrics": False,
        "execProbes": 0,
        "vcpusOnline": True,
    }
    # predicted − measured: −5Mi, −1, 0, 10Mi; inverted-CDF quantiles (observed values).
    over = result["overProvisioning"]
    assert over["bytes"] == {"p50": -1, "p90": 10 * Mi, "p99": 10 * Mi, "max": 10 * Mi}
    assert over["percentOfMeasured"]["max"] == round(10 * Mi / (predicted - 10 * Mi) * 100, 4)
    assert over["percentOfMeasured"]["p50"] == round(-1 / (predicted + 1) * 100, 4)


def test_evaluate_accepts_a_model_a_table_or_a_document() -> None:
    samples = [Sample("qemu", 60 * Mi, 2, 2 * Gi, graphics=True)]
    table = compile_table(PARENT)
    by_document = calibration.evaluate_table(PARENT, samples, hypervisor="kvm", arch="amd64", scope="qemu")
    by_table = calibration.evaluate_table(table, samples, hypervisor="kvm", arch="amd64", scope="qemu")
    model = model_of(table)
    by_model = calibration.evaluate_table(model, samples, hypervisor="kvm", arch="amd64", scope="qemu")
    assert by_document == by_table == {**by_model, "table": "kubevirt-v1.9.0"}
    assert by_model["table"] is None


def test_evaluate_errors() -> None:
    with pytest.raises(InputError) as err:
        calibration.evaluate_table(PARENT, [], hypervisor="kvm", arch="amd64", scope="qemu")
    assert err.value.path == "measurements"
    with pytest.raises(InputError) as err:
        calibration.evaluate_table(
            PARENT, [Sample("pod", 1, 1, 1)], hypervisor="kvm", arch="amd64", scope="qemu"
        )
    assert err.value.path == "measurements[0].scope"
    only_kvm = {**PARENT, "models": PARENT["models"][:1]}
    with pytest.raises(InputError) as err:
        calibration.evaluate_table(
            only_kvm, [Sample("qemu", 1, 1, 1)], hypervisor="mshv", arch="amd64", scope="qemu"
        )
    assert err.value.path == "table" and "no model for mshv" in err.value.detail


# --------------------------------------------------------------------------------------------------
# input errors
# --------------------------------------------------------------------------------------------------


def test_minimum_samples() -> None:
    # Each training split of m samples needs ceil((m+1)·0.995) <= m, i.e. m >= 199; with 5 folds
    # the smallest split is n − ceil(n/5): n = 249 gives 199, n = 248 gives 198.
    assert calibration.minimum_samples(0.995, 5) == 249
    assert calibration.minimum_samples(0.9, 5) == MIN_SAMPLES_FLOOR
    assert calibration.minimum_samples(0.999, 10) == 1110
    run_fit(synthetic(249, seed=50))  # exactly enough
    with pytest.raises(InputError) as err:
        run_fit(synthetic(248, seed=50))
    assert err.value.path == "measurements"
    assert err.value.detail == "248 samples; a fit with target 0.995 and 5 folds needs at least 249"


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"scope": "vm"}, "scope", "must be one of qemu, pod, node, virtqemud, virtlogd"),
        ({"hypervisor": "xen"}, "hypervisor", "must be kvm or mshv"),
        ({"arch": "*"}, "arch", "not '*'"),
        ({"target": 1.0}, "target", "strictly between 0 and 1"),
        ({"target": True}, "target", "strictly between 0 and 1"),
        ({"folds": 1}, "folds", "between 2 and 20"),
        ({"seed": -1}, "seed", "non-negative"),
        ({"new_id": "kubevirt-v1.9.0"}, "id", "an id of its own"),
        ({"new_id": ""}, "id", "non-empty"),
    ],
)
def test_bad_arguments(options: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        run_fit(synthetic(300, seed=51), **options)
    assert err.value.path == path and message in err.value.detail


def test_parent_without_a_model_for_the_hypervisor() -> None:
    only_mshv = {**PARENT, "models": PARENT["models"][1:]}
    with pytest.raises(InputError) as err:
        run_fit(synthetic(300, seed=52), parent=only_mshv)
    assert err.value.path == "parent"
    assert err.value.detail == "table 'kubevirt-v1.9.0' has no model for kvm on 'amd64'"
    with pytest.raises(InputError) as err:
        run_fit(synthetic(300, seed=52), parent={"id": "broken"})
    assert err.value.path == "parent" and "not a valid table" in err.value.detail


def test_parent_without_components_in_the_scope() -> None:
    with pytest.raises(InputError) as err:
        run_fit(synthetic(300, seed=53), scope="node")  # the upstream tables have no node group
    assert err.value.path == "parent" and "no node components" in err.value.detail


def test_samples_of_another_scope_are_refused() -> None:
    samples = samples_of(synthetic(300, seed=54))
    samples[7] = Sample("pod", 1, 1, 1)
    with pytest.raises(InputError) as err:
        calibration.fit(
            samples, PARENT, hypervisor="kvm", arch="amd64", scope="qemu", new_id="x", requested_by=None
        )
    assert err.value.path == "measurements[7].scope"


def test_out_of_range_samples_name_the_index() -> None:
    samples = samples_of(synthetic(300, seed=55))
    samples[42] = Sample("qemu", 1, 0, Gi)
    with pytest.raises(InputError) as err:
        calibration.fit(
            samples, PARENT, hypervisor="kvm", arch="amd64", scope="qemu", new_id="x", requested_by=None
        )
    assert err.value.path == "measurements[42].vm.vcpus"
    with pytest.raises(InputError) as err:
        SampleArrays.of(overhead_bytes=[1, -1], vcpus=[1, 1], guest_memory_bytes=[1, 1])
    assert err.value.path == "measurements[1].overheadBytes"
    with pytest.raises(InputError) as err:
        SampleArrays.of(overhead_bytes=[1.5], vcpus=[1], guest_memory_bytes=[1])
    assert "must hold integers" in err.value.detail
    with pytest.raises(InputError) as err:
        SampleArrays.of(overhead_bytes=[1], vcpus=[1], guest_memory_bytes=[1], graphics=[1])
    assert "must be boolean" in err.value.detail


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


def test_sample_from_record() -> None:
    record = {
        "runId": "r1",
        "sampleId": "s1",
        "scope": "pod",
        "overheadBytes": 123,
        "rawBytes": 1000,
        "vm": {
            "vcpus": 4,
            "guestMemoryBytes": Gi,
            "graphics": True,
            "ioThreads": 2,
            "vfio": False,
            "tpm": True,
            "sev": False,
            "dedicatedCpu": True,
            "downwardMetrics": True,
            "execProbes": 1,
            "vcpusOnline": False,
        },
    }
    assert calibration.sample_from_record(record) == Sample(
        "pod", 123, 4, Gi, True, 2, False, True, False, True, True, 1, False
    )
    minimal = {"scope": "qemu", "overheadBytes": 5, "vm": {"vcpus": 1, "guestMemoryBytes": 2}}
    assert calibration.sample_from_record(minimal) == Sample("qemu", 5, 1, 2)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"scope": "vm"}, "measurements[3].scope"),
        ({"overheadBytes": "5"}, "measurements[3].overheadBytes"),
        ({"overheadBytes": None}, "measurements[3].overheadBytes"),
        ({"vm": None}, "measurements[3].vm"),
        ({"vm": {"vcpus": 0, "guestMemoryBytes": 1}}, "measurements[3].vm.vcpus"),
        ({"vm": {"vcpus": True, "guestMemoryBytes": 1}}, "measurements[3].vm.vcpus"),
        ({"vm": {"vcpus": 1}}, "measurements[3].vm.guestMemoryBytes"),
        ({"vm": {"vcpus": 1, "guestMemoryBytes": 1, "graphics": 1}}, "measurements[3].vm.graphics"),
        ({"vm": {"vcpus": 1, "guestMemoryBytes": 1, "execProbes": 3}}, "measurements[3].vm.execProbes"),
    ],
)
def test_sample_from_record_errors(change: dict[str, Any], path: str) -> None:
    record = {"scope": "qemu", "overheadBytes": 5, "vm": {"vcpus": 1, "guestMemoryBytes": 2}, **change}
    with pytest.raises(InputError) as err:
        calibration.sample_from_record(record, path="measurements[3]")
    assert err.value.path == path


@pytest.mark.parametrize("pod_scope", ["pod", "qemu"])
def test_a_provisional_model_is_measured_once_both_groups_are_fitted(pod_scope: str) -> None:
    parent = copy.deepcopy(PARENT)
    parent["id"] = "with-node"
    parent["models"][1]["nodeComponents"] = [
        {"name": "partition", "term": "fixed", "quantity": "832Ki"},
        {"name": "vcpus", "term": "perVcpu", "quantity": "360Ki"},
    ]
    assert parent["models"][1]["provisional"] is True
    node_arrays = synthetic(600, seed=61, fixed=Mi, per_vcpu=400 * 1024, per_gib=0.0, graphics=0, sigma=1e4)
    after_node, _ = run_fit(node_arrays, parent=parent, hypervisor="mshv", scope="node", new_id="fit-node")
    assert model_of(after_node, "mshv").provisional  # the pod group is still upstream's copy

    after_pod, _ = run_fit(
        synthetic(600, seed=62), parent=after_node, hypervisor="mshv", scope=pod_scope, new_id="fit-both"
    )
    entry = after_pod["models"][1]
    assert (entry["arch"], entry["measuredScopes"]) == ("amd64", sorted(["node", pod_scope]))
    assert not model_of(after_pod, "mshv").provisional
    assert model_of(after_pod, "mshv", "arm64").provisional  # other arches keep the parent's "*" model


def test_a_fit_of_a_measured_model_is_not_provisional() -> None:
    document, _ = run_fit(synthetic(300, seed=63))
    assert document["models"][0]["measuredScopes"] == ["qemu"]
    assert not model_of(document).provisional
