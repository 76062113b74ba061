"""User mistakes on the command line: never a traceback, always one line (or the problem document)
on stderr and exit status 2; a database directory that does not exist is reported, not created;
``serve`` refuses a bad setting with one JSON log line naming the variable, before it makes
anything (no metrics directory left behind)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from overhead_service import cli


def _invoke(args: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> Result:
    result = CliRunner().invoke(cli.main, args, env=env, input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output + result.stderr
    return result


def _one_line_mistake(result: Result) -> str:
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "document",
    [
        b"[" * 100_000 + b"]" * 100_000,  # JSON
        b"{vmi: " + b"[" * 100_000,  # YAML flow collections
        b"".join(b"  " * depth + b"- \n" for depth in range(5_000)),  # YAML block sequences
    ],
    ids=["json", "yaml-flow", "yaml-block"],
)
def test_a_deeply_nested_file_is_a_problem(tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "deep.yaml"
    path.write_bytes(document)
    for command in ("compute", "render"):
        problem = json.loads(_one_line_mistake(_invoke([command, str(path)])))
        assert problem["status"] == 400 or problem["status"] == 422
        assert problem["errors"][0]["path"] == ""


def test_an_unwritable_out_is_one_line_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "report.html"
    line = _one_line_mistake(_invoke(["report", "kubevirt-v1.9.0", "--out", str(missing)]))
    assert (
        line
        == f"overhead-service: cannot write --out {missing}: the directory {missing.parent} does not exist"
    )
    # A directory: click's own usage error (exit 2, no traceback).
    result = _invoke(["report", "kubevirt-v1.9.0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://u@h/db", "names an unknown database 'mysql'"),
        ("foo://x", "names an unknown database 'foo'"),
        ("not a url", "is not a database URL"),
    ],
)
def test_an_unknown_database_url_names_the_setting(url: str, said: str) -> None:
    env = {"OVERHEAD_DATABASE_URL": url}
    for args in (["tables"], ["compute", "-"], ["init-db"]):
        line = _one_line_mistake(_invoke(args, env=env, stdin=b"{}"))
        assert line.startswith("overhead-service: environment variable OVERHEAD_DATABASE_URL ")
        assert said in line
    line = _one_line_mistake(_invoke(["init-db", "--database-url", url]))
    assert line.startswith("overhead-service: --database-url ") and said in line


def test_a_database_in_a_missing_directory_is_reported_not_created(tmp_path: Path) -> None:
    directory = tmp_path / "nowhere"
    env = {"OVERHEAD_DATABASE_URL": f"sqlite:///{directory / 'overhead.db'}"}
    for args in (["init-db"], ["report", "kubevirt-v1.9.0", "--out", str(tmp_path / "r.html")]):
        line = _one_line_mistake(_invoke(args, env=env))
        assert f"directory {directory} does not exist" in line
        assert "environment variable OVERHEAD_DATABASE_URL" in line
        assert f"mkdir -p {directory}" in line
    # What needs no database still works, and creates nothing either.
    result = _invoke(["compute", "-"], env=env, stdin=b'{"vmi": {}}')
    assert result.exit_code == 0, result.stderr
    assert not directory.exists()
    # A file named like the database next to a missing directory is not created either.
    nearby = {"OVERHEAD_DATABASE_URL": f"sqlite:///{tmp_path / 'absent.db'}"}
    assert _invoke(["tables"], env=nearby).exit_code == 0
    assert not (tmp_path / "absent.db").exists()


def _metrics_dirs() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("overhead-metrics-*")} if shm.is_dir() else set()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("OVERHEAD_SYNC_SECONDS", "soon", "must be a number"),
        ("OVERHEAD_LOG_LEVEL", "loud", "must be one of"),
        ("OVERHEAD_DATABASE_URL", "mysql://u@h/db", "unknown database 'mysql'"),
        ("OVERHEAD_DEFAULT_TABLE", "kubevirt-v0", "is not a built-in table"),
        ("OVERHEAD_DATABASE_URL", "sqlite:////nonexistent-dir-for-tests/overhead.db", "does not exist"),
    ],
)
def test_serve_refuses_a_bad_setting_with_one_json_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = _metrics_dirs()
    result = _invoke(["serve", "--bind", "127.0.0.1:1"], env={variable: value})
    entry = json.loads(_one_line_mistake(result))
    assert entry["level"] == "error" and entry["setting"] == variable
    assert said in entry["message"]
    assert _metrics_dirs() == before
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
