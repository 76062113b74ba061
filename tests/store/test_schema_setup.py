"""The schema is created once, outside the workers: ``init-db``, gunicorn's ``on_starting``; never
by ``create_app``, and ``/readyz`` says so until it exists."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from overhead_service import cli, create_app, gunicorn_conf
from overhead_service.extensions import get_store
from overhead_service.store import SCHEMA_VERSION, Store


def _tables(url: str) -> set[str]:
    store = Store(url)
    try:
        return set(inspect(store.engine).get_table_names())
    finally:
        store.dispose()


def test_create_app_does_not_create_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    app = create_app({"TESTING": True, "DATABASE_URL": url})
    try:
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["checks"] == {"tables": "ok", "database": "ok", "schema": "failed"}
        assert body["detail"].startswith("not ready: schema check failed; ")
        assert "overhead-service init-db" in body["detail"]
        assert "measurements" not in _tables(url)
        assert (
            client.post("/v1/overhead", json={"vmi": {}}).status_code == 200
        )  # the hot path needs no database

        get_store(app).create_schema()
        assert client.get("/readyz").status_code == 200
    finally:
        get_store(app).dispose()


def test_init_db_creates_the_schema_and_can_run_again(database_url: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(cli.main, ["init-db", "--database-url", database_url])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"schema version {SCHEMA_VERSION} ready in ")
    assert {"schema_version", "state", "measurements", "calibration_tables", "activations"} <= _tables(
        database_url
    )


def test_init_db_reads_the_database_url_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("OVERHEAD_DATABASE_URL", url)
    result = CliRunner().invoke(cli.main, ["init-db"])
    assert result.exit_code == 0, result.output
    assert "measurements" in _tables(url)


def test_init_db_hides_the_password_and_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli.main, ["init-db", "--database-url", f"sqlite:///{blocker}/x.db"])
    assert result.exit_code == 2  # a mistake in the URL: said in one line, nothing created
    assert f"the SQLite database's directory {blocker} is not a directory (--database-url)" in result.stderr

    # A directory where the database file should be: SQLite cannot open it.
    result = CliRunner().invoke(cli.main, ["init-db", "--database-url", f"sqlite:///{tmp_path}"])
    assert result.exit_code == 1
    assert "init-db: cannot create the schema in sqlite:///" in result.stderr

    # PostgreSQL on a closed port: the message names the URL without its password.
    result = CliRunner().invoke(
        cli.main,
        ["init-db", "--database-url", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db?connect_timeout=2"],
    )
    assert result.exit_code == 1
    assert "postgresql+psycopg://u:***@127.0.0.1:1/db" in result.stderr
    assert "s3cret" not in result.stderr


def test_gunicorn_creates_the_schema_in_the_master(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'gunicorn.db'}"
    monkeypatch.setenv("OVERHEAD_DATABASE_URL", url)
    # This process has imported prometheus_client already: the hook insists on a metrics directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    gunicorn_conf.on_starting(SimpleNamespace())
    gunicorn_conf.on_starting(SimpleNamespace())  # a restart: nothing to do
    assert "activations" in _tables(url)


def test_gunicorn_refuses_to_start_without_a_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OVERHEAD_DATABASE_URL", f"sqlite:///{blocker}/x.db")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    with pytest.raises(Exception, match="unable to open database file"):
        gunicorn_conf.on_starting(SimpleNamespace())
