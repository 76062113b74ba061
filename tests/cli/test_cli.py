"""The ``overhead-service`` command: compute prints what the API answers; serve runs gunicorn."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient, FlaskCliRunner
from gunicorn.config import Config  # type: ignore[import-untyped]

from overhead_service import cli, gunicorn_conf

VMI_YAML = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vm1
  namespace: default
  creationTimestamp: 2026-01-02T03:04:05Z
spec:
  domain:
    cpu:
      cores: 2
    resources:
      requests:
        memory: 1.5Gi
    devices:
      tpm: {}
  livenessProbe:
    exec:
      command: [cat, /tmp/healthy]
"""


def api_answer(client: FlaskClient, body: Any) -> str:
    response = client.post("/v1/overhead", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def test_compute_yaml_vmi_prints_the_api_answer(
    runner: FlaskCliRunner, client: FlaskClient, tmp_path: Path
) -> None:
    path = tmp_path / "vmi.yaml"
    path.write_text(VMI_YAML)
    result = runner.invoke(cli.main, ["compute", str(path)])
    assert result.exit_code == 0, result.output
    vmi = yaml.safe_load(VMI_YAML)
    vmi["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z"
    assert result.stdout == api_answer(client, {"vmi": vmi}) + "\n"
    answer = json.loads(result.stdout)
    assert {"tpm", "probes"} <= {c["name"] for c in answer["components"]}


def test_compute_request_body_json_prints_the_api_answer(
    runner: FlaskCliRunner, client: FlaskClient, tmp_path: Path, vmi: dict[str, Any]
) -> None:
    body = {
        "vmi": vmi,
        "table": "kubevirt-main",
        "cpuArch": "arm64",
        "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "1.25"},
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    result = runner.invoke(cli.main, ["compute", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == api_answer(client, body) + "\n"
    assert json.loads(result.stdout)["table"]["id"] == "kubevirt-main"


def test_compute_options_override_the_file(
    runner: FlaskCliRunner, client: FlaskClient, tmp_path: Path, vmi: dict[str, Any]
) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"vmi": vmi, "table": "kubevirt-v1.9.0", "cpuArch": "amd64"}))
    args = ["--table", "kubevirt-main", "--cpu-arch", "arm64", "--hypervisor", "mshv", "--ratio", "1.5"]
    result = runner.invoke(cli.main, ["compute", str(path), *args])
    assert result.exit_code == 0, result.output
    expected = {
        "vmi": vmi,
        "table": "kubevirt-main",
        "cpuArch": "arm64",
        "hypervisor": "mshv",
        "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "1.5"},
    }
    assert result.stdout == api_answer(client, expected) + "\n"


def test_compute_reads_stdin(runner: FlaskCliRunner, client: FlaskClient, vmi: dict[str, Any]) -> None:
    result = runner.invoke(cli.main, ["compute", "-"], input=json.dumps(vmi))
    assert result.exit_code == 0, result.output
    assert result.stdout == api_answer(client, {"vmi": vmi}) + "\n"


@pytest.mark.parametrize(
    ("command", "route", "content", "path"),
    [
        (
            "compute",
            "/v1/overhead",
            "spec:\n  domain:\n    cpu:\n      cores: many\n",
            "vmi.spec.domain.cpu.cores",
        ),
        ("compute", "/v1/overhead", '{"vmi": {}, "table": "nope"}', "table"),
        ("compute", "/v1/overhead", "spec: [unclosed\n", ""),
        ("render", "/v1/render", '{"vmi": {}, "namespace": {"labels": {"a": 1}}}', "namespace.labels.a"),
        (
            "render",
            "/v1/render",
            "spec:\n  domain:\n    memory:\n      hugepages: {pageSize: 2}\n",
            "vmi.spec.domain.memory.hugepages.pageSize",
        ),
        ("render", "/v1/render", "spec: [unclosed\n", ""),
    ],
)
def test_bad_input_exits_2_with_the_problem(
    runner: FlaskCliRunner,
    client: FlaskClient,
    tmp_path: Path,
    command: str,
    route: str,
    content: str,
    path: str,
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(content)
    result = runner.invoke(cli.main, [command, str(file)])
    assert result.exit_code == 2
    assert result.stdout == ""
    problem = json.loads(result.stderr)
    assert problem["errors"][0]["path"] == path
    if path:  # the API answers the same document for the same body
        body = cli.request_body(cli.load_document(content.encode()))
        assert problem == client.post(route, json=body).get_json()


def test_compute_bad_ratio_option_exits_2(runner: FlaskCliRunner, tmp_path: Path) -> None:
    file = tmp_path / "vmi.json"
    file.write_text("{}")
    result = runner.invoke(cli.main, ["compute", str(file), "--ratio", "abc"])
    assert result.exit_code == 2
    problem = json.loads(result.stderr)
    assert problem["errors"][0]["path"] == "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"


RENDER_YAML = """\
vmi:
  spec:
    domain:
      cpu: {cores: 2}
      resources:
        requests: {memory: 1Gi}
      memory:
        hugepages: {pageSize: 2Mi}
kubevirtConfiguration:
  developerConfiguration: {cpuAllocationRatio: 4}
namespace:
  resourceQuotaLimitsMemory: true
"""


def test_render_yaml_request_prints_the_api_answer(
    runner: FlaskCliRunner, client: FlaskClient, tmp_path: Path
) -> None:
    path = tmp_path / "render.yaml"
    path.write_text(RENDER_YAML)
    result = runner.invoke(cli.main, ["render", str(path)])
    assert result.exit_code == 0, result.output
    response = client.post("/v1/render", json=yaml.safe_load(RENDER_YAML))
    assert response.status_code == 200
    assert result.stdout == response.get_data(as_text=True) + "\n"
    requests = json.loads(result.stdout)["resources"]["requests"]
    assert (requests["hugepages-2Mi"], requests["cpu"]) == ("1Gi", "500m")


def test_render_reads_a_bare_vmi_from_stdin(
    runner: FlaskCliRunner, client: FlaskClient, vmi: dict[str, Any]
) -> None:
    result = runner.invoke(cli.main, ["render", "-"], input=json.dumps(vmi))
    assert result.exit_code == 0, result.output
    assert result.stdout == client.post("/v1/render", json={"vmi": vmi}).get_data(as_text=True) + "\n"


def test_yaml_numbers_stay_exact() -> None:
    document = cli.load_document(b"spec:\n  memory: 1073741824.1\n  when: 2026-01-02T03:04:05Z\n")
    assert str(document["spec"]["memory"]) == "1073741824.1"
    assert document["spec"]["when"] == "2026-01-02T03:04:05Z"


def test_tables(runner: FlaskCliRunner, client: FlaskClient) -> None:
    result = runner.invoke(cli.main, ["tables"])
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [
        "kubevirt-v1.9.0 (default)",
        "kubevirt-main",
        "mshv-l1vh-provisional",
        "kvm-measured-pvm-2026-11",
        "kvm-libvirt-measured-pvm-2026-12",
    ]
    assert all(row[1].startswith(("KubeVirt ", "mshv ", "kvm/amd64 measured")) for row in rows)
    as_json = runner.invoke(cli.main, ["tables", "--json"])
    assert as_json.stdout == client.get("/v1/tables").get_data(as_text=True) + "\n"


def test_serve_command_line() -> None:
    argv = cli.gunicorn_argv("127.0.0.1:9000", 3)
    assert argv[:3] == [sys.executable, "-m", "gunicorn"]
    assert argv[argv.index("--config") + 1] == "python:overhead_service.gunicorn_conf"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:9000"
    assert argv[argv.index("--workers") + 1] == "3"
    assert argv[-1] == "overhead_service:create_app()"
    assert "--workers" not in cli.gunicorn_argv("127.0.0.1:9000", None)


def test_gunicorn_settings_are_valid() -> None:
    """Every setting in gunicorn_conf is one gunicorn knows, and passes its validation."""
    config = Config()
    names = [name for name in vars(gunicorn_conf) if name in config.settings]
    for name in names:
        config.set(name, getattr(gunicorn_conf, name))
    assert {"bind", "workers", "worker_class", "timeout", "graceful_timeout", "wsgi_app"} <= set(names)
    assert config.workers == gunicorn_conf.default_workers() >= 1
    assert config.graceful_timeout < 30  # inside Kubernetes' default termination grace period
    if "control_socket_disable" in config.settings:
        assert config.control_socket_disable is True
    if os.path.isdir("/dev/shm"):
        assert config.worker_tmp_dir == "/dev/shm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.gunicorn
def test_serve_runs_gunicorn(tmp_path: Path, vmi: dict[str, Any]) -> None:
    """``overhead-service serve`` for real: one worker on loopback, a probe, a request, SIGTERM."""
    port = _free_port()
    env = {**os.environ, "OVERHEAD_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    command = [
        sys.executable,
        "-m",
        "overhead_service",
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    assert json.load(response)["status"] == "ready"
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "gunicorn exited early"
                assert time.monotonic() < deadline, "gunicorn did not become ready in 30 s"
                time.sleep(0.2)
        request = urllib.request.Request(
            f"{base}/v1/overhead",
            data=json.dumps({"vmi": vmi}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            assert json.load(response)["overhead"]["bytes"] > 0
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
    assert "Shutting down" in output or "Handling signal: term" in output
