"""The cluster benchmark (benchmarks/cluster) against recorded API responses, and its manifests.

``FakeCluster`` is a Kubernetes API server on loopback (tests/support/kube.py: http.server in a
thread) that answers the exact requests the benchmark makes, through the ``kubernetes`` client
library, from the JSON and text in ``tests/data/cluster/<scenario>/``: a VMI that goes Pending ->
Scheduled -> Running, its virt-launcher pod, the kubelet's stats summary (before the VMI and while
it runs), the guest's serial console log, and ``pods/exec`` over a real WebSocket (server side by
wsproto; fragmented frames and a ping included). For node scope it also plays the
node's ``/proc/meminfo``, a file it rewrites when the VMI appears and goes. The expected records
are computed by hand from the recorded numbers.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from flask import Flask
from werkzeug.serving import make_server

from benchmarks.cluster import __main__ as cli
from benchmarks.cluster.config import ConfigError, GuestSettings, Shape, parse_config
from benchmarks.cluster.kube import ApiError, ExecError, KubeClient, open_client
from benchmarks.cluster.readings import (
    MeasurementError,
    MemoryStats,
    NodeSnapshot,
    allocatable,
    cpu_model,
    guest_report,
    libvirt_version,
    meminfo,
    memory_stat,
    pod_memory,
    process_rss,
    qemu_version,
    version_from_image,
)
from benchmarks.cluster.records import node_level
from benchmarks.cluster.runner import Benchmark, PreflightError
from benchmarks.cluster.upload import JsonLinesSink, Uploader, UploadError
from benchmarks.cluster.vmi import MAX_USER_DATA, user_data, vmi_manifest, vmi_name
from benchmarks.harness.tls import CertificateAuthority
from benchmarks.harness.tokens import INGEST_TOKEN
from overhead_service.calibration import sample_from_record, sample_vmi
from overhead_service.calibration.records import validate_record
from overhead_service.kube import Access
from overhead_service.model.vmi import extract_features
from tests.conftest import AppFactory
from tests.support import ROOT
from tests.support.kube import TOKEN, Exec, FakeApiServer, FakeRequest, Reply, status

DATA = ROOT / "tests" / "data" / "cluster"
DEPLOY = ROOT / "deploy" / "benchmark"
NS = "overhead-bench"
RUN_ID = "cluster-test-1"
GIB = 1024**3
VMIS = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"
PODS = f"/api/v1/namespaces/{NS}/pods"

KVM_SHAPE = {"vcpus": 2, "memory": "1Gi", "graphics": False, "ioThreads": 1, "deviceSet": "kubevirt"}
MSHV_SHAPE = {"vcpus": 4, "memory": "2Gi", "graphics": True, "ioThreads": 0, "deviceSet": "minimal"}
KVM_VMI = "ovh-389940-c2-m1gi-g0-io1-kubevirt-r1"
KVM_POD = f"virt-launcher-{KVM_VMI}-x7k2p"
KVM_UID = "7d3c6f1e-2b8a-4c55-9e0f-51a2b3c4d5e6"
MSHV_VMI = "ovh-389940-c4-m2gi-g1-io0-minimal-r1"
MSHV_POD = f"virt-launcher-{MSHV_VMI}-q9wz4"
L1VH_TOLERATION = {"key": "l1vh", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
FAST_TIMING = {
    "runningSeconds": 5,
    "touchSeconds": 5,
    "settleSeconds": 0,
    "readings": 2,
    "readingIntervalSeconds": 0,
    "quietSeconds": 0,
    "deleteSeconds": 5,
    "pollSeconds": 0.01,
    "maxRunSeconds": 60,
    "sampleAttempts": 1,
}


# --- the fake API server --------------------------------------------------------------------------


class FakeCluster:
    """Answers the benchmark's requests from ``tests/data/cluster/<scenario>`` (on a
    :class:`~tests.support.kube.FakeApiServer`, over TLS with client certificates when given a CA)."""

    def __init__(self, scenario: str, tmp_path: Path, ca: CertificateAuthority | None = None) -> None:
        self.dir = DATA / scenario
        self.node = json.loads((self.dir / "node.json").read_text())["metadata"]["name"]
        self.vmi_name = json.loads((self.dir / "vmi-created.json").read_text())["metadata"]["name"]
        self.uid = json.loads((self.dir / "vmi-created.json").read_text())["metadata"]["uid"]
        self.pod = json.loads((self.dir / "pods.json").read_text())["items"][0]["metadata"]["name"]
        self.meminfo = tmp_path / "meminfo"
        self.token_file = tmp_path / "kube-token"
        self.token_file.write_text(TOKEN + "\n")
        self.lock = threading.Lock()
        self.posted: list[dict[str, Any]] = []
        self.exec_commands: list[list[str]] = []
        self.overrides: dict[str, Any] = {}  # file name -> object served instead
        self.fail: dict[str, list[int]] = {}  # route key -> statuses to answer first, in order
        self.phases = ["vmi-pending.json", "vmi-scheduled.json", "vmi-running.json"]
        self.leftovers = False
        self.stuck_leftover = False  # its deletion never completes
        self.console: str | None = None  # served instead of console.log
        self.on_vmi_get: Callable[[int], None] | None = None
        self.created = 0
        self.vmi_alive = False
        self.deleting = False
        self.vmi_gets = 0
        self._set_meminfo()
        if ca is None:
            self.api = FakeApiServer(self.route)
        else:
            self.api = FakeApiServer(self.route, tls=ca.server(), client_ca=ca.cert)
        self.url = self.api.url

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request, in order."""
        return self.api.requests

    def __enter__(self) -> FakeCluster:
        self.api.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.__exit__(*exc)

    def _set_meminfo(self) -> None:
        name = "meminfo-running.txt" if self.vmi_alive else "meminfo-before.txt"
        if (self.dir / name).exists():
            self.meminfo.write_text((self.dir / name).read_text())

    def load(self, name: str) -> Any:
        if name in self.overrides:
            return copy.deepcopy(self.overrides[name])
        return json.loads((self.dir / name).read_text())

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def count(self, method: str, prefix: str) -> int:
        return self.api.count(method, prefix)

    def _failure(self, key: str) -> int | None:
        statuses = self.fail.get(key)
        return statuses.pop(0) if statuses else None

    def route(self, request: FakeRequest) -> Reply | Exec:
        if request.upgrade and request.path.endswith("/exec"):
            return self._exec(request)
        with self.lock:
            return self.answer(request.method, request.path, request.query, request.body)

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Reply:
        def js(obj: Any, code: int = 200, **headers: str) -> Reply:
            return Reply(code, obj, headers={k.replace("_", "-"): v for k, v in headers.items()})

        def not_found(what: str) -> Reply:
            return js(status(404, "NotFound", f"{what} not found"), 404)

        selector = query.get("labelSelector", [""])[0]
        node_path = f"/api/v1/nodes/{self.node}"
        if method == "GET" and path == f"{node_path}/proxy/stats/summary":
            failure = self._failure("summary")
            if failure:
                return js(status(failure, "InternalError", "error trying to reach service"), failure)
            assert query == {"only_cpu_and_memory": ["true"]}
            return js(self.load("summary-running.json" if self.vmi_alive else "summary-before.json"))
        if method == "GET" and path.startswith("/api/v1/nodes/"):
            failure = self._failure("node")
            if failure == 429:  # throttled: the API server says when to come back
                return js(status(429, "TooManyRequests", "slow down"), 429, Retry_After="3")
            if failure:
                return js(status(failure, "ServiceUnavailable", "the server is currently unable"), failure)
            name = path.rsplit("/", 1)[1]
            for file in ("node.json", "node-without-mshv.json"):
                if (self.dir / file).exists() and self.load(file)["metadata"]["name"] == name:
                    return js(self.load(file))
            return not_found(f'nodes "{name}"')
        if method == "GET" and path == "/api/v1/nodes":
            return js(self.load(self.overrides.get("nodes-list", "nodes-without-mshv.json")))
        if method == "GET" and path == "/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts/kubevirt":
            return js(self.load("kubevirt.json"))
        if method == "GET" and path == VMIS:
            assert selector == "app.kubernetes.io/managed-by=overhead-service-cluster-benchmark"
            return js(self.load("vmis-leftover.json" if self.leftovers else "vmis-empty.json"))
        if method == "POST" and path == VMIS:
            self.posted.append(body)
            assert body["metadata"]["name"] == self.vmi_name
            self.created += 1
            self.vmi_alive, self.deleting, self.vmi_gets = True, False, 0
            self._set_meminfo()
            return js(self.load("vmi-created.json"), 201)
        if path.startswith(VMIS + "/"):
            name = path.rsplit("/", 1)[1]
            if name.startswith("ovh-1f00d2"):  # the leftover of an earlier run
                if not self.leftovers:
                    return not_found(f'virtualmachineinstances.kubevirt.io "{name}"')
                if method == "DELETE" and not self.stuck_leftover:
                    self.leftovers = False
                return js(self.load("vmis-leftover.json")["items"][0])
            if name != self.vmi_name or not (self.vmi_alive or self.deleting):
                return not_found(f'virtualmachineinstances.kubevirt.io "{name}"')
            if method == "DELETE":
                self.deleting, self.vmi_alive = True, False
                self._set_meminfo()
                return js(self.load("vmi-deleting.json"))
            if self.deleting:  # one more answer while terminating, then it is gone
                self.deleting = False
                return js(self.load("vmi-deleting.json"))
            self.vmi_gets += 1
            if self.on_vmi_get is not None:
                self.on_vmi_get(self.vmi_gets)
            return js(self.load(self.phases[min(self.vmi_gets, len(self.phases)) - 1]))
        if method == "GET" and path == PODS:
            assert selector.startswith("kubevirt.io/created-by=")
            alive = (self.vmi_alive or self.deleting) and selector == f"kubevirt.io/created-by={self.uid}"
            return js(self.load("pods.json" if alive else "pods-empty.json"))
        if method == "GET" and path == f"{PODS}/{self.pod}/log":
            assert query == {"container": ["guest-console-log"], "tailLines": ["40"]}
            console = self.console if self.console is not None else self.text("console.log")
            return Reply(200, console, "text/plain")
        return not_found(f"{method} {path}")

    def _exec(self, request: FakeRequest) -> Reply | Exec:
        if request.path != f"{PODS}/{self.pod}/exec":  # as the API server: 404 before any upgrade
            name = request.path.split("/")[-2]
            return Reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        assert request.query["container"] == ["compute"] and request.query["stdout"] == ["true"]
        assert request.query["stderr"] == ["true"]
        assert request.query.get("stdin", ["false"]) == request.query.get("tty", ["false"]) == ["false"]
        # Older API servers speak only v4 of the channel protocol: the client must offer it.
        assert "v4.channel.k8s.io" in request.headers["sec-websocket-protocol"]
        with self.lock:
            stdout, stderr, final = self.exec_output(request.query["command"])
        return Exec(stdout.encode(), stderr.encode(), final)

    def exec_output(self, command: list[str]) -> tuple[str, str, dict[str, Any]]:
        self.exec_commands.append(command)
        ok = {"metadata": {}, "status": "Success"}
        files = {
            ("ps", "-e", "-o", "rss=,args="): "exec-ps.txt",
            ("/usr/libexec/qemu-kvm", "--version"): "exec-qemu-version.txt",
            ("virtqemud", "--version"): "exec-virtqemud-version.txt",
            ("cat", "/sys/fs/cgroup/memory.stat"): "exec-memory-stat.txt",
        }
        name = files.get(tuple(command))
        failure = self._failure("exec:" + command[0])
        if name is None or failure:
            final = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {failure or 127}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(failure or 127)}]},
            }
            return "", f"{command[0]}: command not found\n", final
        return self.text(name), "", ok


