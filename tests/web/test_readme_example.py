"""The README's calibration examples work as written, with the measurements shipped in the package:
upload, fit (the table id each shows), evaluate, a forced activation, a rollback; then the libvirt
records fitted in three scopes at once and activated."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from benchmarks.harness.tokens import create_schema
from benchmarks.measure.upload import read_jsonl
from overhead_service import create_app
from overhead_service.extensions import get_store
from tests.support import ROOT

SECTION = "## Calibration tables from measurements"


def _examples() -> list[str]:
    """The section's shell blocks, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)\n```\n", section, flags=re.DOTALL)


def _commands(block: str) -> list[list[str]]:
    """The block's shell commands, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _run_block(client: FlaskClient, block: str, auth: dict[str, str]) -> tuple[int, list[int]]:
    """Upload the block's records and send its curl commands; the records stored and the statuses."""
    commands = _commands(block)
    upload = next(c for c in commands if c[1:4] == ["-m", "benchmarks.measure", "upload"])
    assert upload[upload.index("--token") + 1] == auth["Authorization"].removeprefix("Bearer ")
    records = read_jsonl(ROOT / upload[4])
    stored = client.post("/v1/measurements", json={"records": records}, headers=auth)
    assert stored.status_code == 200 and stored.get_json()["stored"] == len(records)

    shown_id = re.search(r'"id": "(fit-[a-z0-9-]+)"', block)
    assert shown_id is not None
    statuses = []
    for command in (c for c in commands if c[0] == "curl"):
        path = "/" + next(arg for arg in command if arg.startswith("localhost:8080/")).split("/", 1)[1]
        body = json.loads(command[command.index("-d") + 1])
        headers = auth if "-H" in command and "$T" in " ".join(command) else {}
        answer = client.post(path, json=body, headers=headers)
        statuses.append(answer.status_code)
        assert answer.status_code in (200, 201), (path, answer.get_json())
        if path == "/v1/fits":
            assert answer.get_json()["table"]["id"] == shown_id.group(1)
    return len(records), statuses


def test_the_readme_fit_examples_run(tmp_path: Path) -> None:
    blocks = _examples()
    assert len(blocks) == 2
    tokens = next(c[1] for c in _commands(blocks[0]) if c[0] == "export").removeprefix("OVERHEAD_TOKENS=")
    token = json.loads(tokens)["tokens"][0]["token"]

    url = f"sqlite:///{tmp_path / 'readme.db'}"
    create_schema(url)
    app: Flask = create_app({"TESTING": True, "DATABASE_URL": url, "TOKENS": tokens, "SYNC_SECONDS": 0})
    try:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {token}"}
        # upload, fit, evaluate, a forced activation, a rollback
        assert _run_block(client, blocks[0], auth) == (130, [201, 200, 200, 200])
        # the libvirt records: a fit of three scopes, activated without force
        assert _run_block(client, blocks[1], auth) == (777, [201, 200])
        answer = client.post("/v1/overhead", json={"vmi": {"spec": {"domain": {}}}, "hypervisor": "kvm"})
        assert answer.get_json()["table"]["id"] == re.findall(r'"id": "(fit-[a-z0-9-]+)"', blocks[1])[0]
    finally:
        get_store(app).dispose()
