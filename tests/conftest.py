"""Shared fixtures: a fresh application (and SQLite database) per test, its client and CLI runner."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from overhead_service import config, create_app
from overhead_service.store import get_store

ROOT = Path(__file__).resolve().parent.parent

# A VMI as virt-controller sees it: 2 vCPUs, 1Gi requested, defaults elsewhere.
_VMI: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "vm1", "namespace": "default"},
    "spec": {
        "domain": {
            "cpu": {"cores": 2},
            "resources": {"requests": {"memory": "1Gi"}},
            "devices": {},
        }
    },
}

AppFactory = Callable[..., Flask]


@pytest.fixture(autouse=True)
def _no_overhead_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they set: drop OVERHEAD_* inherited from the caller's shell."""
    for key in config.KEYS:
        monkeypatch.delenv(config.ENV_PREFIX + key, raising=False)


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[AppFactory]:
    """``create_app`` with a per-test SQLite database; keyword arguments override settings."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        settings: dict[str, Any] = {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'overhead.db'}"}
        settings.update(overrides)
        apps.append(create_app(settings))
        return apps[-1]

    yield factory
    for application in apps:
        get_store(application).dispose()


@pytest.fixture
def app(app_factory: AppFactory) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def vmi() -> dict[str, Any]:
    """A fresh copy of a typical VMI (2 cores, 1Gi requested) to modify freely."""
    return copy.deepcopy(_VMI)
