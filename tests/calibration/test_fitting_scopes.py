"""Fits of several scopes at once: shared parameters, each sample constraining the components its
scope covers, a fixed part and a margin per scope, the held-out coverage of each scope."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from overhead_service import calibration
from overhead_service.calibration import SampleArrays, ScopedSamples, check_activation
from overhead_service.calibration.prediction import predict_arrays
from overhead_service.errors import ActivationRefused, InputError, NotEnoughData
from overhead_service.model.tables import TableRegistry, compile_table
from tests.calibration.test_fitting import PARENT, Gi, Mi, model_of, run_fit, synthetic

DAEMONS = {"virtqemud": 6.8 * Mi, "virtlogd": 2.4 * Mi}
LAUNCHER = 200 * Mi  # what a whole pod holds beyond QEMU, in the synthetic pods


def _daemon(scope: str, n: int, seed: int) -> SampleArrays:
    """A daemon's samples: a constant and a little noise, whatever the domain's shape (which varies)."""
    shaped = synthetic(n, seed, sigma=0)  # shapes only: the overhead is replaced
    rng = np.random.default_rng(seed + 100)
    overhead = np.round(DAEMONS[scope] + rng.normal(0, 0.05 * Mi, n)).astype(np.int64)
    return SampleArrays.of(
        overhead_bytes=overhead,
        vcpus=shaped.vcpus,
        guest_memory_bytes=shaped.guest_memory_bytes,
        graphics=shaped.graphics,
        io_threads=shaped.io_threads,
    )


def _libvirt(n: int = 400, seed: int = 1) -> ScopedSamples:
    return ScopedSamples.of(
        {
            "qemu": synthetic(n, seed),
            "virtqemud": _daemon("virtqemud", n, seed),
            "virtlogd": _daemon("virtlogd", n, seed),
        }
    )


@pytest.fixture(scope="module")
def libvirt_fit() -> tuple[dict[str, Any], calibration.FitSummary, ScopedSamples]:
    samples = _libvirt()
    draft, summary = run_fit(samples, scope=["virtlogd", "qemu", "virtqemud"])  # any order
    return draft, summary, samples


def test_each_scope_gets_its_fixed_part_and_margin(libvirt_fit: Any) -> None:
    draft, summary, _ = libvirt_fit
    assert summary.scope == ["qemu", "virtqemud", "virtlogd"]  # SCOPES order
    fit = summary.to_json()
    assert fit["fixedPart"] == {"qemu": "qemu", "virtqemud": "virtqemud", "virtlogd": "virtlogd"}
    assert set(fit["marginBytes"]) == {"qemu", "virtqemud", "virtlogd"}
    components = {
        c["name"]: c for c in next(m for m in draft["models"] if m["arch"] == "amd64")["components"]
    }
    for daemon, truth in DAEMONS.items():
        estimate = summary.component(daemon).estimate
        assert estimate is not None and abs(estimate - truth) < 0.02 * Mi
        assert int(components[daemon]["quantity"]) >= truth + fit["marginBytes"][daemon] - 0.02 * Mi
        assert components[daemon]["doc"] == "fitted by fit-test from 400 " + daemon + " measurements"
    assert components["qemu"]["doc"] == "fitted by fit-test from 400 qemu measurements"
    # What no scope measured keeps upstream's constants.
    for kept in ("virtLauncher", "virtLauncherMonitor"):
        assert components[kept] == next(c for c in PARENT["models"][0]["components"] if c["name"] == kept)
    assert draft["title"].startswith(
        "kvm/amd64 qemu+virtqemud+virtlogd overhead fitted from 1200 measurements"
    )


def test_disjoint_scopes_fit_as_if_apart(libvirt_fit: Any) -> None:
    """No daemon sample says anything about QEMU's per-vCPU or per-GiB constants (its columns are
    zero there), so the QEMU estimates are those of a fit on the QEMU samples alone."""
    _, summary, samples = libvirt_fit
    _, alone = run_fit(samples.part("qemu"))
    for name, parameter in (
        ("qemu", "quantity"),
        ("vcpus", "quantity"),
        ("pagetables", "coefficient"),
        ("video", "quantity"),
    ):
        together, apart = (
            summary.component(name, parameter).estimate,
            alone.component(name, parameter).estimate,
        )
        assert together is not None and apart is not None
        assert together == pytest.approx(apart, rel=1e-9)


def test_each_scope_is_covered_held_out_and_in_sample(libvirt_fit: Any) -> None:
    draft, summary, samples = libvirt_fit
    held = summary.held_out
    assert set(held["perScope"]) == {"qemu", "virtqemud", "virtlogd"}
    for scope, part in held["perScope"].items():
        assert part["samples"] == 400 and part["coverage"] >= 0.98, scope
    assert held["samples"] == 1200 and held["covered"] == sum(p["covered"] for p in held["perScope"].values())
    assert all(set(fold["marginBytes"]) == {"qemu", "virtqemud", "virtlogd"} for fold in held["perFold"])
    model = model_of(draft)
    for scope in samples.scopes:
        part = samples.part(scope)
        predicted = predict_arrays(model, scope, part, "amd64")
        assert np.mean(predicted >= part.overhead_bytes) >= 0.99, scope
        assert summary.evaluation[scope]["n"] == 400
    assert set(summary.over_provisioning) == set(summary.residuals) == {"qemu", "virtqemud", "virtlogd"}


def test_pod_and_qemu_samples_constrain_the_same_qemu_constants() -> None:
    """A pod is QEMU plus the per-process constants: pod samples from a cluster and qemu samples from
    a node share QEMU's parameters; the pod's own fixed part (the first constant only the pod has)
    takes what the pod holds beyond them, and its margin comes after QEMU's."""
    qemu = synthetic(300, 3)
    pods = synthetic(300, 4, fixed=LAUNCHER + 38 * Mi)
    draft, summary = run_fit(
        ScopedSamples.of({"qemu": qemu, "pod": pods}), scope=["pod", "qemu"], target=0.99
    )
    fit = summary.to_json()
    assert fit["fixedPart"] == {"qemu": "qemu", "pod": "virtLauncherMonitor"}
    monitor = summary.component("virtLauncherMonitor")
    kept = sum(
        int(c["quantity"][:-2]) * Mi
        for c in PARENT["models"][0]["components"]
        if c["name"] in ("virtLauncher", "virtlogd", "virtqemud")
    )
    assert monitor.estimate is not None and abs(monitor.estimate - (LAUNCHER - kept)) < 0.2 * Mi
    gib = summary.component("pagetables", "coefficient").estimate
    assert gib is not None and abs(gib * Gi - 2.1 * Mi) < 0.05 * Mi  # both scopes' slope, shared
    per_scope = fit["heldOut"]["perScope"]
    assert per_scope["qemu"]["coverage"] >= 0.97 and per_scope["pod"]["coverage"] >= 0.97
    model = model_of(draft)
    for scope, part in (("qemu", qemu), ("pod", pods)):
        assert np.mean(predict_arrays(model, scope, part, "amd64") >= part.overhead_bytes) >= 0.98, scope


