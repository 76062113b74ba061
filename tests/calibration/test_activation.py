"""Fitted-table ids and the activation bar."""

from __future__ import annotations

from typing import Any

import pytest

from overhead_service.calibration.activation import check_activation, fit_id, wilson_upper
from overhead_service.errors import ActivationRefused, InputError


def _fitted(**fit: Any) -> dict[str, Any]:
    held_out = {"coverage": 0.9925, "covered": 397, "samples": 400}
    held_out.update(fit.pop("heldOut", {}))
    base = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "samples": 400, "target": 0.995}
    return {"id": "fit-kvm-amd64-qemu-abc", "fit": {**base, **fit, "heldOut": held_out}}


def _ids(**change: Any) -> str:
    inputs: dict[str, Any] = {
        "parent": "kubevirt-v1.9.0",
        "hypervisor": "kvm",
        "arch": "amd64",
        "scope": "qemu",
        "target": 0.995,
        "folds": 5,
        "seed": 0,
        "measurement_ids": [3, 1, 2],
    }
    inputs.update(change)
    return fit_id(**inputs)


def test_fit_ids_name_their_inputs() -> None:
    assert _ids().startswith("fit-kvm-amd64-qemu-")
    assert _ids() == _ids(measurement_ids=[1, 2, 3])  # the order measurements arrive in is irrelevant
    for change in (
        {"seed": 1},
        {"target": 0.99},
        {"measurement_ids": [1, 2]},
        {"parent": "kubevirt-main"},
        {"scope": "pod"},
        {"folds": 10},
    ):
        assert _ids(**change) != _ids(), change
    assert _ids(arch="*").startswith("fit-kvm-any-qemu-")


def test_a_table_that_earns_it_is_activated() -> None:
    facts = check_activation(
        _fitted(), hypervisor="kvm", arch="amd64", min_samples=30, force=False, reason=None
    )
    # 397 of 400 is 0.9925, under 0.995 but not significantly: a conformal margin lands either side.
    assert facts is not None and facts["heldOutCoverage"] == 0.9925


@pytest.mark.parametrize(
    ("fit", "target", "message"),
    [
        ({"heldOut": {"coverage": 0.95, "covered": 380}}, ("kvm", "amd64"), "significantly below"),
        (
            {"heldOut": {"coverage": 0.99, "covered": 3960, "samples": 4000}},
            ("kvm", "amd64"),
            "significantly below",
        ),
        ({"samples": 10}, ("kvm", "amd64"), "fewer than the 30 required"),
        ({}, ("mshv", "amd64"), "fitted for kvm/amd64"),
        ({}, ("kvm", "arm64"), "fitted for kvm/amd64"),
        ({"heldOut": {"covered": None}}, ("kvm", "amd64"), "no held-out coverage"),
    ],
)
def test_a_table_that_does_not_is_refused(fit: dict[str, Any], target: tuple[str, str], message: str) -> None:
    with pytest.raises(ActivationRefused) as raised:
        check_activation(
            _fitted(**fit), hypervisor=target[0], arch=target[1], min_samples=30, force=False, reason=None
        )
    assert message in raised.value.detail
    assert raised.value.status == 409


def test_a_fit_missing_its_facts_is_refused_without_saying_none() -> None:
    with pytest.raises(ActivationRefused) as raised:
        check_activation(
            _fitted(hypervisor=None, arch=None, samples=None),
            hypervisor="kvm",
            arch="amd64",
            min_samples=30,
            force=False,
            reason=None,
        )
    detail = raised.value.detail
    assert "None" not in detail
    assert "fitted for an unrecorded hypervisor/an unrecorded arch" in detail
    assert "records no sample count" in detail


def test_upstream_tables_need_force_and_a_reason() -> None:
    upstream = {"id": "kubevirt-main"}
    with pytest.raises(ActivationRefused):
        check_activation(upstream, hypervisor="kvm", arch="amd64", min_samples=30, force=False, reason=None)
    with pytest.raises(InputError) as raised:
        check_activation(upstream, hypervisor="kvm", arch="amd64", min_samples=30, force=True, reason="  ")
    assert raised.value.path == "reason"
    assert (
        check_activation(
            upstream,
            hypervisor="kvm",
            arch="amd64",
            min_samples=30,
            force=True,
            reason="match the cluster's KubeVirt",
        )
        is None
    )


@pytest.mark.parametrize(
    ("covered", "samples", "low", "high"),
    [(397, 400, 0.995, 0.9985), (380, 400, 0.96, 0.97), (400, 400, 0.9999, 1.0), (0, 10, 0.2, 0.25)],
)
def test_wilson_upper_bound(covered: int, samples: int, low: float, high: float) -> None:
    assert low <= wilson_upper(covered, samples) <= high
