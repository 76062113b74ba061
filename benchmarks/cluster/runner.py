"""One benchmark run: check the node, then for each sample create a VMI, measure it, delete it.

Samples run one at a time on one node (node-level figures are only attributable that way). Per
sample, every request the run makes, in order (the node is chosen in ``preflight``, the VMI
created, watched and deleted in ``lifecycle``, the readings taken in ``probes``):

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.cluster.config import Config, Shape
from benchmarks.cluster.errors import PreflightError, RunAborted, SampleError, Terminated
from benchmarks.cluster.kube import ApiError, ExecError, KubeClient
from benchmarks.cluster.lifecycle import VmiLifecycle
from benchmarks.cluster.preflight import choose_node, host_facts
from benchmarks.cluster.probes import SampleProbes
from benchmarks.cluster.readings import (
    DEVICE_PREFIX,
    MeasurementError,
    NodeSnapshot,
    launcher_device,
    version_from_image,
)
from benchmarks.cluster.records import HostFacts, SampleFacts, SampleReadings, node_record, pod_record
from benchmarks.cluster.upload import JsonLinesSink, Uploader, UploadError
from benchmarks.cluster.vmi import sample_manifest
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
        self.vmis = VmiLifecycle(client, config.namespace, config.timing, sleep, clock)
        self.probes = SampleProbes(config, client, sleep, clock)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Measure every sample; PreflightError if the node is refused (nothing is created then)."""
        summary = RunSummary(run_id=self.run_id)
        samples = [
            (shape, rep) for rep in range(1, self.config.repetitions + 1) for shape in self.config.shapes
        ]
        summary.planned = len(samples)
        deadline = self._clock() + self.config.timing.max_run_seconds
        node = choose_node(self.config, self.client, self.self_node)
        summary.node = node["metadata"]["name"]
        host = host_facts(self.config, self.client, node)
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
        self.vmis.remove_leftovers()
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

    # --- one sample ------------------------------------------------------------------------------

    def sample(self, shape: Shape, rep: int, host: HostFacts) -> tuple[list[dict[str, Any]], HostFacts]:
        """The records of one sample (and the host facts, with the versions learnt on the way)."""
        base = f"{shape.name}-r{rep}"
        before = self.probes.node_snapshots(host.node) if self.config.node_scope else []
        manifest = sample_manifest(self.config, self.run_id, shape, rep, host.node)
        readings, host = self.measure(manifest, host, before)
        records = self.records(base, shape, host, readings)
        for record in records:
            try:
                validate_record(record, now=self._now())
            except InputError as err:
                raise SampleError(
                    f"record {record['sampleId']} is invalid at {err.path}: {err.detail}"
                ) from None
        return records, host

    def measure(
        self, manifest: Mapping[str, Any], host: HostFacts, before: list[NodeSnapshot]
    ) -> tuple[SampleReadings, HostFacts]:
        """Create the VMI, read it once its guest has touched its memory, and always delete it."""
        name, node = manifest["metadata"]["name"], host.node
        uid = ""
        try:
            uid = self.vmis.create(manifest)
            vmi = self.vmis.wait_running(name, node)
            pod_name = self.launcher_pod(uid, node)
            self.probes.wait_touched(pod_name)
            self._sleep(self.config.timing.settle_seconds)
            pods, during = self.probes.readings(pod_name, node)
            measured_at = self._now()
            rss, other, host = self.probes.processes(pod_name, host)
            cgroup = self.probes.compute_memory_stat(pod_name)
            report = self.probes.final_report(pod_name)
        finally:
            self.vmis.remove(name, uid)
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
        return readings, host

    def launcher_pod(self, uid: str, node: str) -> str:
        """The name of the VMI's launcher pod, which must ask for this run's hypervisor device."""
        pod = self.vmis.launcher_pod(uid, node)
        pod_name = str(pod["metadata"]["name"])
        device = launcher_device(pod)
        if device != self.hypervisor:
            raise RunAborted(
                f"the launcher pod {pod_name} asks for {DEVICE_PREFIX}{device} instead of {self.device}: "
                "KubeVirt does not run these VMIs on "
                f"{self.hypervisor} (check the KubeVirt CR's hypervisor configuration and feature gates)"
                if device
                else f"the launcher pod {pod_name} asks for no hypervisor device (software emulation?)"
            )
        return pod_name

    def records(
        self, base: str, shape: Shape, host: HostFacts, readings: SampleReadings
    ) -> list[dict[str, Any]]:
        """The sample's pod record, and its node record for node scope unless the figure is negative."""
        sample = SampleFacts(self.run_id, self.hypervisor, shape, self.config.guest, host, readings)
        records = [pod_record(sample, f"{base}-pod")]
        if self.config.node_scope:
            record, value = node_record(sample, f"{base}-node")
            if record is None:
                log.warning(
                    "sample %s: node-level figure is negative (%d bytes): no node record", base, value
                )
            else:
                records.append(record)
        return records

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