def test_scope_lists_and_their_samples_are_checked() -> None:
    samples = _libvirt(60)
    for scope, path, message in (
        (["qemu", "qemu"], "scope[1]", "given twice"),
        (["qemu", "node"], "scope[1]", "node is fitted alone"),
        ([], "scope", "non-empty array"),
        (["qemu", "vm"], "scope[1]", "must be one of"),
    ):
        with pytest.raises(InputError) as caught:
            run_fit(samples, scope=scope, target=0.9)
        assert (caught.value.path, message in caught.value.detail) == (path, True)
    with pytest.raises(InputError, match="are of qemu, virtqemud, virtlogd, not qemu, virtqemud"):
        run_fit(samples, scope=["qemu", "virtqemud"], target=0.9)
    with pytest.raises(InputError, match="several scopes need ScopedSamples"):
        run_fit(samples.part("qemu"), scope=["qemu", "virtqemud"], target=0.9)
    short = ScopedSamples.of({"qemu": synthetic(200, 1), "virtlogd": _daemon("virtlogd", 40, 1)})
    with pytest.raises(NotEnoughData, match="40 virtlogd samples; a fit with target 0.99 and 5 folds needs"):
        run_fit(short, scope=["qemu", "virtlogd"], target=0.99)


def test_sample_objects_of_several_scopes() -> None:
    scoped = _libvirt(60)
    objects = [scoped.part(s).sample(i, s) for s in scoped.scopes for i in range(60)]
    draft, summary = calibration.fit(
        objects,
        PARENT,
        hypervisor="kvm",
        arch="amd64",
        scope=list(scoped.scopes),
        target=0.9,
        new_id="x",
        requested_by=None,
    )
    assert draft == run_fit(scoped, scope=list(scoped.scopes), target=0.9, new_id="x", requested_by=None)[0]
    with pytest.raises(InputError, match=r"measurements\[0\].scope"):
        calibration.fit(
            objects,
            PARENT,
            hypervisor="kvm",
            arch="amd64",
            scope=["virtqemud", "virtlogd"],
            new_id="x",
            requested_by=None,
        )


