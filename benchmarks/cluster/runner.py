"""One benchmark run: check the node, then for each sample create a VMI, measure it, delete it.

Samples run one at a time on one node (node-level figures are only attributable that way). Per
sample, every request the run makes, in order:

====================================================  =========================================
``GET  /api/v1/nodes/{node}/proxy/stats/summary``     node scope: baseline (after ``quietSeconds``)
``POST /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances``
``GET  …/virtualmachineinstances/{name}``             until ``Running`` (``runningSeconds``)
``GET  /api/v1/namespaces/{ns}/pods?labelSelector=kubevirt.io/created-by={uid}``
``GET  …/pods/{pod}/log?container=guest-console-log`` until the guest reports ``touched``
``GET  /api/v1/nodes/{node}/proxy/stats/summary``     ``readings`` times, after ``settleSeconds``
``GET  …/pods/{pod}/exec`` (WebSocket)                ``ps``, ``qemu --version``, ``virtqemud
                                                      --version``, ``cat memory.stat``
``GET  …/pods/{pod}/log?container=guest-console-log`` the guest's latest report
``DELETE …/virtualmachineinstances/{name}``           always (``finally``), then until gone
====================================================  =========================================

The node's ``/proc/meminfo`` is read from the file system next to each node-scope summary: the
Job runs on the node it measures (see docs/cluster-benchmark.md for why the kubelet's figures
cannot show the hypervisor's memory).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchmarks.cluster.config import Config, Shape
from benchmarks.cluster.kube import ApiError, ExecError, KubeClient
from benchmarks.cluster.readings import (
    DEVICE_PREFIX,
    GuestReport,
    MeasurementError,
    NodeSnapshot,
    PodMemory,
    allocatable,
    cpu_model,
    guest_report,
    launcher_device,
    libvirt_version,
    memory_stat,
    node_snapshot,
    pod_memory,
    process_rss,
    qemu_binary,
    qemu_version,
    version_from_image,
)
from benchmarks.cluster.records import HostFacts, SampleReadings, node_record, pod_record
from benchmarks.cluster.upload import JsonLinesSink, Uploader, UploadError
from benchmarks.cluster.vmi import MANAGED_BY, vmi_manifest, vmi_name
from overhead_service.calibration.records import validate_record
from overhead_service.errors import InputError

__all__ = [
    "Benchmark",
    "PreflightError",
    "RunAborted",
    "RunSummary",
    "SampleError",
    "Terminated",
]

log = logging.getLogger(__name__)

CONSOLE_CONTAINER: Final = "guest-console-log"
COMPUTE_CONTAINER: Final = "compute"
CONSOLE_TAIL_LINES: Final = 40
MEMORY_STAT_PATHS: Final = ("/sys/fs/cgroup/memory.stat", "/sys/fs/cgroup/memory/memory.stat")
FINAL_PHASES: Final = ("Failed", "Succeeded")


class PreflightError(Exception):
    """The run is refused before any VMI is created (wrong node, missing device, bad setup)."""


class RunAborted(Exception):
    """The run cannot go on (a VMI would not go away, the cluster runs the wrong hypervisor…)."""


class SampleError(Exception):
    """One sample failed; the run goes on (and may try the sample again)."""


class Terminated(BaseException):
    """SIGTERM (Job deleted or past its deadline): unwinds through every ``finally``.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """


@dataclass(slots=True)
class RunSummary:
    run_id: str
    node: str = ""
    planned: int = 0
    measured: int = 0
    failed: list[str] = field(default_factory=list)
    not_run: int = 0
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    unsent: int = 0
    negative_node_figures: list[str] = field(default_factory=list)
    aborted: str = ""

    @property
    def exit_code(self) -> int:
        clean = not (self.failed or self.not_run or self.unsent or self.aborted)
        return 0 if clean and self.measured == self.planned else 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"exitCode": self.exit_code}


class Benchmark:
    """Runs the configured matrix against one cluster."""

    def __init__(
        self,
        config: Config,
        client: KubeClient,
        *,
        run_id: str,
        self_node: str = "",
        uploader: Uploader | None = None,
        sink: JsonLinesSink | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.client = client
        self.run_id = run_id
        self.self_node = self_node
        self.uploader = uploader
        self.sink = sink
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self.hypervisor = config.pool.hypervisor
        self.device = DEVICE_PREFIX + self.hypervisor
        self.namespace = config.namespace

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Measure every sample; PreflightError if the node is refused (nothing is created then)."""
        summary = RunSummary(run_id=self.run_id)
        samples = [
            (shape, rep) for rep in range(1, self.config.repetitions + 1) for shape in self.config.shapes
        ]
        summary.planned = len(samples)
        deadline = self._clock() + self.config.timing.max_run_seconds
        node = self.preflight()
        summary.node = node["metadata"]["name"]
        host = self.host_facts(node)
        log.info(
            "run %s on node %s (%s, kernel %s, kubelet %s, KubeVirt %s, CPU %s): %d samples",
            self.run_id,
            host.node,
            self.hypervisor,
            host.kernel,
            host.kubelet,
            host.kubevirt or "unknown",
            host.cpu_model,
            len(samples),
        )
        self.remove_leftovers()
        for index, (shape, rep) in enumerate(samples):
            if self._clock() > deadline:
                summary.not_run = len(samples) - index
                log.warning("maxRunSeconds reached: %d samples not run", summary.not_run)
                break
            label = f"{shape.name}-r{rep}"
            records: list[dict[str, Any]] | None = None
            attempts = self.config.timing.sample_attempts
            for attempt in range(1, attempts + 1):
                try:
                    records, host = self.sample(shape, rep, host)
                    break
                except (SampleError, MeasurementError, ApiError, ExecError, OSError) as exc:
                    log.error("sample %s, attempt %d/%d failed: %s", label, attempt, attempts, exc)
                except RunAborted as exc:
                    summary.aborted = str(exc)
                    summary.failed.append(label)
                    summary.not_run = len(samples) - index - 1
                    log.error("run aborted: %s", exc)
                    return summary
            if records is None:
                summary.failed.append(label)
                continue
            summary.measured += 1
            if not any(r["scope"] == "node" for r in records) and self.config.node_scope:
                summary.negative_node_figures.append(label)
            self.deliver(records, summary)
        return summary

    def preflight(self) -> dict[str, Any]:
        """The node to measure, checked; PreflightError otherwise."""
        pool = self.config.pool
        try:
            if pool.node or self.self_node:
                node = self.client.node(pool.node or self.self_node)
                problem = self._node_problem(node)
                if problem and not pool.node:  # this Job's node is not in the pool: look elsewhere
                    log.info(
                        "this Job's node %s is not usable (%s); looking in the pool", self.self_node, problem
                    )
                    node = self._pick_node()
                elif problem:
                    raise PreflightError(problem)
            else:
                node = self._pick_node()
        except ApiError as err:
            raise PreflightError(f"cannot read the node: {err}") from None
        name = node["metadata"]["name"]
        if self.config.node_scope:
            if name != self.self_node:
                raise PreflightError(
                    "node scope reads /proc/meminfo of the node this Job runs on "
                    f"({self.self_node or 'unknown'}), but the node measured is {name}: "
                    "schedule the Job onto the measured node (its nodeSelector), or set nodeScope: false"
                )
            try:
                Path(self.config.meminfo_path).read_text(encoding="utf-8")
            except OSError as exc:
                raise PreflightError(f"cannot read {self.config.meminfo_path}: {exc}") from None
        return node

    def _pick_node(self) -> dict[str, Any]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.config.pool.node_selector.items()))
        listing = self.client.nodes(selector)
        problems = []
        for node in sorted(listing.get("items") or [], key=lambda n: str(n["metadata"]["name"])):
            problem = self._node_problem(node)
            if problem is None:
                return dict(node)
            problems.append(problem)
        detail = "; ".join(problems) if problems else f"no node matches nodeSelector {selector or '(none)'}"
        raise PreflightError(f"no usable {self.hypervisor} node: {detail}")

    def _node_problem(self, node: Mapping[str, Any]) -> str | None:
        """Why ``node`` cannot be measured, or None."""
        metadata = node.get("metadata") or {}
        name = metadata.get("name", "?")
        labels = metadata.get("labels") or {}
        for key, value in self.config.pool.node_selector.items():
            if labels.get(key) != value:
                return f"node {name} does not have label {key}={value}"
        if (node.get("spec") or {}).get("unschedulable"):
            return f"node {name} is cordoned (unschedulable)"
        conditions = (node.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return f"node {name} is not Ready"
        if allocatable(node, self.device) <= 0:
            what = "an L1VH (mshv) node" if self.hypervisor == "mshv" else "a KVM node"
            return (
                f"node {name} has no allocatable {self.device}: not {what}, or KubeVirt's device plugin "
                "does not run there"
            )
        return None

    def host_facts(self, node: Mapping[str, Any]) -> HostFacts:
        info = (node.get("status") or {}).get("nodeInfo") or {}
        kubevirt = None
        config = self.config
        try:
            cr = self.client.kubevirt(config.kubevirt_namespace, config.kubevirt_name)
            kubevirt = (cr.get("status") or {}).get("observedKubeVirtVersion") or None
        except ApiError as err:
            log.warning(
                "cannot read the KubeVirt CR (%s); the launcher image's tag will name the version", err
            )
        return HostFacts(
            node=node["metadata"]["name"],
            arch=str(info.get("architecture") or "amd64"),
            kernel=str(info.get("kernelVersion") or "unknown"),
            kubelet=str(info.get("kubeletVersion") or ""),
            accelerator=self.hypervisor,
            cpu_model=cpu_model(node),
            kubevirt=kubevirt,
        )

    def remove_leftovers(self) -> None:
        """Delete the VMIs an earlier, interrupted run left in the namespace."""
        try:
            listing = self.client.vmis(self.namespace, f"app.kubernetes.io/managed-by={MANAGED_BY}")
            for item in listing.get("items") or []:
                name = item["metadata"]["name"]
                log.warning("deleting VMI %s left by an earlier run", name)
                self.remove_vmi(name, (item.get("metadata") or {}).get("uid", ""))
        except (ApiError, SampleError, RunAborted) as err:
            raise PreflightError(f"cannot remove leftover VMIs: {err}") from None

    # --- one sample ------------------------------------------------------------------------------

    def sample(self, shape: Shape, rep: int, host: HostFacts) -> tuple[list[dict[str, Any]], HostFacts]:
        """The records of one sample (and the host facts, with the versions learnt on the way)."""
        node = host.node
        name = vmi_name(self.run_id, shape, rep)
        base = f"{shape.name}-r{rep}"
        before = self.node_snapshots(node) if self.config.node_scope else []
        manifest = vmi_manifest(
            name=name,
            namespace=self.config.namespace,
            run_id=self.run_id,
            sample=base,
            shape=shape,
            guest=self.config.guest,
            pool=self.config.pool,
            node=node,
        )
        uid = ""
        try:
            uid = self.create_vmi(manifest)
            vmi = self.wait_running(name, node)
            pod = self.launcher_pod(uid, node)
            pod_name = pod["metadata"]["name"]
            device = launcher_device(pod)
            if device != self.hypervisor:
                raise RunAborted(
                    f"the launcher pod {pod_name} asks for {DEVICE_PREFIX}{device} instead of {self.device}: "
                    "KubeVirt does not run these VMIs on "
                    f"{self.hypervisor} (check the KubeVirt CR's hypervisor configuration and feature gates)"
                    if device
                    else f"the launcher pod {pod_name} asks for no hypervisor device (software emulation?)"
                )
            self.wait_touched(pod_name)
            self._sleep(self.config.timing.settle_seconds)
            pods, during = self.readings(pod_name, node)
            measured_at = self._now()
            rss, other, host = self.processes(pod_name, host)
            cgroup = self.compute_memory_stat(pod_name)
            report = self.final_report(pod_name)
        finally:
            self.remove_vmi(name, uid)
        if host.kubevirt is None:
            image = str((vmi.get("status") or {}).get("launcherContainerImageVersion") or "")
            host = dataclasses.replace(host, kubevirt=version_from_image(image))
        readings = SampleReadings(
            pods=pods,
            rss=rss,
            rss_other=other,
            cgroup=cgroup,
            guest=report,
            measured_at=measured_at,
            before=before,
            during=during,
        )
        guest = self.config.guest
        records = [
            pod_record(
                run_id=self.run_id,
                sample_id=f"{base}-pod",
                hypervisor=self.hypervisor,
                shape=shape,
                guest=guest,
                host=host,
                readings=readings,
            )
        ]
        if self.config.node_scope:
            record, value = node_record(
                run_id=self.run_id,
                sample_id=f"{base}-node",
                hypervisor=self.hypervisor,
                shape=shape,
                guest=guest,
                host=host,
                readings=readings,
            )
            if record is None:
                log.warning(
                    "sample %s: node-level figure is negative (%d bytes): no node record", base, value
                )
            else:
                records.append(record)
        for record in records:
            try:
                validate_record(record, now=self._now())
            except InputError as err:
                raise SampleError(
                    f"record {record['sampleId']} is invalid at {err.path}: {err.detail}"
                ) from None
        return records, host

    def create_vmi(self, manifest: Mapping[str, Any]) -> str:
        """Create the VMI; its uid. An identical leftover of this run (a retried POST) is adopted."""
        name = manifest["metadata"]["name"]
        try:
            created = self.client.create_vmi(self.namespace, manifest)
        except ApiError as err:
            if err.status != 409:
                raise
            created = self.client.vmi(self.namespace, name)
            labels = (created.get("metadata") or {}).get("labels") or {}
            if labels != manifest["metadata"]["labels"] or created["metadata"].get("deletionTimestamp"):
                raise SampleError(f"VMI {name} exists already and is not this sample's") from None
        log.info("created VMI %s", name)
        return str(created["metadata"]["uid"])

    def wait_running(self, name: str, node: str) -> dict[str, Any]:
        timing = self.config.timing
        deadline = self._clock() + timing.running_seconds
        phase = None
        while True:
            vmi = self.client.vmi(self.namespace, name)
            status = vmi.get("status") or {}
            if status.get("phase") != phase:
                phase = status.get("phase")
                log.info("VMI %s: %s", name, phase or "(no phase yet)")
            if phase == "Running":
                if status.get("nodeName") != node:
                    raise SampleError(f"VMI {name} runs on {status.get('nodeName')}, not on {node}")
                return vmi
            if phase in FINAL_PHASES:
                reasons = "; ".join(
                    f"{c.get('type')}: {c.get('reason', '')} {c.get('message', '')}".strip()
                    for c in status.get("conditions") or []
                )
                raise SampleError(f"VMI {name} ended {phase} before it ran ({reasons or 'no conditions'})")
            if self._clock() > deadline:
                raise SampleError(
                    f"VMI {name} not Running within {timing.running_seconds:g} s (phase {phase})"
                )
            self._sleep(timing.poll_seconds)

    def launcher_pod(self, uid: str, node: str) -> dict[str, Any]:
        timing = self.config.timing
        deadline = self._clock() + timing.running_seconds
        while True:
            listing = self.client.pods(self.namespace, f"kubevirt.io/created-by={uid}")
            for pod in listing.get("items") or []:
                if (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get(
                    "deletionTimestamp"
                ):
                    if (pod.get("spec") or {}).get("nodeName") != node:
                        raise SampleError(f"launcher pod {pod['metadata']['name']} is not on {node}")
                    return dict(pod)
            if self._clock() > deadline:
                raise SampleError(f"no running virt-launcher pod for VMI uid {uid}")
            self._sleep(timing.poll_seconds)

    def console(self, pod: str) -> GuestReport | None:
        try:
            text = self.client.pod_log(self.namespace, pod, CONSOLE_CONTAINER, CONSOLE_TAIL_LINES)
        except ApiError as err:
            if err.status in (400, 404):  # the container is not there or not started yet
                return None
            raise
        return guest_report(text)

    def wait_touched(self, pod: str) -> None:
        timing = self.config.timing
        if self.config.guest.touch_detection == "settle":
            log.info("settle period: %g s for the stressor", timing.touch_seconds)
            self._sleep(timing.touch_seconds)
            return
        deadline = self._clock() + timing.touch_seconds
        while True:
            report = self.console(pod)
            if report is not None and report.state == "touched":
                log.info("guest touched its memory (MemFree low %d KiB)", report.mem_free_min // 1024)
                return
            if report is not None and report.state == "failed":
                raise SampleError("the guest's stressor failed (check the image and guest.stressor)")
            if self._clock() > deadline:
                last = f"last report: {report}" if report else "no report on the serial console"
                raise SampleError(
                    f"the guest did not report touched memory within {timing.touch_seconds:g} s ({last})"
                )
            self._sleep(timing.poll_seconds)

    def final_report(self, pod: str) -> GuestReport | None:
        if self.config.guest.touch_detection == "settle":
            return None
        report = self.console(pod)
        if report is None or report.state != "touched":
            raise SampleError(f"the guest's report changed while measuring: {report}")
        return report

    def readings(self, pod: str, node: str) -> tuple[list[PodMemory], list[NodeSnapshot]]:
        timing = self.config.timing
        pods: list[PodMemory] = []
        during: list[NodeSnapshot] = []
        for index in range(timing.readings):
            if index:
                self._sleep(timing.reading_interval_seconds)
            summary = self.summary(node)
            pods.append(pod_memory(summary, self.config.namespace, pod))
            if self.config.node_scope:
                during.append(node_snapshot(summary, self._meminfo()))
        return pods, during

    def node_snapshots(self, node: str) -> list[NodeSnapshot]:
        """The node before a VMI: ``readings`` snapshots after ``quietSeconds`` of calm."""
        timing = self.config.timing
        self._sleep(timing.quiet_seconds)
        snapshots = []
        for index in range(timing.readings):
            if index:
                self._sleep(timing.reading_interval_seconds)
            snapshots.append(node_snapshot(self.summary(node), self._meminfo()))
        return snapshots

    def summary(self, node: str) -> dict[str, Any]:
        return self.client.stats_summary(node)

    def _meminfo(self) -> str:
        return Path(self.config.meminfo_path).read_text(encoding="utf-8")

    def processes(self, pod: str, host: HostFacts) -> tuple[dict[str, int], int, HostFacts]:
        """RSS per component (``ps`` in the compute container), and QEMU's and libvirt's versions."""
        ns = self.config.namespace
        ps = self.client.exec(ns, pod, COMPUTE_CONTAINER, ["ps", "-e", "-o", "rss=,args="])
        if not ps.ok:
            raise SampleError(f"ps in {pod} failed: {ps.status.get('message', ps.stderr)}")
        rss, other = process_rss(ps.stdout)
        qemu = self._version(pod, [qemu_binary(ps.stdout), "--version"], qemu_version)
        libvirt = self._version(pod, ["virtqemud", "--version"], libvirt_version)
        host = dataclasses.replace(host, qemu=qemu or host.qemu, libvirt=libvirt or host.libvirt)
        return rss, other, host

    def _version(self, pod: str, command: Sequence[str], parse: Callable[[str], str | None]) -> str | None:
        try:
            result = self.client.exec(self.config.namespace, pod, COMPUTE_CONTAINER, command)
        except ExecError as err:
            log.warning("%s: %s", " ".join(command), err)
            return None
        version = parse(result.stdout + result.stderr) if result.ok else None
        if version is None:
            log.warning("no version from %s in %s", " ".join(command), pod)
        return version

    def compute_memory_stat(self, pod: str) -> dict[str, int]:
        """The compute container's cgroup memory.stat (cgroup v2, else v1); {} if unreadable."""
        for path in MEMORY_STAT_PATHS:
            try:
                result = self.client.exec(self.config.namespace, pod, COMPUTE_CONTAINER, ["cat", path])
            except ExecError as err:
                log.warning("cat %s: %s", path, err)
                return {}
            if result.ok:
                return memory_stat(result.stdout)
        log.warning("no memory.stat readable in %s", pod)
        return {}

    def remove_vmi(self, name: str, uid: str) -> None:
        """Delete the VMI (if it exists) and wait until it and its launcher pod are gone."""
        timing = self.config.timing
        try:
            self.client.delete_vmi(self.namespace, name)
            deadline = self._clock() + timing.delete_seconds
            while True:
                gone = self._vmi_gone(name)
                if gone and uid:
                    listing = self.client.pods(self.namespace, f"kubevirt.io/created-by={uid}")
                    gone = not listing.get("items")
                if gone:
                    log.info("deleted VMI %s", name)
                    return
                if self._clock() > deadline:
                    raise RunAborted(
                        f"VMI {name} or its launcher pod still there {timing.delete_seconds:g} s after delete"
                    )
                self._sleep(timing.poll_seconds)
        except ApiError as err:
            raise RunAborted(f"cannot delete VMI {name}: {err}") from err

    def _vmi_gone(self, name: str) -> bool:
        try:
            self.client.vmi(self.namespace, name)
        except ApiError as err:
            if err.status == 404:
                return True
            raise
        return False

    # --- records ---------------------------------------------------------------------------------

    def deliver(self, records: list[dict[str, Any]], summary: RunSummary) -> None:
        summary.records += len(records)
        if self.sink is not None:
            self.sink.write(records)
        if self.uploader is None:
            return
        try:
            result = self.uploader.upload(records)
        except UploadError as err:
            summary.unsent += len(records)
            log.error("%s; the records follow on standard output", err)
            if self.sink is None or self.sink.path != "-":
                JsonLinesSink("-").write(records)
            return
        summary.stored += result.stored
        summary.duplicates += result.duplicates
        log.info(
            "uploaded %d records (%d new, %d already stored)", len(records), result.stored, result.duplicates
        )
