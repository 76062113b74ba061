"""Measurement records (``POST /v1/measurements``) from one sample's readings.

Scope ``pod``: ``rawBytes`` is the virt-launcher pod cgroup's working set (the highest of the
readings), ``guestTouchedBytes`` the guest RAM resident in it, ``overheadBytes`` their difference.

Scope ``node``: memory the node lost while the VMI ran that no cgroup the kubelet knows explains,
i.e. ``MemAvailable`` before minus ``MemAvailable`` during, less the growth of the working sets
of the kubepods cgroup, the kubelet and the container runtime (medians of the readings on each
side). ``guestTouchedBytes`` is 0 (the guest's RAM is inside the pod), so ``overheadBytes ==
rawBytes``. A negative figure (the node freed memory elsewhere meanwhile) cannot be a record:
:func:`node_record` returns None and the runner logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from benchmarks.cluster.config import GuestSettings, Shape
from benchmarks.cluster.readings import GuestReport, NodeSnapshot, PodMemory, median

__all__ = [
    "HostFacts",
    "SampleFacts",
    "SampleReadings",
    "guest_touched",
    "node_level",
    "node_record",
    "pod_record",
    "timestamp",
]

_MEMINFO_FIGURES: Final = {"MemAvailable": "memAvailable", "MemFree": "memFree", "VmallocUsed": "vmallocUsed"}
_SYSTEM_FIGURES: Final = {
    "pods": "podsWorkingSet",
    "kubelet": "kubeletWorkingSet",
    "runtime": "runtimeWorkingSet",
}


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the records say about the host (``kubelet`` is logged only: records have no field for it)."""

    node: str
    arch: str
    kernel: str
    accelerator: str
    cpu_model: str
    kubelet: str = ""
    qemu: str = "unknown"
    libvirt: str | None = None
    kubevirt: str | None = None

    def as_record(self) -> dict[str, Any]:
        host: dict[str, Any] = {
            "kernel": self.kernel,
            "qemu": self.qemu,
            "accelerator": self.accelerator,
            "node": self.node,
            "cpuModel": self.cpu_model,
        }
        if self.libvirt:
            host["libvirt"] = self.libvirt
        if self.kubevirt:
            host["kubevirt"] = self.kubevirt
        return host


@dataclass(frozen=True, slots=True)
class SampleReadings:
    """Everything read for one sample."""

    pods: Sequence[PodMemory]  # the launcher pod, one per reading
    rss: dict[str, int]  # component -> bytes (ps)
    rss_other: int
    cgroup: dict[str, int]  # the compute container's memory.stat (may be empty)
    guest: GuestReport | None  # touchDetection "console"
    measured_at: datetime
    before: Sequence[NodeSnapshot] = field(default_factory=tuple)  # node scope only
    during: Sequence[NodeSnapshot] = field(default_factory=tuple)


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, e.g. ``2026-11-27T10:31:00Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def guest_touched(shape: Shape, guest: GuestSettings, report: GuestReport | None) -> tuple[int, float]:
    """Guest RAM counted as touched (bytes) and its share of the guest's RAM.

    With the console report: the guest's RAM minus the lowest ``MemFree`` it saw, which is at
    most what is resident (a page not free then is in use, so it was touched). Without it
    (``settle``): ``assumedTouchedShare`` of the guest's RAM.
    """
    if report is None:
        touched = int(shape.memory_bytes * guest.assumed_touched_share)
    else:
        touched = min(max(shape.memory_bytes - report.mem_free_min, 0), shape.memory_bytes)
    return touched, round(touched / shape.memory_bytes, 6)


def _vm(shape: Shape, share: float, report: GuestReport | None) -> dict[str, Any]:
    vm: dict[str, Any] = {
        "vcpus": shape.vcpus,
        "guestMemoryBytes": shape.memory_bytes,
        "graphics": shape.graphics,
        "vfio": False,
        "ioThreads": shape.io_threads,
        "deviceSet": shape.device_set,
        "touchedShare": share,
    }
    if report is not None:
        vm["vcpusOnline"] = report.cpus >= shape.vcpus
    return vm