def test_the_new_scopes_map_to_their_components() -> None:
    model = model_of(PARENT)
    assert [c.name for c in calibration.scope_components(model, "virtqemud")] == ["virtqemud"]
    assert [c.name for c in calibration.scope_components(model, "virtlogd")] == ["virtlogd"]
    # A daemon fitted alone: its own constant is the fixed part, nothing else changes.
    draft, summary = run_fit(_daemon("virtlogd", 300, 2), scope="virtlogd", target=0.99)
    assert summary.fixed_part == "virtlogd" and summary.scope == "virtlogd"
    changed = [
        c["name"]
        for c, before in zip(draft["models"][0]["components"], PARENT["models"][0]["components"], strict=True)
        if c != before
    ]
    assert changed == ["virtlogd"]


def test_activation_asks_every_scope_to_meet_the_target(libvirt_fit: Any) -> None:
    draft, _, _ = libvirt_fit
    arguments: dict[str, Any] = {
        "hypervisor": "kvm",
        "arch": "amd64",
        "min_samples": 250,
        "force": False,
        "reason": None,
    }
    assert check_activation(draft, **arguments) is not None
    worse = copy.deepcopy(draft)
    worse["fit"]["heldOut"]["perScope"]["virtlogd"].update(covered=360, coverage=0.9)
    with pytest.raises(
        ActivationRefused, match=r"virtlogd: held-out coverage 360/400 = 0.9000 is significantly below"
    ):
        check_activation(worse, **arguments)


def test_a_registry_serves_the_fitted_daemons(libvirt_fit: Any) -> None:
    draft, _, _ = libvirt_fit
    registry = TableRegistry.builtin()
    registry.add(compile_table({**draft, "id": "fit-scopes"}))
    table = registry.get("fit-scopes")
    model = table.model_for("kvm", "amd64")
    assert model is not None
    names = {c.name: c for c in model.components}
    assert names["virtqemud"].constant is not None and names["virtqemud"].constant.value() < 40 * Mi


def test_cluster_pods_with_the_local_libvirt_path() -> None:
    """Pods from the cluster Job and QEMU and daemons from the libvirt path, in one fit: each daemon
    is fitted from its own samples, the pod's fixed part takes what the pods hold beyond everything
    else (virt-launcher keeps upstream's constant: it is not separable from the monitor)."""
    scoped = ScopedSamples.of(
        {
            "qemu": synthetic(300, 1),
            "pod": synthetic(300, 2, fixed=LAUNCHER + 38 * Mi + sum(DAEMONS.values())),
            "virtqemud": _daemon("virtqemud", 300, 3),
            "virtlogd": _daemon("virtlogd", 300, 4),
        }
    )
    _, summary = run_fit(scoped, scope=["pod", "qemu", "virtqemud", "virtlogd"], target=0.99)
    fit = summary.to_json()
    assert fit["fixedPart"] == {
        "qemu": "qemu",
        "pod": "virtLauncherMonitor",
        "virtqemud": "virtqemud",
        "virtlogd": "virtlogd",
    }
    assert summary.component("virtLauncher").reason == "collinear with virtLauncherMonitor"
    for daemon, truth in DAEMONS.items():
        estimate = summary.component(daemon).estimate
        assert estimate is not None and abs(estimate - truth) < 0.02 * Mi
    monitor = summary.component("virtLauncherMonitor").estimate
    assert monitor is not None and abs(monitor - (LAUNCHER - 100 * Mi)) < 0.3 * Mi
    assert all(part["coverage"] >= 0.97 for part in fit["heldOut"]["perScope"].values())
