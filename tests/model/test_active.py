"""Which table a request gets when it names none: the active one for its hypervisor and arch."""

from __future__ import annotations

import pytest

from overhead_service.errors import UnknownTable
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

VMI = {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}


@pytest.fixture
def service() -> OverheadService:
    return OverheadService(TableRegistry.builtin())


def test_default_until_something_is_activated(service: OverheadService) -> None:
    assert service.compute({"vmi": VMI})["table"]["id"] == "kubevirt-v1.9.0"
    assert service.table_for("mshv", "arm64") == "kubevirt-v1.9.0"


def test_activation_applies_to_its_hypervisor_and_arch_only(service: OverheadService) -> None:
    before = service.compute({"vmi": VMI})  # remembered under the old choice
    service.set_active({("kvm", "amd64"): "kubevirt-main"})
    after = service.compute({"vmi": VMI})
    assert after["table"]["id"] == "kubevirt-main"
    assert after["overhead"]["bytes"] == before["overhead"]["bytes"] + 20 * 1024**2  # QEMU 30Mi -> 50Mi
    assert service.compute({"vmi": VMI, "cpuArch": "arm64"})["table"]["id"] == "kubevirt-v1.9.0"
    assert service.compute({"vmi": VMI, "hypervisor": "mshv"})["table"]["id"] == "kubevirt-v1.9.0"
    assert service.compute({"vmi": VMI, "table": "kubevirt-v1.9.0"})["table"]["id"] == "kubevirt-v1.9.0"


def test_an_exact_arch_beats_the_wildcard(service: OverheadService) -> None:
    service.set_active({("mshv", "*"): "mshv-l1vh-provisional", ("mshv", "arm64"): "kubevirt-main"})
    assert service.compute({"vmi": VMI, "hypervisor": "mshv"})["table"]["id"] == "mshv-l1vh-provisional"
    arm = service.compute({"vmi": VMI, "hypervisor": "mshv", "cpuArch": "arm64"})
    assert arm["table"]["id"] == "kubevirt-main"
    assert service.active == {("mshv", "*"): "mshv-l1vh-provisional", ("mshv", "arm64"): "kubevirt-main"}


def test_unknown_tables_cannot_be_activated(service: OverheadService) -> None:
    with pytest.raises(UnknownTable):
        service.set_active({("kvm", "amd64"): "no-such-table"})
    assert service.active == {}
