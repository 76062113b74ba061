"""A third-party generated client works against the real server: openapi-python-client builds an
httpx client from ``openapi.yaml`` (offline, into a temporary folder; nothing generated is kept),
and its parsed answers for overhead, batch and render equal what the service computes in-process.
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import TOKENS
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from tests.support import ROOT

pytestmark = pytest.mark.gunicorn

BIN = Path(sys.executable).parent
PACKAGE = "generated_overhead_client"

VMI: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "vm1", "namespace": "default"},
    "spec": {
        "domain": {
            "cpu": {"cores": 2},
            "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "memory": {"hugepages": {"pageSize": "2Mi"}, "guest": "512Mi"},
            "devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
        }
    },
}


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client generated from openapi.yaml, imported from a temporary folder."""
    folder = tmp_path_factory.mktemp("generated")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hook
    command = [str(BIN / "openapi-python-client"), "generate", "--path", str(ROOT / "openapi.yaml")]
    command += ["--meta", "none", "--output-path", str(folder / PACKAGE), "--overwrite"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every schema is generated: the generator drops (and reports) any it cannot process.
    assert "Unable to process schema" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    database = tmp_path_factory.mktemp("server") / "overhead.db"
    with GunicornServer(f"sqlite:///{database}", tokens=TOKENS, workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def api(client_package: ModuleType, server: GunicornServer) -> Iterator[Any]:
    with client_package.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def local() -> OverheadService:
    """The same service in-process: the server has the built-in tables and no activations."""
    return OverheadService(TableRegistry.builtin())


def module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_overhead(client_package: ModuleType, api: Any, local: OverheadService) -> None:
    models = module(client_package, "models")
    compute = module(client_package, "api.overhead.compute_overhead")
    body = {"vmi": VMI, "cpuArch": "arm64", "table": "kubevirt-main"}
    response = compute.sync_detailed(client=api, body=models.OverheadRequest.from_dict(copy.deepcopy(body)))
    assert response.status_code == 200, response.content
    assert isinstance(response.parsed, models.OverheadAnswer)
    assert response.parsed.to_dict() == local.compute(body)
    assert response.parsed.hypervisor.device_resource == "devices.kubevirt.io/kvm"


def test_overhead_batch(client_package: ModuleType, api: Any, local: OverheadService) -> None:
    models = module(client_package, "models")
    batch = module(client_package, "api.overhead.compute_overhead_batch")
    items: list[Any] = [
        {"vmi": VMI},
        {"vmi": VMI, "hypervisor": "mshv"},
        {"vmi": {"spec": {"domain": {"cpu": []}}}},
    ]
    request = models.BatchRequest.from_dict({"items": copy.deepcopy(items)})
    response = batch.sync_detailed(client=api, body=request)
    assert response.status_code == 200, response.content
    parsed = response.parsed
    assert isinstance(parsed, models.BatchAnswer)
    assert [type(item) for item in parsed.items] == [
        models.OverheadAnswer,
        models.OverheadAnswer,
        models.InputProblem,
    ]
    assert [item.to_dict() for item in parsed.items] == local.compute_batch(items)
    assert parsed.items[2].errors[0].path == "items[2].vmi.spec.domain.cpu"


def test_render(client_package: ModuleType, api: Any, local: OverheadService) -> None:
    models = module(client_package, "models")
    render_api = module(client_package, "api.overhead.render_resources")
    body = {
        "vmi": VMI,
        "kubevirtConfiguration": {
            "developerConfiguration": {"cpuAllocationRatio": 4, "featureGates": ["ConfigurableHypervisor"]},
            "hypervisors": [{"name": "hyperv-direct"}],
            "autoCPULimitNamespaceLabelSelector": {"matchLabels": {"team": "a"}},
        },
        "namespace": {"labels": {"team": "a"}, "resourceQuotaLimitsMemory": True},
    }
    response = render_api.sync_detailed(client=api, body=models.RenderRequest.from_dict(copy.deepcopy(body)))
    assert response.status_code == 200, response.content
    parsed = response.parsed
    assert isinstance(parsed, models.RenderAnswer)
    expected = render(body, local)
    assert parsed.to_dict() == expected
    # the parts a caller reads, through the generated attributes
    assert parsed.resources.limits["devices.kubevirt.io/mshv"] == "1"
    assert parsed.resources.requests["hugepages-2Mi"] == "512Mi"
    assert parsed.resources.limits["cpu"] == "2"
    annotation = parsed.annotations.to_dict()["kubevirt.io/memory-overhead-bytes"]
    assert annotation == str(parsed.overhead.bytes_) == str(expected["overhead"]["bytes"])


@pytest.mark.parametrize(
    ("operation", "body", "path"),
    [
        (
            "compute_overhead",
            {"vmi": {"spec": {"domain": {"cpu": {"cores": "two"}}}}},
            "vmi.spec.domain.cpu.cores",
        ),
        (
            "render_resources",
            {"vmi": VMI, "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": -1}}},
            "kubevirtConfiguration.developerConfiguration.memoryOvercommit",
        ),
    ],
)
def test_422_parses_into_the_problem_model(
    client_package: ModuleType, api: Any, operation: str, body: dict[str, Any], path: str
) -> None:
    models = module(client_package, "models")
    call = module(client_package, f"api.overhead.{operation}")
    request_model = models.OverheadRequest if operation == "compute_overhead" else models.RenderRequest
    response = call.sync_detailed(client=api, body=request_model.from_dict(copy.deepcopy(body)))
    assert response.status_code == 422
    assert isinstance(response.parsed, models.InputProblem)
    assert response.parsed.status == 422
    assert response.parsed.errors[0].path == path