@pytest.fixture
def kvm(tmp_path: Path) -> Iterator[FakeCluster]:
    with FakeCluster("kvm", tmp_path) as cluster:
        yield cluster


@pytest.fixture
def mshv(tmp_path: Path) -> Iterator[FakeCluster]:
    with FakeCluster("mshv", tmp_path) as cluster:
        yield cluster


def kvm_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "runId": RUN_ID,
        "namespace": NS,
        "pool": {
            "hypervisor": "kvm",
            "nodeSelector": {"kubevirt.io/schedulable": "true"},
            "node": "kvm-worker-1",
        },
        "shapes": {"repetitions": 1, "points": [KVM_SHAPE]},
        "timing": dict(FAST_TIMING),
        "api": {"retries": 2, "backoffSeconds": 0, "timeoutSeconds": 5},
    }
    config.update(overrides)
    return config


def mshv_config(meminfo: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "runId": RUN_ID,
        "namespace": NS,
        "pool": {
            "hypervisor": "mshv",
            "nodeSelector": {"agentpool": "l1vh"},
            "tolerations": [L1VH_TOLERATION],
        },
        "shapes": {"repetitions": 1, "points": [MSHV_SHAPE]},
        "timing": dict(FAST_TIMING),
        "api": {"retries": 2, "backoffSeconds": 0, "timeoutSeconds": 5},
        "meminfoPath": str(meminfo),
    }
    config.update(overrides)
    return config


