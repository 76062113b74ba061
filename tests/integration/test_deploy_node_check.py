"""deploy/node-check, offline: rendered by kustomize, validated strictly against the Kubernetes API
schemas like the rest of deploy/, and consistent with the script it runs (the probes the
virt-launcher container records are the ones node-check reads). The recording script also runs
here, and node-check answers the same from its records as live."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from overhead_service.nodecheck import PROBES, RecordedRunner, SubprocessRunner, check_node, memlock_limits
from overhead_service.nodecheck.checks import DOMCAPS
from overhead_service.nodecheck.system import HostFileSystem
from tests.integration.test_deploy import DEPLOY, VERSIONS, Doc, _render

TARGET = DEPLOY / "node-check"
SCRIPT = TARGET / "record-launcher-tools.sh"


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return _render(TARGET)


def _daemonset(docs: list[Doc]) -> Doc:
    (daemonset,) = [doc for doc in docs if doc["kind"] == "DaemonSet"]
    return daemonset


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_strictly(docs: list[Doc], version: str) -> None:
    for doc in docs:
        assert kubernetes_validate.validate(doc, version, strict=True) == version


def test_what_it_renders(docs: list[Doc]) -> None:
    assert sorted(doc["kind"] for doc in docs) == ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]
    for doc in docs:
        if doc["kind"] == "Namespace":
            # a privileged pod: a namespace of its own that allows it, apart from the service's
            assert doc["metadata"]["name"] == "overhead-node-check"
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
        else:
            assert doc["metadata"]["namespace"] == "overhead-node-check"


def test_the_pod(docs: list[Doc]) -> None:
    pod: dict[str, Any] = _daemonset(docs)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"kubevirt.io/schedulable": "true"}
    assert not any(pod.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    assert not any("hostPath" in volume for volume in pod["volumes"])
    (init,) = pod["initContainers"]
    (check,) = pod["containers"]
    assert init["image"] == "quay.io/kubevirt/virt-launcher:v1.9.0"
    assert check["image"] == "overhead-service:0.1.0"
    # the launcher tools run unprivileged; only node-check needs the device cgroup and CAP_SYSLOG
    assert init["securityContext"]["runAsNonRoot"] is True and init["securityContext"]["capabilities"][
        "drop"
    ] == ["ALL"]
    assert check["securityContext"]["privileged"] is True
    assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in (init, check))
    # node-check reads what the init container recorded, in the same volume
    command = check["command"] + check["args"]
    assert command[:3] == ["python", "-m", "overhead_service.nodecheck"] and "--json" in command
    records = command[command.index("--recorded") + 1]
    mounts = {m["name"]: m["mountPath"] for m in check["volumeMounts"]}
    assert mounts["records"] == records
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["records"] == records
    assert init["command"][-1] == records and init["command"][1].endswith(SCRIPT.name)
    scripts = [v for v in pod["volumes"] if "configMap" in v]
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert scripts[0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert configmap["data"][SCRIPT.name] == SCRIPT.read_text()


def test_the_script_records_the_probes_node_check_reads() -> None:
    text = SCRIPT.read_text()
    recorded = re.findall(r"^record ([a-z-]+) ", text, flags=re.MULTILINE)
    assert set(recorded) == set(PROBES) - {"kernel-log"}  # the kernel log is read where it runs
    assert " ".join(DOMCAPS) in text  # the same question as node-check's live run


def test_recorded_answers_equal_live_ones(tmp_path: Path) -> None:
    """The script, run here (its QEMU is on PATH; no virtqemud is started), then node-check from its
    records: the same QEMU and libvirt facts as a live run."""
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{probe}{suffix}"
        for probe in set(PROBES) - {"kernel-log"}
        for suffix in (".argv", ".err", ".out", ".rc")
    )
    live = SubprocessRunner()
    recorded = check_node(HostFileSystem(), RecordedRunner(str(tmp_path), live), memlock_limits)
    direct = check_node(HostFileSystem(), live, memlock_limits)
    if Path("/usr/libexec/qemu-kvm").exists():  # the script prefers the launcher's path
        assert recorded["qemu"] is not None and recorded["qemu"]["binary"] == "/usr/libexec/qemu-kvm"
    else:
        assert recorded["qemu"] == direct["qemu"]
    assert json.dumps(recorded["libvirt"]) == json.dumps(direct["libvirt"])
    assert recorded["devices"] == direct["devices"]
