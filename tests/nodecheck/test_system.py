"""``node-check`` on the real machine: the runners, the command and the standalone script, and the
JSON of a real run posted to ``POST /v1/overhead`` unchanged."""

from __future__ import annotations

import ast
import errno
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from overhead_service import cli
from overhead_service.nodecheck import HostFileSystem, RecordedRunner, SubprocessRunner
from overhead_service.nodecheck.checks import Completed
from tests.support import ROOT

VMI = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}}}


def test_the_subprocess_runner() -> None:
    run = SubprocessRunner(timeout=5)
    done = run("x", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert done.argv[0].endswith("/sh")  # resolved on PATH
    assert run("x", ["sh", "-c", "echo $LC_ALL"]).stdout == "C\n"  # outputs parsed in the C locale
    with pytest.raises(FileNotFoundError):
        run("x", ["no-such-program-here"])
    with pytest.raises(TimeoutError):
        SubprocessRunner(timeout=0.2)("x", ["sleep", "5"])


def test_the_host_file_system_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "modules").write_text("kvm 1 0 - Live 0x0\n")
    fs = HostFileSystem(str(tmp_path))
    assert fs.read_text("/proc/modules").startswith("kvm")
    assert fs.listdir("/proc") == ["modules"]
    fs.open_rw("/proc/modules")
    with pytest.raises(FileNotFoundError):
        fs.mode("/dev/mshv")


def test_the_recorded_runner(tmp_path: Path) -> None:
    (tmp_path / "qemu-accel.rc").write_text("0\n")
    (tmp_path / "qemu-accel.out").write_text("Accelerators supported in QEMU binary:\ntcg\nmshv\n")
    (tmp_path / "qemu-accel.argv").write_text("/usr/libexec/qemu-kvm -accel help\n")
    (tmp_path / "qemu-version.rc").write_text("127\n")  # the shell's "command not found"
    live: list[str] = []

    def fallback(probe: str, argv: Sequence[str]) -> Completed:
        live.append(probe)
        return Completed(tuple(argv), 0, "live", "")

    run = RecordedRunner(str(tmp_path), fallback)
    done = run("qemu-accel", ["qemu-system-x86_64", "-accel", "help"])
    assert done.argv == ("/usr/libexec/qemu-kvm", "-accel", "help") and "mshv" in done.stdout
    assert done.stderr == ""  # no .err recorded
    with pytest.raises(FileNotFoundError):
        run("qemu-version", ["qemu-system-x86_64", "--version"])
    assert run("kernel-log", ["dmesg"]).stdout == "live" and live == ["kernel-log"]
    with pytest.raises(FileNotFoundError):
        RecordedRunner(str(tmp_path))("kernel-log", ["dmesg"])


def _device_status(path: str) -> str:
    """What node-check must say about ``path``, worked out here without it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return "permission-denied" if err.errno in (errno.EACCES, errno.EPERM) else "error"
    os.close(fd)
    return "present"


def test_a_real_run_feeds_post_v1_overhead_unchanged(client: FlaskClient) -> None:
    result = CliRunner().invoke(cli.main, ["node-check", "--json"])
    assert result.exit_code == 0, result.output
    node = json.loads(result.output)
    for name in ("kvm", "mshv"):
        assert node["devices"][name]["status"] == _device_status(f"/dev/{name}")
        assert node[f"{name}Available"] == os.path.exists(f"/dev/{name}")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert node["memlock"] == {
        "softBytes": None if soft < 0 else soft,
        "hardBytes": None if hard < 0 else hard,
    }
    if Path("/sys/kernel/mm/hugepages").is_dir():
        assert len(node["hugepages"]) == len(os.listdir("/sys/kernel/mm/hugepages"))

    body = {
        "vmi": VMI,
        "node": node,
        "kubevirtConfiguration": {"developerConfiguration": {"featureGates": ["HyperVL1VH"]}},
    }
    response = client.post("/v1/overhead", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    decision = response.get_json()["hypervisor"]
    expected = "mshv" if node["mshvAvailable"] else "kvm"
    assert decision["name"] == expected
    render = client.post("/v1/render", json=body)
    assert render.status_code == 200, render.get_data(as_text=True)


def test_this_machine_has_kvm() -> None:
    """The machine these tests were written on has /dev/kvm (10:232); elsewhere it says so."""
    node = json.loads(CliRunner().invoke(cli.main, ["node-check", "--json"]).output)
    if not os.path.exists("/dev/kvm"):
        assert (
            node["devices"]["kvm"]["status"] == "missing"
            and "kvm_intel" in node["devices"]["kvm"]["remediation"]
        )
        return
    assert node["kvmAvailable"] is True and node["devices"]["kvm"]["status"] in (
        "present",
        "permission-denied",
    )


def test_the_table_and_the_standalone_script_agree() -> None:
    table = CliRunner().invoke(cli.main, ["node-check"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert "/dev/kvm" in table.output and "=> request node" in table.output
    done = subprocess.run(
        [sys.executable, "-m", "overhead_service.nodecheck", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    script = json.loads(done.stdout)
    command = json.loads(CliRunner().invoke(cli.main, ["node-check", "--json"]).output)
    assert script["devices"] == command["devices"] and script["memlock"] == command["memlock"]


def test_the_script_needs_only_the_standard_library() -> None:
    """The DaemonSet may run it with any Python 3.11: nothing but the standard library and itself."""
    for path in (ROOT / "overhead_service" / "nodecheck").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name.startswith("overhead_service.nodecheck"), (
                    path,
                    name,
                )
