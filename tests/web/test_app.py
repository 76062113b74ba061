"""The application factory, its settings, the store and the health probes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

import overhead_service
from overhead_service import app as app_module
from overhead_service import config
from overhead_service.extensions import SERVICE, get_store
from overhead_service.model.service import OverheadService
from tests.support import ROOT

AppFactory = Callable[..., Flask]


def test_defaults_when_nothing_is_set() -> None:
    settings = config.resolve({}, environ={})
    assert settings == {
        "DATABASE_URL": f"sqlite:///{ROOT / 'var' / 'overhead.db'}",
        "DEFAULT_ARCH": "amd64",
        "DEFAULT_TABLE": "kubevirt-v1.9.0",
        "MAX_CONTENT_LENGTH": 32 * 1024 * 1024,
        "TOKENS": None,
        "TOKENS_FILE": None,
        "SYNC_SECONDS": 2.0,
        "FIT_TARGET": 0.995,
        "ACTIVATION_MIN_SAMPLES": 250,
        "REQUEST_READ_SECONDS": 10.0,
        "LOG_LEVEL": "info",
        "ADMISSION_MODE": "shadow",
        "ADMISSION_UPSTREAM_TABLE": "kubevirt-v1.9.0",
        "KUBEVIRT_CONFIGURATION": None,
        "KUBEVIRT_NAMESPACE": None,
    }


def test_environment_overrides_defaults() -> None:
    environ = {
        "OVERHEAD_DATABASE_URL": "sqlite:////tmp/elsewhere.db",
        "OVERHEAD_DEFAULT_ARCH": "arm64",
        "OVERHEAD_DEFAULT_TABLE": "kubevirt-main",
        "OVERHEAD_MAX_CONTENT_LENGTH": "4096",
        "DEFAULT_ARCH": "s390x",  # unprefixed: not ours
    }
    settings = config.resolve(None, environ=environ)
    assert settings["DATABASE_URL"] == "sqlite:////tmp/elsewhere.db"
    assert settings["DEFAULT_ARCH"] == "arm64"
    assert settings["DEFAULT_TABLE"] == "kubevirt-main"
    assert settings["MAX_CONTENT_LENGTH"] == 4096


def test_mapping_overrides_environment() -> None:
    environ = {"OVERHEAD_DEFAULT_ARCH": "arm64", "OVERHEAD_MAX_CONTENT_LENGTH": "4096"}
    settings = config.resolve({"DEFAULT_ARCH": "s390x", "TESTING": True}, environ=environ)
    assert settings["DEFAULT_ARCH"] == "s390x"
    assert settings["MAX_CONTENT_LENGTH"] == 4096  # not in the mapping: the environment still counts
    assert settings["TESTING"] is True  # other keys pass through to Flask


def test_factory_reads_os_environ(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERHEAD_DEFAULT_ARCH", "arm64")
    monkeypatch.setenv("OVERHEAD_DEFAULT_TABLE", "kubevirt-main")
    app = app_factory()
    assert app.config["DEFAULT_ARCH"] == "arm64"
    answer = app.test_client().post("/v1/overhead", json={"vmi": {}}).get_json()
    assert answer["cpuArch"] == "arm64"
    assert answer["table"]["id"] == "kubevirt-main"
    assert app_factory(DEFAULT_ARCH="ppc64le").config["DEFAULT_ARCH"] == "ppc64le"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_CONTENT_LENGTH", "lots"),
        ("MAX_CONTENT_LENGTH", "0"),
        ("DEFAULT_ARCH", ""),
    ],
)
def test_bad_environment_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"OVERHEAD_{key}"):
        config.resolve(None, environ={f"OVERHEAD_{key}": value})


def test_bad_mapping_values_are_refused() -> None:
    with pytest.raises(ValueError, match="config key MAX_CONTENT_LENGTH"):
        config.resolve({"MAX_CONTENT_LENGTH": True}, environ={})


def test_unknown_default_table_fails_at_start_up(app_factory: AppFactory) -> None:
    with pytest.raises(ValueError, match="'no-such-table' is not a known table"):
        app_factory(DEFAULT_TABLE="no-such-table")


def test_package_exports() -> None:
    assert overhead_service.__all__ == sorted(overhead_service.__all__)
    for name in overhead_service.__all__:
        assert getattr(overhead_service, name) is not None
    assert overhead_service.create_app is app_module.create_app


def test_service_is_built_once_per_app(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[OverheadService] = []

    def counting(*args: Any, **kwargs: Any) -> OverheadService:
        built.append(OverheadService(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr("overhead_service.app.OverheadService", counting)
    app = app_factory()
    client = app.test_client()
    for _ in range(3):
        assert client.post("/v1/overhead", json={"vmi": {}}).status_code == 200
    assert len(built) == 1
    assert app.extensions[SERVICE] is built[0]


def test_sqlite_database_is_created_with_wal_and_busy_timeout(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    db = tmp_path / "overhead.db"
    app = app_factory(DATABASE_URL=f"sqlite:///{db}")
    with get_store(app).engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert db.is_file()


def test_the_store_creates_no_directory(app_factory: AppFactory, tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "overhead.db"
    app = app_factory(DATABASE_URL=f"sqlite:///{db}")  # starts, and says so in /readyz
    assert app.test_client().get("/readyz").get_json()["checks"]["database"] == "failed"
    assert not db.parent.exists()


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


def test_readyz_when_ready(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "checks": {"tables": "ok", "database": "ok", "schema": "ok"},
    }


def test_readyz_503_when_database_unreachable(app_factory: AppFactory, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database directory should be")
    app = app_factory(DATABASE_URL=f"sqlite:///{blocker / 'overhead.db'}")  # starts anyway
    client = app.test_client()

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 503
    assert body["checks"] == {"tables": "ok", "database": "failed", "schema": "failed"}
    assert "database" in body["detail"]

    # Liveness does not depend on the database, and neither does the hot path.
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/overhead", json={"vmi": {}}).status_code == 200


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SYNC_SECONDS", "-1"),
        ("SYNC_SECONDS", "soon"),
        ("FIT_TARGET", "1.5"),
        ("ACTIVATION_MIN_SAMPLES", "2.5"),
        ("REQUEST_READ_SECONDS", "0"),
        ("REQUEST_READ_SECONDS", "later"),
    ],
)
def test_bad_numeric_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        config.resolve({}, environ={f"OVERHEAD_{key}": value})


def test_numeric_settings_from_the_environment() -> None:
    settings = config.resolve(
        {},
        environ={
            "OVERHEAD_SYNC_SECONDS": "0.5",
            "OVERHEAD_FIT_TARGET": "0.99",
            "OVERHEAD_ACTIVATION_MIN_SAMPLES": "100",
        },
    )
    assert (settings["SYNC_SECONDS"], settings["FIT_TARGET"], settings["ACTIVATION_MIN_SAMPLES"]) == (
        0.5,
        0.99,
        100,
    )
