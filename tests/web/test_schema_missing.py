"""Started without ``init-db`` (a bare gunicorn on the factory), every database route answers a 503
``schema-missing`` problem naming ``overhead-service init-db``, and ``/readyz`` says the same; a
database that cannot be reached is a 503 ``database-unavailable``. Never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from benchmarks.harness.records import record
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN, TOKENS
from overhead_service import create_app
from overhead_service.errors import PROBLEM_BASE
from overhead_service.extensions import get_store

INGEST = {"Authorization": f"Bearer {INGEST_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SELECTOR = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu"}

# Every route that reads or writes the database, with a request that gets that far.
DATABASE_ROUTES: dict[str, tuple[str, str, dict[str, str], Any]] = {
    "list-measurements": ("GET", "/v1/measurements", {}, None),
    "upload-measurements": ("POST", "/v1/measurements", INGEST, {"records": [record()]}),
    "fit": ("POST", "/v1/fits", ADMIN, SELECTOR),
    "report": ("GET", "/v1/tables/kubevirt-v1.9.0/report", {}, None),
    "evaluate": ("POST", "/v1/tables/kubevirt-v1.9.0/evaluate", {}, SELECTOR),
    "activate": (
        "POST",
        "/v1/tables/kubevirt-v1.9.0/activate",
        ADMIN,
        {"hypervisor": "kvm", "arch": "amd64", "force": True, "reason": "test"},
    ),
    "rollback": (
        "POST",
        "/v1/tables/kubevirt-v1.9.0/rollback",
        ADMIN,
        {"hypervisor": "kvm", "arch": "amd64"},
    ),
    "activations": ("GET", "/v1/activations", {}, None),
}


def _app(url: str) -> Flask:
    return create_app({"TESTING": True, "DATABASE_URL": url, "TOKENS": TOKENS, "SYNC_SECONDS": 0})


@pytest.fixture
def bare_app(tmp_path: Path) -> Iterator[Flask]:
    """As a bare ``gunicorn 'overhead_service:create_app()'`` would have it: no schema created."""
    app = _app(f"sqlite:///{tmp_path / 'no-schema.db'}")
    yield app
    get_store(app).dispose()


@pytest.mark.parametrize("route", DATABASE_ROUTES)
def test_every_database_route_answers_503_schema_missing(bare_app: Flask, route: str) -> None:
    method, path, headers, body = DATABASE_ROUTES[route]
    response = bare_app.test_client().open(path, method=method, headers=headers, json=body)
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == PROBLEM_BASE + "schema-missing"
    assert problem["status"] == 503
    assert "overhead-service init-db" in problem["detail"]


def test_readyz_names_init_db(bare_app: Flask) -> None:
    response = bare_app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["schema"] == "failed"
    assert "overhead-service init-db" in body["detail"]


def test_routes_work_once_the_schema_exists(bare_app: Flask) -> None:
    get_store(bare_app).create_schema()
    client = bare_app.test_client()
    assert client.get("/v1/measurements").status_code == 200
    assert client.get("/v1/activations").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_an_unreachable_database_is_503_database_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("where the database's directory should be")
    app = _app(f"sqlite:///{blocker / 'overhead.db'}")
    try:
        response = app.test_client().get("/v1/measurements")
    finally:
        get_store(app).dispose()
    assert response.status_code == 503
    problem = response.get_json()
    assert problem["type"] == PROBLEM_BASE + "database-unavailable"
    assert "/readyz" in problem["detail"]
