"""What a sample reads while its VMI runs: the guest's reports on the serial console, the kubelet's
summaries (and the node's ``/proc/meminfo``), and, inside the compute container, ``ps``, the
versions of QEMU and libvirt and the cgroup's ``memory.stat``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks.cluster.config import Config
from benchmarks.cluster.errors import SampleError
from benchmarks.cluster.kube import ApiError, ExecError, KubeClient
from benchmarks.cluster.readings import (
    GuestReport,
    NodeSnapshot,
    PodMemory,
    guest_report,
    libvirt_version,
    memory_stat,
    node_snapshot,
    pod_memory,
    process_rss,
    qemu_binary,
    qemu_version,
)
from benchmarks.cluster.records import HostFacts

__all__ = ["SampleProbes"]

log = logging.getLogger(__name__)

CONSOLE_CONTAINER: Final = "guest-console-log"
COMPUTE_CONTAINER: Final = "compute"
CONSOLE_TAIL_LINES: Final = 40
MEMORY_STAT_PATHS: Final = ("/sys/fs/cgroup/memory.stat", "/sys/fs/cgroup/memory/memory.stat")


@dataclass(frozen=True, slots=True)
class SampleProbes:
    """Reads a running sample through ``client`` (pods in ``config.namespace``)."""

    config: Config
    client: KubeClient
    sleep: Callable[[float], None]
    clock: Callable[[], float]

    # --- the guest -------------------------------------------------------------------------------

    def console(self, pod: str) -> GuestReport | None:
        """The guest's latest report on its serial console, None before there is one."""
        try:
            text = self.client.pod_log(self.config.namespace, pod, CONSOLE_CONTAINER, CONSOLE_TAIL_LINES)
        except ApiError as err:
            if err.status in (400, 404):  # the container is not there or not started yet
                return None
            raise
        return guest_report(text)

    def wait_touched(self, pod: str) -> None:
        """Until the guest has touched its memory (or, without detection, the settle period)."""
        timing = self.config.timing
        if self.config.guest.touch_detection == "settle":
            log.info("settle period: %g s for the stressor", timing.touch_seconds)
            self.sleep(timing.touch_seconds)
            return
        deadline = self.clock() + timing.touch_seconds
        while True:
            report = self.console(pod)
            if report is not None and report.state == "touched":
                log.info("guest touched its memory (MemFree low %d KiB)", report.mem_free_min // 1024)
                return
            if report is not None and report.state == "failed":
                raise SampleError("the guest's stressor failed (check the image and guest.stressor)")
            if self.clock() > deadline:
                last = f"last report: {report}" if report else "no report on the serial console"
                raise SampleError(
                    f"the guest did not report touched memory within {timing.touch_seconds:g} s ({last})"
                )
            self.sleep(timing.poll_seconds)

    def final_report(self, pod: str) -> GuestReport | None:
        """The guest's report after the readings, which must still say ``touched``."""
        if self.config.guest.touch_detection == "settle":
            return None
        report = self.console(pod)
        if report is None or report.state != "touched":
            raise SampleError(f"the guest's report changed while measuring: {report}")
        return report

    # --- the kubelet and the node ----------------------------------------------------------------

    def readings(self, pod: str, node: str) -> tuple[list[PodMemory], list[NodeSnapshot]]:
        """``readings`` of the pod's memory (and of the node, for node scope)."""
        pods: list[PodMemory] = []
        during: list[NodeSnapshot] = []
        for _ in self._spaced_readings():
            summary = self.summary(node)
            pods.append(pod_memory(summary, self.config.namespace, pod))
            if self.config.node_scope:
                during.append(node_snapshot(summary, self.meminfo()))
        return pods, during

    def node_snapshots(self, node: str) -> list[NodeSnapshot]:
        """The node before a VMI: ``readings`` snapshots after ``quietSeconds`` of calm."""
        self.sleep(self.config.timing.quiet_seconds)
        return [node_snapshot(self.summary(node), self.meminfo()) for _ in self._spaced_readings()]

    def _spaced_readings(self) -> Iterator[int]:
        """``readings`` times, ``readingIntervalSeconds`` apart."""
        timing = self.config.timing
        for index in range(timing.readings):
            if index:
                self.sleep(timing.reading_interval_seconds)
            yield index

    def summary(self, node: str) -> dict[str, Any]:
        return self.client.stats_summary(node)

    def meminfo(self) -> str:
        return Path(self.config.meminfo_path).read_text(encoding="utf-8")

    # --- the compute container -------------------------------------------------------------------

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