_CLIENTS: list[KubeClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test opened is closed after it (its pooled connections with it)."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def open_test_client(access: Access, **options: Any) -> KubeClient:
    client = open_client(access, **options)
    _CLIENTS.append(client)
    return client


def client_for(cluster: FakeCluster, retries: int = 2, **options: Any) -> KubeClient:
    access = Access(api_server=cluster.url, token_file=str(cluster.token_file))
    return open_test_client(access, retries=retries, backoff_seconds=0, **options)


def benchmark(
    cluster: FakeCluster, config: dict[str, Any], *, client: KubeClient | None = None, **kwargs: Any
) -> Benchmark:
    return Benchmark(parse_config(config), client or client_for(cluster), run_id=RUN_ID, **kwargs)


# --- the records, computed by hand from tests/data/cluster ----------------------------------------

# kvm/console.log, last line: memtotal_kib=980812 memfree_kib=53112 memfree_min_kib=52436
KVM_TOUCHED = 1 * GIB - 52436 * 1024  # 1,020,047,360
# kvm/summary-running.json, the launcher pod's memory.workingSetBytes
KVM_POD_WS = 1317363712
KVM_HOST = {
    "kernel": "5.14.0-503.15.1.el9_5.x86_64",  # node.json status.nodeInfo.kernelVersion
    "qemu": "9.1.0",  # exec-qemu-version.txt
    "libvirt": "10.10.0",  # exec-virtqemud-version.txt
    "kubevirt": "v1.9.0",  # kubevirt.json status.observedKubeVirtVersion
    "accelerator": "kvm",
    "node": "kvm-worker-1",
    "cpuModel": "Cascadelake-Server-noTSX",  # label host-model-cpu.node.kubevirt.io/...
}
KVM_POD_RECORD = {
    "runId": RUN_ID,
    "sampleId": "c2-m1gi-g0-io1-kubevirt-r1-pod",
    "hypervisor": "kvm",
    "arch": "amd64",
    "scope": "pod",
    "overheadBytes": KVM_POD_WS - KVM_TOUCHED,  # 297,316,352
    "rawBytes": KVM_POD_WS,
    "guestTouchedBytes": KVM_TOUCHED,
    "vm": {
        "vcpus": 2,
        "guestMemoryBytes": GIB,
        "graphics": False,
        "vfio": False,
        "ioThreads": 1,
        "deviceSet": "kubevirt",
        "touchedShare": round(KVM_TOUCHED / GIB, 6),  # 0.949993
        "vcpusOnline": True,  # cpus=2
    },
    "host": KVM_HOST,
    "raw": {
        # summary-running.json: the pod's and its containers' memory
        "podWorkingSet": 1317363712,
        "podUsage": 1341095936,
        "podRss": 1271148544,
        "workingSet:compute": 1303695360,
        "computeUsage": 1326411776,
        "computeRss": 1268563968,
        "workingSet:guest-console-log": 5017600,
        "workingSet:volumecontainerdisk": 1458176,
        # exec-ps.txt, KiB (ps itself left out)
        "rss:qemu": 1175832 * 1024,
        "rss:virtLauncher": 61024 * 1024,
        "rss:virtLauncherMonitor": 21812 * 1024,
        "rss:virtlogd": 17388 * 1024,
        "rss:virtqemud": 35640 * 1024,
        "rss:other": 0,
        # exec-memory-stat.txt, the fields kept
        "computeCgroup:anon": 1268563968,
        "computeCgroup:file": 27099136,
        "computeCgroup:kernel": 14106624,
        "computeCgroup:kernel_stack": 655360,
        "computeCgroup:pagetables": 5242880,
        "computeCgroup:sec_pagetables": 2281472,
        "computeCgroup:shmem": 0,
        "computeCgroup:slab": 4956160,
        "computeCgroup:vmalloc": 49152,
        # console.log, last line
        "guestMemTotal": 980812 * 1024,
        "guestMemFree": 53112 * 1024,
        "guestMemFreeMin": 52436 * 1024,
    },
}

# mshv/console.log, last line: memtotal_kib=1996420 memfree_kib=104032 memfree_min_kib=103544 cpus=4
MSHV_TOUCHED = 2 * GIB - 103544 * 1024  # 2,041,454,592
MSHV_POD_WS = 2394316800  # summary-running.json, the launcher pod
MSHV_HOST = {
    "kernel": "6.19.3-100.l1vh.x86_64",
    "qemu": "10.2.0",
    "libvirt": "11.6.0",
    "kubevirt": "v1.9.0",
    "accelerator": "mshv",
    "node": "l1vh-worker-0",
    "cpuModel": "SapphireRapids",
}
MSHV_VM = {
    "vcpus": 4,
    "guestMemoryBytes": 2 * GIB,
    "graphics": True,
    "vfio": False,
    "ioThreads": 0,
    "deviceSet": "minimal",
    "touchedShare": round(MSHV_TOUCHED / (2 * GIB), 6),
    "vcpusOnline": True,
}
# The node: meminfo-before/running.txt MemAvailable 28871244 -> 26513940 kB; summary-before/running
# system containers: pods 1452318720 -> 3850567680, kubelet 98304000 -> 99614720, runtime
# 61440000 -> 63176704.
MSHV_LOST = (28871244 - 26513940) * 1024  # 2,413,879,296
MSHV_EXPLAINED = (3850567680 - 1452318720) + (99614720 - 98304000) + (63176704 - 61440000)  # 2,401,296,384
MSHV_NODE_LEVEL = MSHV_LOST - MSHV_EXPLAINED  # 12,582,912 = 12 MiB
MSHV_NODE_RECORD = {
    "runId": RUN_ID,
    "sampleId": "c4-m2gi-g1-io0-minimal-r1-node",
    "hypervisor": "mshv",
    "arch": "amd64",
    "scope": "node",
    "overheadBytes": MSHV_NODE_LEVEL,
    "rawBytes": MSHV_NODE_LEVEL,
    "guestTouchedBytes": 0,
    "vm": MSHV_VM,
    "host": MSHV_HOST,
    "raw": {
        "memAvailableBefore": 28871244 * 1024,
        "memAvailableDuring": 26513940 * 1024,
        "memFreeBefore": 27990112 * 1024,
        "memFreeDuring": 25632808 * 1024,
        "vmallocUsedBefore": 301244 * 1024,
        "vmallocUsedDuring": 305472 * 1024,
        "podsWorkingSetBefore": 1452318720,
        "podsWorkingSetDuring": 3850567680,
        "kubeletWorkingSetBefore": 98304000,
        "kubeletWorkingSetDuring": 99614720,
        "runtimeWorkingSetBefore": 61440000,
        "runtimeWorkingSetDuring": 63176704,
        "nodeCgroupWorkingSetBefore": 3965321216,
        "nodeCgroupWorkingSetDuring": 6365741056,
        "podWorkingSet": MSHV_POD_WS,
    },
}


def _without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "measuredAt"}


