"""Shared fixtures: a fresh application (and SQLite database) per test, its client and CLI runner;
bearer tokens; a throwaway PostgreSQL cluster for the tests that run on both databases.

- ``app_factory`` / ``app`` / ``client``: the schema is created first (as ``init-db`` would), and
  two tokens are configured: ``INGEST_TOKEN`` (role ingest) and ``ADMIN_TOKEN`` (role admin);
  ``ingest_auth`` and ``admin_auth`` are their ``Authorization`` headers. Pass ``TOKENS=None``
  for an application without tokens.
- ``database_url``: parametrized over ``sqlite`` and ``postgresql``; a fresh empty database (no
  schema) per test. The PostgreSQL cluster (``postgres``, session-scoped) starts on first use,
  and a failure to start fails those tests: nothing is skipped.
- The checkout's own database (``var/overhead.db``, what ``make serve`` uses) is never touched:
  every test sees ``OVERHEAD_DATABASE_URL`` pointing at a file of its own that does not exist,
  and the session fails if ``var/overhead.db`` appeared or changed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy.exc import SQLAlchemyError

from benchmarks.harness.pg import PostgresCluster
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN, TOKENS, create_schema
from overhead_service import config, create_app
from overhead_service.extensions import get_store
from tests.support import empty_database

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

BACKENDS = ("sqlite", "postgresql")


CHECKOUT_DATABASE = ROOT / "var" / "overhead.db"


def _fingerprint(path: Path) -> tuple[int, int, str] | None:
    """Size, modification time and digest of ``path``; None when it does not exist."""
    if not path.exists():
        return None
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True, scope="session")
def _checkout_database_untouched() -> Iterator[None]:
    """The database of ``make serve`` is the user's: fail the run if a test created or changed it."""
    before = _fingerprint(CHECKOUT_DATABASE)
    yield
    after = _fingerprint(CHECKOUT_DATABASE)
    if after != before:
        what = "created" if before is None else "changed"
        pytest.fail(f"a test {what} the checkout's database {CHECKOUT_DATABASE}", pytrace=False)


@pytest.fixture(autouse=True)
def _no_overhead_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests see only the settings they set: drop OVERHEAD_* inherited from the caller's shell, and
    any Kubernetes credentials (a kubeconfig, a pod's service account), so that no application
    watches a real cluster (a test that wants a (fake) cluster says so); point the database at a
    file of the test's own that does not exist (never the checkout's)."""
    for key in config.KEYS:
        monkeypatch.delenv(config.ENV_PREFIX + key, raising=False)
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    unused = tmp_path_factory.mktemp("no-database") / "unused.db"
    monkeypatch.setenv(config.ENV_PREFIX + "DATABASE_URL", f"sqlite:///{unused}")


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[AppFactory]:
    """``create_app`` with a per-test SQLite database (schema created) and the test tokens;
    keyword arguments override settings."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        settings: dict[str, Any] = {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'overhead.db'}",
            "TOKENS": TOKENS,
            "SYNC_SECONDS": 0,  # no polling thread per test app; tests call refresh() themselves
        }
        settings.update(overrides)
        # As init-db would; a database that cannot be opened is what some tests are about.
        with contextlib.suppress(SQLAlchemyError):
            create_schema(settings["DATABASE_URL"])
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
def ingest_auth() -> dict[str, str]:
    """The ``Authorization`` header of the test token with role ``ingest``."""
    return {"Authorization": f"Bearer {INGEST_TOKEN}"}


@pytest.fixture
def admin_auth() -> dict[str, str]:
    """The ``Authorization`` header of the test token with role ``admin``."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL 15 cluster of its own for the whole session, stopped and deleted at the end."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend: a SQLite file, or a new PostgreSQL database."""
    yield from empty_database(request, request.param, tmp_path / "store.db")


@pytest.fixture
def vmi() -> dict[str, Any]:
    """A fresh copy of a typical VMI (2 cores, 1Gi requested) to modify freely."""
    return copy.deepcopy(_VMI)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need the throwaway PostgreSQL (``-m "not postgresql"`` leaves them out)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("database_url") == "postgresql"
        if on_postgres or "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgresql)