@dataclass(frozen=True, slots=True)
class SampleFacts:
    """One sample as its records describe it."""

    run_id: str
    hypervisor: str
    shape: Shape
    guest: GuestSettings
    host: HostFacts
    readings: SampleReadings


def _record(
    sample: SampleFacts,
    sample_id: str,
    scope: str,
    raw_bytes: int,
    touched: int,
    share: float,
    raw: dict[str, int],
) -> dict[str, Any]:
    return {
        "runId": sample.run_id,
        "sampleId": sample_id,
        "hypervisor": sample.hypervisor,
        "arch": sample.host.arch,
        "scope": scope,
        "overheadBytes": raw_bytes - touched,
        "rawBytes": raw_bytes,
        "guestTouchedBytes": touched,
        "vm": _vm(sample.shape, share, sample.readings.guest),
        "host": sample.host.as_record(),
        "measuredAt": timestamp(sample.readings.measured_at),
        "raw": raw,
    }


def pod_record(sample: SampleFacts, sample_id: str) -> dict[str, Any]:
    """The scope ``pod`` record of one sample."""
    readings = sample.readings
    if not readings.pods:
        raise ValueError("no pod readings")
    touched, share = guest_touched(sample.shape, sample.guest, readings.guest)
    raw: dict[str, int] = {
        "podWorkingSet": max(p.pod.working_set for p in readings.pods),
        "podUsage": max(p.pod.usage for p in readings.pods),
        "podRss": max(p.pod.rss for p in readings.pods),
    }
    for name in sorted({name for p in readings.pods for name in p.containers}):
        stats = [p.containers[name] for p in readings.pods if name in p.containers]
        raw[f"workingSet:{name}"] = max(s.working_set for s in stats)
        if name == "compute":
            raw["computeUsage"] = max(s.usage for s in stats)
            raw["computeRss"] = max(s.rss for s in stats)
    for component, value in sorted(readings.rss.items()):
        raw[f"rss:{component}"] = value
    raw["rss:other"] = readings.rss_other
    for name, value in sorted(readings.cgroup.items()):
        raw[f"computeCgroup:{name}"] = value
    if readings.guest is not None:
        raw["guestMemTotal"] = readings.guest.mem_total
        raw["guestMemFree"] = readings.guest.mem_free
        raw["guestMemFreeMin"] = readings.guest.mem_free_min
    return _record(sample, sample_id, "pod", raw["podWorkingSet"], touched, share, raw)


def node_level(before: Sequence[NodeSnapshot], during: Sequence[NodeSnapshot]) -> tuple[int, dict[str, int]]:
    """Memory the node lost that the kubelet's cgroups do not explain, and the figures behind it."""
    if not before or not during:
        raise ValueError("node_level needs readings before and during the VMI")
    raw: dict[str, int] = {}
    for field_name, label in _MEMINFO_FIGURES.items():
        if all(field_name in s.meminfo for s in (*before, *during)):
            raw[f"{label}Before"] = median([s.meminfo[field_name] for s in before])
            raw[f"{label}During"] = median([s.meminfo[field_name] for s in during])
    explained = 0
    for name, label in _SYSTEM_FIGURES.items():
        if all(name in s.system for s in (*before, *during)):
            raw[f"{label}Before"] = median([s.system[name] for s in before])
            raw[f"{label}During"] = median([s.system[name] for s in during])
            explained += raw[f"{label}During"] - raw[f"{label}Before"]
    raw["nodeCgroupWorkingSetBefore"] = median([s.node.working_set for s in before])
    raw["nodeCgroupWorkingSetDuring"] = median([s.node.working_set for s in during])
    lost = raw["memAvailableBefore"] - raw["memAvailableDuring"]
    return lost - explained, raw


def node_record(sample: SampleFacts, sample_id: str) -> tuple[dict[str, Any] | None, int]:
    """The scope ``node`` record (None when the figure is negative) and the figure itself."""
    readings = sample.readings
    value, raw = node_level(readings.before, readings.during)
    if value < 0:
        return None, value
    _, share = guest_touched(sample.shape, sample.guest, readings.guest)
    raw["podWorkingSet"] = max(p.pod.working_set for p in readings.pods)
    return _record(sample, sample_id, "node", value, 0, share, raw), value