def _check_measured_at(record: dict[str, Any], before: datetime) -> None:
    moment = datetime.strptime(record["measuredAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)


# --- whole runs -----------------------------------------------------------------------------------


@pytest.fixture
def service(app_factory: AppFactory) -> Iterator[tuple[str, Flask]]:
    """The real overhead service on a loopback port (werkzeug, threaded)."""
    app = app_factory()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()


def test_kvm_run_builds_the_pod_record_and_the_service_stores_it(
    kvm: FakeCluster, service: tuple[str, Flask]
) -> None:
    url, app = service
    started = datetime.now(UTC).replace(microsecond=0)
    uploader = Uploader(url, INGEST_TOKEN, retries=0)
    summary = benchmark(kvm, kvm_config(), uploader=uploader).run()

    assert summary.exit_code == 0, summary
    assert (summary.planned, summary.measured, summary.records, summary.stored) == (1, 1, 1, 1)
    # The VMI went Pending -> Scheduled -> Running (one GET each), then was deleted and awaited.
    assert kvm.created == 1 and kvm.vmi_gets == 3
    assert kvm.count("DELETE", f"{VMIS}/{KVM_VMI}") == 1
    assert not kvm.vmi_alive and not kvm.deleting
    # What was created is the manifest the builder makes, pinned to the node.
    posted = kvm.posted[0]
    terms = posted["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["kvm-worker-1"]
    assert posted["spec"]["domain"]["devices"]["autoattachMemBalloon"] is False
    assert posted["spec"]["domain"]["devices"]["logSerialConsole"] is True
    # The exec commands, in order.
    assert kvm.exec_commands == [
        ["ps", "-e", "-o", "rss=,args="],
        ["/usr/libexec/qemu-kvm", "--version"],
        ["virtqemud", "--version"],
        ["cat", "/sys/fs/cgroup/memory.stat"],
    ]
    # kvm: no node scope, so the summary is read only while the VMI runs (2 readings).
    assert kvm.count("GET", "/api/v1/nodes/kvm-worker-1/proxy/stats/summary") == 2

    with app.test_client() as client:
        stored = client.get(f"/v1/measurements?runId={RUN_ID}").get_json()["items"]
    assert len(stored) == 1
    record = {k: v for k, v in stored[0].items() if k not in ("id", "ingestedAt", "ingestedBy")}
    assert _without_time(record) == KVM_POD_RECORD
    _check_measured_at(record, started)

    # A second run of the same runId (a retried Job pod) uploads duplicates only.
    again = benchmark(kvm, kvm_config(), uploader=Uploader(url, INGEST_TOKEN, retries=0)).run()
    assert (again.stored, again.duplicates, again.exit_code) == (0, 1, 0)


def test_record_describes_the_vmi_as_the_fit_rebuilds_it() -> None:
    """The record's vm fields make calibration.sample_vmi spell the VMI the benchmark created."""
    config = parse_config(kvm_config(shapes={"repetitions": 1, "points": [KVM_SHAPE, MSHV_SHAPE]}))
    for shape, record_vm in zip(config.shapes, (KVM_POD_RECORD["vm"], MSHV_VM), strict=True):
        created = vmi_manifest(
            name="x",
            namespace=NS,
            run_id=RUN_ID,
            sample="s",
            shape=shape,
            guest=config.guest,
            pool=config.pool,
            node="n",
        )
        record = dict(KVM_POD_RECORD, vm=record_vm)
        rebuilt = sample_vmi(sample_from_record(record), "amd64")
        ours, theirs = extract_features(created), extract_features(rebuilt)
        assert (ours.vcpus, ours.graphics, ours.guest_memory.value()) == (
            theirs.vcpus,
            theirs.graphics,
            theirs.guest_memory.value(),
        )
        for key in ("ioThreadsPolicy", "ioThreads"):
            assert created["spec"]["domain"].get(key) == rebuilt["spec"]["domain"].get(key)


def test_mshv_run_builds_pod_and_node_records(mshv: FakeCluster, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    started = datetime.now(UTC).replace(microsecond=0)
    config = mshv_config(mshv.meminfo)
    sink = JsonLinesSink(str(out))
    summary = benchmark(mshv, config, self_node="l1vh-worker-0", sink=sink).run()
    sink.close()

    assert summary.exit_code == 0, summary
    assert summary.node == "l1vh-worker-0" and summary.records == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sampleId"] for r in records] == [
        "c4-m2gi-g1-io0-minimal-r1-pod",
        "c4-m2gi-g1-io0-minimal-r1-node",
    ]
    pod, node = records
    assert (pod["scope"], pod["hypervisor"], pod["host"]) == ("pod", "mshv", MSHV_HOST)
    assert pod["vm"] == MSHV_VM
    assert pod["rawBytes"] == MSHV_POD_WS and pod["guestTouchedBytes"] == MSHV_TOUCHED
    assert pod["overheadBytes"] == MSHV_POD_WS - MSHV_TOUCHED == 352862208
    assert pod["raw"]["rss:qemu"] == 2224616 * 1024
    assert pod["raw"]["computeCgroup:sec_pagetables"] == 0  # mshv: no KVM page tables in the pod
    assert _without_time(node) == MSHV_NODE_RECORD
    assert MSHV_NODE_LEVEL == 12 * 1024 * 1024
    for record in records:
        validate_record(record)
        _check_measured_at(record, started)
    # The VMI tolerates the pool's taint and is pinned to the node; the baseline was read before
    # the VMI existed (2 readings) and 2 more while it ran.
    assert mshv.posted[0]["spec"]["tolerations"] == [L1VH_TOLERATION]
    assert mshv.posted[0]["spec"]["nodeSelector"] == {"agentpool": "l1vh"}
    summaries = [i for i, (m, p) in enumerate(mshv.requests) if "/proxy/stats/summary" in p]
    post = next(i for i, (m, p) in enumerate(mshv.requests) if m == "POST")
    assert len(summaries) == 4 and summaries[1] < post < summaries[2]
    assert mshv.count("DELETE", VMIS) == 1 and not mshv.vmi_alive


def test_cli_runs_the_mshv_sample_and_writes_json_lines(
    mshv: FakeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(yaml.safe_dump(mshv_config(mshv.meminfo)))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    argv = [
        "--config",
        str(config_file),
        "--api-server",
        mshv.url,
        "--token-file",
        str(token_file),
        "--output",
        "-",
    ]
    status = cli.main(argv, environ={"NODE_NAME": "l1vh-worker-0"})
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["scope"] for r in lines] == ["pod", "node"]
    assert _without_time(lines[1]) == MSHV_NODE_RECORD


def test_node_without_mshv_device_is_refused_for_an_mshv_run(mshv: FakeCluster) -> None:
    config = mshv_config(mshv.meminfo)
    config["pool"]["node"] = "l1vh-worker-1"
    with pytest.raises(PreflightError, match=r"l1vh-worker-1 has no allocatable devices\.kubevirt\.io/mshv"):
        benchmark(mshv, config, self_node="l1vh-worker-1").run()
    # The same when the node is picked from the pool by its labels.
    with pytest.raises(
        PreflightError, match=r"no usable mshv node: .*no allocatable devices\.kubevirt\.io/mshv"
    ):
        benchmark(mshv, mshv_config(mshv.meminfo)).run()
    assert mshv.count("GET", "/api/v1/nodes?labelSelector=agentpool%3Dl1vh") == 1
    assert mshv.count("POST", "/") == 0 and mshv.count("DELETE", "/") == 0


def test_kvm_node_is_refused_for_an_mshv_run_by_the_cli(kvm: FakeCluster, tmp_path: Path) -> None:
    config = mshv_config(tmp_path / "meminfo", pool={"hypervisor": "mshv", "node": "kvm-worker-1"})
    (tmp_path / "meminfo").write_text("MemAvailable: 1 kB\n")
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(yaml.safe_dump(config | {"output": str(tmp_path / "out.jsonl")}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    argv = ["--config", str(config_file), "--api-server", kvm.url, "--token-file", str(token_file)]
    assert cli.main(argv, environ={"NODE_NAME": "kvm-worker-1"}) == 2
    assert kvm.count("POST", "/") == 0


def test_node_scope_needs_the_job_on_the_measured_node(mshv: FakeCluster) -> None:
    config = mshv_config(mshv.meminfo)
    config["pool"]["node"] = "l1vh-worker-0"
    with pytest.raises(PreflightError, match="node scope reads /proc/meminfo of the node this Job runs on"):
        benchmark(mshv, config, self_node="some-other-node").run()
    assert mshv.count("POST", "/") == 0


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("summary", "500"),  # the kubelet is unreachable through the node proxy
        ("ps", "ps in"),  # exec fails
        ("failed", "ended Failed"),  # the VMI fails to start
        ("stuck", "not Running within"),  # and never runs
        ("console", "did not report touched memory"),  # the guest never reports
    ],
)
def test_vmi_is_deleted_when_measurement_fails(
    kvm: FakeCluster, caplog: pytest.LogCaptureFixture, breakage: str, message: str
) -> None:
    if breakage == "summary":
        kvm.fail["summary"] = [500] * 10
    elif breakage == "ps":
        kvm.fail["exec:ps"] = [1, 1]  # both attempts
    elif breakage == "failed":
        failed = kvm.load("vmi-scheduled.json")
        failed["status"]["phase"] = "Failed"
        failed["status"]["conditions"] = [
            {
                "type": "Synchronized",
                "status": "False",
                "reason": "SyncFailed",
                "message": "server error: no such image",
            }
        ]
        kvm.overrides["vmi-failed.json"] = failed
        kvm.phases = ["vmi-pending.json", "vmi-failed.json"]
    elif breakage == "stuck":
        kvm.phases = ["vmi-pending.json"]
    else:
        kvm.console = kvm.text("console.log").split("OVH-BENCH")[0]  # boot messages, no report
    config = kvm_config(timing=dict(FAST_TIMING, runningSeconds=0.3, touchSeconds=0.3, sampleAttempts=2))
    summary = benchmark(kvm, config).run()

    assert summary.failed == ["c2-m1gi-g0-io1-kubevirt-r1"] and summary.records == 0
    assert summary.exit_code == 1
    # Both attempts created a VMI and deleted it, and waited until it was gone.
    assert kvm.created == 2
    assert kvm.count("DELETE", f"{VMIS}/{KVM_VMI}") == 2
    assert not kvm.vmi_alive and not kvm.deleting
    assert message in caplog.text


def test_sigterm_deletes_the_vmi_and_exits_143(kvm: FakeCluster, tmp_path: Path) -> None:
    def terminate(gets: int) -> None:
        if gets == 2:  # while waiting for Running
            os.kill(os.getpid(), signal.SIGTERM)

    kvm.on_vmi_get = terminate
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(yaml.safe_dump(kvm_config(output=str(tmp_path / "out.jsonl"))))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    previous = signal.getsignal(signal.SIGTERM)
    argv = ["--config", str(config_file), "--api-server", kvm.url, "--token-file", str(token_file)]
    assert cli.main(argv, environ={}) == 143
    assert signal.getsignal(signal.SIGTERM) == previous
    assert kvm.count("DELETE", f"{VMIS}/{KVM_VMI}") == 1 and not kvm.vmi_alive


def test_leftover_vmis_are_removed_first(kvm: FakeCluster) -> None:
    kvm.leftovers = True
    summary = benchmark(kvm, kvm_config(), sink=None).run()
    assert summary.measured == 1
    deletes = [p for m, p in kvm.requests if m == "DELETE"]
    assert deletes == [f"{VMIS}/ovh-1f00d2-c1-m1gi-g0-io0-kubevirt-r2", f"{VMIS}/{KVM_VMI}"]
    first_post = next(i for i, (m, _) in enumerate(kvm.requests) if m == "POST")
    assert kvm.requests.index(("DELETE", deletes[0])) < first_post


def test_a_leftover_that_will_not_go_refuses_the_run(kvm: FakeCluster) -> None:
    kvm.leftovers = kvm.stuck_leftover = True
    config = kvm_config(timing=dict(FAST_TIMING, deleteSeconds=0.2))
    with pytest.raises(
        PreflightError, match="cannot remove leftover VMIs: .* still there 0.2 s after delete"
    ):
        benchmark(kvm, config).run()
    assert kvm.count("DELETE", f"{VMIS}/ovh-1f00d2") == 1 and kvm.count("POST", "/") == 0


def test_wrong_hypervisor_in_the_launcher_pod_aborts_the_run(mshv: FakeCluster) -> None:
    pods = mshv.load("pods.json")
    limits = pods["items"][0]["spec"]["containers"][0]["resources"]["limits"]
    limits["devices.kubevirt.io/kvm"] = limits.pop("devices.kubevirt.io/mshv")
    mshv.overrides["pods.json"] = pods
    config = mshv_config(mshv.meminfo, shapes={"repetitions": 3, "points": [MSHV_SHAPE]})
    summary = benchmark(mshv, config, self_node="l1vh-worker-0").run()
    assert "asks for devices.kubevirt.io/kvm instead of devices.kubevirt.io/mshv" in summary.aborted
    assert (summary.failed, summary.not_run, summary.exit_code) == (["c4-m2gi-g1-io0-minimal-r1"], 2, 1)
    assert mshv.created == 1 and mshv.count("DELETE", VMIS) == 1 and not mshv.vmi_alive


def test_transient_api_errors_are_retried(kvm: FakeCluster) -> None:
    kvm.fail["node"] = [503, 429]
    kvm.fail["summary"] = [502]
    pauses: list[float] = []
    client = client_for(kvm, sleep=pauses.append)
    summary = benchmark(kvm, kvm_config(), client=client).run()
    assert summary.measured == 1
    assert kvm.count("GET", "/api/v1/nodes/kvm-worker-1") == 3 + 3  # node: 2 failures + 1; summary: 1 + 2
    # The 429's Retry-After (3 s) is honoured; the 5xx back off exponentially (from 0 s here).
    assert pauses == [0.0, 3.0, 0.0]


def test_deadline_stops_starting_samples(kvm: FakeCluster) -> None:
    config = kvm_config(
        timing=dict(FAST_TIMING, maxRunSeconds=0), shapes={"repetitions": 2, "points": [KVM_SHAPE]}
    )
    summary = benchmark(kvm, config).run()
    assert (summary.planned, summary.measured, summary.not_run, summary.exit_code) == (2, 0, 2, 1)
    assert kvm.created == 0


def test_dry_run_prints_the_vmis_without_a_cluster(tmp_path: Path) -> None:
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(
        yaml.safe_dump(kvm_config(shapes={"repetitions": 2, "points": [KVM_SHAPE, MSHV_SHAPE]}))
    )
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--config", str(config_file), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    vmis = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["metadata"]["name"] for v in vmis] == [
        KVM_VMI,
        MSHV_VMI,
        KVM_VMI.replace("-r1", "-r2"),
        MSHV_VMI.replace("-r1", "-r2"),
    ]


@pytest.mark.parametrize(
    "config_args", [[], ["--config", "deploy/benchmark/configmap.yaml"]], ids=["default", "configmap"]
)
def test_dry_run_as_documented_uses_the_shipped_configuration(config_args: list[str]) -> None:
    """docs/cluster-benchmark.md: ``python -m benchmarks.cluster --dry-run`` from the checkout."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", *config_args, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = _shipped_config()
    vmis = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(vmis) == len(config.shapes) * config.repetitions
    assert {v["kind"] for v in vmis} == {"VirtualMachineInstance"}
    assert "--dry-run" in (ROOT / "docs" / "cluster-benchmark.md").read_text()


# --- pieces ---------------------------------------------------------------------------------------


def test_exec_over_websocket_reports_output_and_failures(kvm: FakeCluster, tmp_path: Path) -> None:
    client = client_for(kvm)
    kvm.vmi_alive = True
    ok = client.exec(NS, KVM_POD, "compute", ["ps", "-e", "-o", "rss=,args="])
    assert ok.ok and ok.stdout == kvm.text("exec-ps.txt") and ok.stderr == ""
    failed = client.exec(NS, KVM_POD, "compute", ["nosuch", "--version"])
    assert not failed.ok and failed.status["reason"] == "NonZeroExitCode"
    assert failed.stderr == "nosuch: command not found\n"
    with pytest.raises(ExecError, match='404 NotFound: pods "no-such-pod" not found'):
        client.exec(NS, "no-such-pod", "compute", ["true"])
    assert kvm.count("GET", f"{PODS}/no-such-pod/exec") == 1  # a refusal is not retried
    wrong = tmp_path / "wrong-token"
    wrong.write_text("wrong")
    stranger = open_test_client(Access(api_server=kvm.url, token_file=str(wrong)), retries=0)
    with pytest.raises(ExecError, match="401"):
        stranger.exec(NS, KVM_POD, "compute", ["ps"])
    # Refused before the upgrade with a 503: retried like any transient failure.
    kvm.fail["exec:ps"] = []
    busy = client_for(kvm)
    before = kvm.count("GET", f"{PODS}/{KVM_POD}/exec")
    kvm.api.route = _refuse_first_exec(kvm)
    assert busy.exec(NS, KVM_POD, "compute", ["ps", "-e", "-o", "rss=,args="]).ok
    assert kvm.count("GET", f"{PODS}/{KVM_POD}/exec") == before + 2


def test_exec_that_times_out_is_not_retried(tmp_path: Path) -> None:
    """A command may have run: running it again is not the client's call."""
    release = threading.Event()

    def route(request: FakeRequest) -> Reply | Exec:
        return Exec(b"partial", b"", {"metadata": {}, "status": "Success"}, hold=release)

    with FakeApiServer(route) as server:
        token = tmp_path / "token"
        token.write_text(TOKEN)
        client = open_test_client(Access(api_server=server.url, token_file=str(token)), retries=3)
        try:
            with pytest.raises(ExecError, match="Timeout"):
                client.exec(NS, KVM_POD, "compute", ["sleep", "60"], timeout_seconds=0.3)
        finally:
            release.set()
        assert server.count("GET", f"{PODS}/{KVM_POD}/exec") == 1


def _refuse_first_exec(cluster: FakeCluster) -> Callable[[FakeRequest], Reply | Exec]:
    refused: list[bool] = []

    def route(request: FakeRequest) -> Reply | Exec:
        if request.upgrade and not refused:
            refused.append(True)
            return Reply(503, status(503, "ServiceUnavailable", "the server is currently unable"))
        return cluster.route(request)

    return route


def test_api_errors_carry_the_kubernetes_status(kvm: FakeCluster) -> None:
    client = client_for(kvm, retries=0)
    with pytest.raises(ApiError) as caught:
        client.vmi(NS, "nothing")
    assert (caught.value.status, caught.value.reason) == (404, "NotFound")
    assert caught.value.message == 'virtualmachineinstances.kubevirt.io "nothing" not found'
    assert client.delete_vmi(NS, "nothing") is False
    kvm.fail["node"] = [503]
    with pytest.raises(ApiError, match="503"):
        client.node("kvm-worker-1")
    unreachable = open_test_client(Access(api_server="http://127.0.0.1:9"), retries=1, backoff_seconds=0)
    with pytest.raises(ApiError, match="Unreachable"):
        unreachable.nodes()


def test_cli_with_a_kubeconfig_client_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Client certificates work end to end: a whole mshv run over TLS, no bearer token anywhere."""
    ca = CertificateAuthority(tmp_path)
    client = ca.client("bench-operator")
    with FakeCluster("mshv", tmp_path, ca=ca) as mshv:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "current-context": "bench",
                    "contexts": [{"name": "bench", "context": {"cluster": "c", "user": "u"}}],
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {
                                "server": mshv.url,
                                "certificate-authority-data": base64.b64encode(ca.cert_pem()).decode(),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": "u",
                            "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
                        }
                    ],
                }
            )
        )
        config_file = tmp_path / "shapes.yaml"
        config_file.write_text(yaml.safe_dump(mshv_config(mshv.meminfo)))
        argv = ["--config", str(config_file), "--kubeconfig", str(kubeconfig), "--output", "-"]
        assert cli.main(argv, environ={"NODE_NAME": "l1vh-worker-0"}) == 0
        assert set(mshv.api.users) == {"bench-operator"}
        assert any(path.endswith("/exec") or "/exec?" in path for _, path in mshv.requests)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["scope"] for r in lines] == ["pod", "node"]


def test_cli_over_https_with_a_token_file_and_a_ca_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority(tmp_path)
    config = mshv_config(tmp_path / "meminfo", pool={"hypervisor": "mshv", "node": "kvm-worker-1"})
    (tmp_path / "meminfo").write_text("MemAvailable: 1 kB\n")
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(yaml.safe_dump(config | {"output": str(tmp_path / "out.jsonl")}))
    with FakeCluster("kvm", tmp_path, ca=ca) as kvm:
        argv = ["--config", str(config_file), "--api-server", kvm.url, "--token-file", str(kvm.token_file)]
        # Refused after reading the node over TLS: the CA file made the server's certificate good.
        assert cli.main([*argv, "--ca-file", str(ca.cert)], environ={"NODE_NAME": "kvm-worker-1"}) == 2
        assert "kvm-worker-1 has no allocatable devices.kubevirt.io/mshv" in caplog.text
        assert kvm.api.users == ["token"]
        # Without it, the certificate is not trusted and nothing is read.
        assert cli.main(argv, environ={"NODE_NAME": "kvm-worker-1"}) == 2
        assert "cannot read the node: get nodes/kvm-worker-1: Unreachable" in caplog.text
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert kvm.api.users == ["token"] and kvm.count("POST", "/") == 0


def test_cli_without_credentials_refuses_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_file = tmp_path / "shapes.yaml"
    config_file.write_text(yaml.safe_dump(kvm_config(output=str(tmp_path / "out.jsonl"))))
    argv = ["--config", str(config_file), "--kubeconfig", str(tmp_path / "absent")]
    assert cli.main(argv, environ={}) == 2
    assert f"no Kubernetes credentials: no kubeconfig at {tmp_path / 'absent'}" in caplog.text


def test_uploader_retries_transient_failures_only(tmp_path: Path) -> None:
    answers = [503, 200]
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers["Authorization"], "body": body})
            status = answers.pop(0) if answers else 422
            payload = json.dumps(
                {"stored": 1, "duplicates": 0, "duplicateKeys": []}
                if status == 200
                else {"title": "Invalid input", "status": status}
            ).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uploader = Uploader(f"http://127.0.0.1:{server.server_address[1]}/", "tok", backoff_seconds=0)
        result = uploader.upload([{"runId": "r", "sampleId": "s"}])
        assert (result.stored, result.duplicates, len(seen)) == (1, 0, 2)
        assert seen[0]["auth"] == "Bearer tok" and seen[0]["body"] == {
            "records": [{"runId": "r", "sampleId": "s"}]
        }
        with pytest.raises(UploadError, match="refused: 422"):
            uploader.upload([{"runId": "r", "sampleId": "t"}])
        assert len(seen) == 3  # a refusal is not retried
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(UploadError, match="no bearer token"):
        Uploader("http://x", "")


def test_unsent_records_are_printed(kvm: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uploader = Uploader(f"http://127.0.0.1:{port}", "tok", retries=1, backoff_seconds=0)
    summary = benchmark(kvm, kvm_config(), uploader=uploader).run()
    assert (summary.measured, summary.unsent, summary.exit_code) == (1, 1, 1)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [_without_time(r) for r in printed] == [KVM_POD_RECORD]


def test_readings_parsers() -> None:
    rss, other = process_rss(
        "  1000 /usr/bin/virt-launcher-monitor --qemu-timeout 5m\n"
        "  2000 /usr/bin/virt-launcher --no-fork true\n"
        "   300 /usr/libexec/qemu-kvm -name guest=a\n"
        "   400 /usr/bin/qemu-system-x86_64 -name guest=b\n"
        "    50 /usr/bin/virt-probe\n"
        "    60 ps -e -o rss=,args=\n"
        "garbage\n"
    )
    assert rss == {"virtLauncherMonitor": 1000 * 1024, "virtLauncher": 2000 * 1024, "qemu": 700 * 1024}
    assert other == 50 * 1024
    with pytest.raises(MeasurementError, match="no QEMU"):
        process_rss("  10 /usr/sbin/virtqemud\n")
    assert meminfo("MemTotal: 10 kB\nMemAvailable:  4 kB\nHugePages_Total:   2\n") == {
        "MemTotal": 10240,
        "MemAvailable": 4096,
        "HugePages_Total": 2,
    }
    with pytest.raises(MeasurementError, match="MemAvailable"):
        meminfo("MemTotal: 10 kB\n")
    assert memory_stat("total_rss 5\ntotal_cache 6\nrss 1\nsec_pagetables 7\nfoo 9\n") == {
        "anon": 5,
        "file": 6,
        "sec_pagetables": 7,
    }
    assert qemu_version("QEMU emulator version 9.1.0 (qemu-kvm-9.1.0-15.el9)\n") == "9.1.0"
    assert libvirt_version("/usr/sbin/virtqemud (libvirt) 10.10.0\n") == "10.10.0"
    assert qemu_version("sh: qemu: not found") is None
    assert version_from_image("quay.io/kubevirt/virt-launcher:v1.9.0") == "v1.9.0"
    assert version_from_image("registry:5000/kubevirt/virt-launcher@sha256:abc") is None
    assert version_from_image("virt-launcher:latest") is None
    report = guest_report(
        "OVH-BENCH v1 state=touching memtotal_kib=10 memfree_kib=9 memfree_min_kib=9 cpus=1\r\n"
        "[ 3.1] random: crng init done OVH-BENCH v1 state=touched memtotal_kib=10 memfree_kib=3 "
        "memfree_min_kib=2 cpus=1\r\n"
    )
    assert report is not None and (report.state, report.mem_free_min, report.cpus) == ("touched", 2048, 1)
    assert guest_report("[    0.000000] Linux version 6.11\n") is None
    node = json.loads((DATA / "mshv" / "node.json").read_text())
    assert allocatable(node, "devices.kubevirt.io/mshv") == 1000
    assert allocatable(node, "devices.kubevirt.io/kvm") == 0
    assert cpu_model(node) == "SapphireRapids"
    assert cpu_model({"metadata": {"labels": {}}}) == "unknown"
    summary = json.loads((DATA / "kvm" / "summary-running.json").read_text())
    with pytest.raises(MeasurementError, match="does not list pod"):
        pod_memory(summary, NS, "virt-launcher-gone-abcde")


def test_node_level_takes_medians_of_each_side() -> None:
    def snap(available_kib: int, pods: int, kubelet: int) -> NodeSnapshot:
        stats = MemoryStats(working_set=0, usage=0, rss=0, available=0)
        return NodeSnapshot(
            meminfo={"MemAvailable": available_kib * 1024},
            node=stats,
            system={"pods": pods, "kubelet": kubelet},
        )

    before = [snap(1000, 100, 10), snap(1010, 90, 10), snap(990, 110, 10)]
    during = [snap(800, 150, 12), snap(700, 160, 12)]  # even count: the lower middle value
    value, raw = node_level(before, during)
    # MemAvailable 1000 -> 700 KiB; pods 100 -> 150; kubelet 10 -> 12.
    assert value == (1000 - 700) * 1024 - (150 - 100) - (12 - 10)
    assert raw["memAvailableBefore"] == 1000 * 1024 and raw["memAvailableDuring"] == 700 * 1024
    assert "runtimeWorkingSetBefore" not in raw  # not in every snapshot: left out of both sides


def test_config_validation() -> None:
    config = parse_config(
        {
            "pool": {"hypervisor": "kvm"},
            "shapes": {
                "matrix": {"vcpus": [1, 2], "memory": ["1Gi", "1536Mi"], "graphics": [False, True]},
                "points": [{"vcpus": 1, "memory": "1Gi"}],  # the same as a matrix point: kept once
            },
        }
    )
    assert len(config.shapes) == 8 and config.repetitions == 2 and config.node_scope is False
    assert config.shapes[0] == Shape(1, "1Gi", GIB, False, 0, "kubevirt")
    assert config.shapes[2].name == "c1-m1536mi-g0-io0-kubevirt"
    assert (
        parse_config({"pool": {"hypervisor": "mshv"}, "shapes": {"points": [MSHV_SHAPE]}}).node_scope is True
    )
    bad = [
        ({"pool": {}, "shapes": {"points": [KVM_SHAPE]}}, "pool.hypervisor"),
        ({"pool": {"hypervisor": "kvm"}, "shapes": {"points": [KVM_SHAPE]}, "timming": {}}, "timming"),
        (
            {"pool": {"hypervisor": "kvm"}, "shapes": {"points": [dict(KVM_SHAPE, memory="1Gx")]}},
            "points[0].memory",
        ),
        (
            {"pool": {"hypervisor": "kvm"}, "shapes": {"points": [dict(KVM_SHAPE, vcpus=0)]}},
            "points[0].vcpus",
        ),
        ({"pool": {"hypervisor": "kvm"}, "shapes": {}}, "shapes"),
        (
            {
                "pool": {"hypervisor": "kvm"},
                "guest": {"stressor": "stress-ng"},
                "shapes": {"points": [dict(KVM_SHAPE, deviceSet="minimal")]},
            },
            "guest.installPackages",
        ),
        (
            {
                "pool": {"hypervisor": "kvm"},
                "guest": {"stressor": "command"},
                "shapes": {"points": [KVM_SHAPE]},
            },
            "command",
        ),
        (
            {"pool": {"hypervisor": "kvm"}, "timing": {"readings": 0}, "shapes": {"points": [KVM_SHAPE]}},
            "readings",
        ),
    ]
    for data, path in bad:
        with pytest.raises(ConfigError) as caught:
            parse_config(data)
        assert path in caught.value.path or path in str(caught.value)


def test_user_data_fits_kubevirt_and_is_valid_sh(tmp_path: Path) -> None:
    for stressor in ("python", "stress-ng", "dd"):
        guest = GuestSettings(stressor=stressor, install_packages=stressor == "stress-ng")
        text = user_data(guest)
        assert len(text.encode()) < MAX_USER_DATA
        assert text.startswith("#cloud-config\n")
        cloud = yaml.safe_load(text)
        script = cloud["write_files"][0]["content"]
        assert cloud["runcmd"] == [["sh", "-c", "nohup /usr/local/bin/ovh-bench >/dev/null 2>&1 &"]]
        assert ("packages" in cloud) == (stressor == "stress-ng")
        path = tmp_path / f"{stressor}.sh"
        path.write_text(script)
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)
    with pytest.raises(ValueError, match="2048"):
        user_data(GuestSettings(stressor="command", command="true " * 300))


def test_guest_script_reports_on_the_console(tmp_path: Path) -> None:
    """The guest program, run here under /bin/sh: report lines the parser reads, and ``failed``."""

    def run(guest: GuestSettings) -> str:
        console = Path(guest.console_device)
        script = tmp_path / "guest.sh"
        script.write_text(yaml.safe_load(user_data(guest))["write_files"][0]["content"])
        process = subprocess.Popen(["sh", str(script)], start_new_session=True)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                if console.exists() and guest_report(console.read_text()) is not None:
                    break
                time.sleep(0.2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return console.read_text()

    # A stressor that fails: the first report (after one 2 s poll) says so.
    failing = GuestSettings(
        stressor="command", command="false", console_device=str(tmp_path / "failed.console")
    )
    report = guest_report(run(failing))
    assert report is not None and report.state == "failed"
    # The default stressor (python), on 1 % of this machine's MemAvailable: it runs and holds.
    python = GuestSettings(stressor="python", share=0.01, console_device=str(tmp_path / "python.console"))
    report = guest_report(run(python))
    assert report is not None and report.state in ("touching", "touched")
    assert report.cpus >= 1 and 0 < report.mem_free_min <= report.mem_total


def test_vmi_names_are_dns_labels() -> None:
    shape = Shape(1024, "16384Mi", 16 * GIB, True, 256, "kubevirt")
    name = vmi_name("job-0d4f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b", shape, 999)
    assert len(name) <= 63 and name.startswith("ovh-")


# --- manifests ------------------------------------------------------------------------------------


def _documents() -> dict[str, list[dict[str, Any]]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: dict[str, list[dict[str, Any]]] = {}
    for name in kustomization["resources"]:
        docs[name] = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    return docs


def _find(kind: str, name: str) -> dict[str, Any]:
    for docs in _documents().values():
        for doc in docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
    assert "namespace" not in kustomization  # it would move the Role in KubeVirt's namespace
    images = {image["name"] for image in kustomization["images"]}
    job = _find("Job", "overhead-bench")
    assert {c["image"] for c in job["spec"]["template"]["spec"]["containers"]} <= images


def test_every_manifest_validates_against_kubernetes_1_30_strictly() -> None:
    kinds = []
    for docs in _documents().values():
        for doc in docs:
            assert kubernetes_validate.validate(doc, "1.30", strict=True) == "1.30"
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["Namespace", "ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding"]
        + ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Job"]
    )


def test_job_runs_under_the_restricted_pod_security_level() -> None:
    job = _find("Job", "overhead-bench")
    assert kubernetes_validate.validate(job, "1.30", strict=True) == "1.30"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "overhead-bench" and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "projected", "downwardAPI"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security or security["privileged"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["JOB_UID"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}
    }
    assert env["OVERHEAD_TOKEN"]["secretKeyRef"]["name"] == "overhead-bench-token"
    assert container["command"] == ["python", "-m", "benchmarks.cluster"]
    # The process has time to delete the VMI in flight after SIGTERM.
    config = _shipped_config()
    assert pod["terminationGracePeriodSeconds"] > config.timing.delete_seconds
    assert job["spec"]["activeDeadlineSeconds"] > config.timing.max_run_seconds
    # Node scope reads the Job's own node: the Job is scheduled into the measured pool.
    assert pod["nodeSelector"] == config.pool.node_selector


def _shipped_config() -> Any:
    configmap = _find("ConfigMap", "overhead-bench-config")
    return parse_config(yaml.safe_load(configmap["data"]["shapes.yaml"]))


def test_shipped_configuration_parses() -> None:
    config = _shipped_config()
    assert config.namespace == _find("Role", "overhead-bench")["metadata"]["namespace"]
    assert config.upload.token_env == "OVERHEAD_TOKEN"
    assert len(config.shapes) == 4 * 3 * 2 * 2 + 2
    for shape in config.shapes:
        assert len(vmi_name("job-0d4f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b", shape, config.repetitions)) <= 63


def _rules(doc: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, ",".join(rule.get("resourceNames", [])))
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_is_least_privilege() -> None:
    cluster_role = _find("ClusterRole", "overhead-bench-nodes")
    assert _rules(cluster_role) == {
        ("", "nodes", "get", ""),
        ("", "nodes", "list", ""),
        ("", "nodes/proxy", "get", ""),
    }
    role = _find("Role", "overhead-bench")
    assert role["metadata"]["namespace"] == "overhead-bench"
    assert _rules(role) == {
        ("kubevirt.io", "virtualmachineinstances", "create", ""),
        ("kubevirt.io", "virtualmachineinstances", "get", ""),
        ("kubevirt.io", "virtualmachineinstances", "list", ""),
        ("kubevirt.io", "virtualmachineinstances", "delete", ""),
        ("", "pods", "get", ""),
        ("", "pods", "list", ""),
        ("", "pods/log", "get", ""),
        ("", "pods/exec", "get", ""),
        ("", "pods/exec", "create", ""),
    }
    version = _find("Role", "overhead-bench-kubevirt-version")
    assert version["metadata"]["namespace"] == "kubevirt"
    assert _rules(version) == {("kubevirt.io", "kubevirts", "get", "kubevirt")}
    for kind, name, role_kind in (
        ("RoleBinding", "overhead-bench", "Role"),
        ("RoleBinding", "overhead-bench-kubevirt-version", "Role"),
        ("ClusterRoleBinding", "overhead-bench-nodes", "ClusterRole"),
    ):
        binding = _find(kind, name)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": name,
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "overhead-bench", "namespace": NS}]
    # Each rule says why it is there: a comment right above it.
    lines = (DEPLOY / "rbac.yaml").read_text().splitlines()
    rule_starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rule_starts) == 7
    for index in rule_starts:
        assert lines[index - 1].strip().startswith("#"), lines[index]


def test_requests_made_are_covered_by_the_rbac(kvm: FakeCluster) -> None:
    """Every request of a whole run maps onto a rule the manifests grant."""
    kvm.leftovers = True
    benchmark(kvm, kvm_config()).run()
    granted_in = {
        NS: _rules(_find("Role", "overhead-bench")),
        "kubevirt": _rules(_find("Role", "overhead-bench-kubevirt-version")),
        "": _rules(_find("ClusterRole", "overhead-bench-nodes")),  # cluster-scoped requests
    }
    verbs = {"POST": "create", "DELETE": "delete"}
    assert len(kvm.requests) > 20
    for method, full in kvm.requests:
        path = urlsplit(full).path
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        namespace = ""
        if rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        granted = granted_in[namespace]
        resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
        named = len(rest) > 1
        verb = verbs.get(method) or ("get" if named else "list")
        if resource == "pods/exec":
            assert {(group, resource, "get", ""), (group, resource, "create", "")} <= granted
            continue
        names = {"", rest[1]} if named else {""}
        assert any((group, resource, verb, n) in granted for n in names), (method, full)
