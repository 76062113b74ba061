"""Reading what the cluster answers: kubelet stats, ``ps`` output, versions, the guest's report.

Pure functions on decoded API responses and command output; :class:`MeasurementError` names what
is missing. Byte figures are ints.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

from overhead_service.errors import InputError
from overhead_service.model.quantity import parse_quantity

__all__ = [
    "COMPONENTS",
    "MEMORY_STAT_FIELDS",
    "SYSTEM_CONTAINERS",
    "GuestReport",
    "MeasurementError",
    "MemoryStats",
    "NodeSnapshot",
    "PodMemory",
    "allocatable",
    "cpu_model",
    "guest_report",
    "launcher_device",
    "libvirt_version",
    "median",
    "memory_stat",
    "meminfo",
    "node_snapshot",
    "pod_memory",
    "process_rss",
    "qemu_binary",
    "qemu_version",
    "version_from_image",
]

KIB: Final = 1024
# ps's argv[0] basename -> the component name the overhead tables use.
COMPONENTS: Final = {
    "virt-launcher-monitor": "virtLauncherMonitor",
    "virt-launcher": "virtLauncher",
    "virtqemud": "virtqemud",
    "virtlogd": "virtlogd",
}
# What the kubelet's summary calls the kubepods cgroup, the kubelet's and the runtime's.
SYSTEM_CONTAINERS: Final = ("pods", "kubelet", "runtime")
# memory.stat fields kept as raw figures (cgroup v2 names; v1's total_* are mapped onto them).
MEMORY_STAT_FIELDS: Final = (
    "anon",
    "file",
    "kernel",
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "shmem",
    "slab",
    "vmalloc",
)
_V1_FIELDS: Final = {"total_rss": "anon", "total_cache": "file", "total_shmem": "shmem"}
CPU_MODEL_LABEL: Final = "host-model-cpu.node.kubevirt.io/"
DEVICE_PREFIX: Final = "devices.kubevirt.io/"
_REPORT: Final = re.compile(
    r"OVH-BENCH v1 state=(?P<state>\w+) memtotal_kib=(?P<total>\d+) memfree_kib=(?P<free>\d+) "
    r"memfree_min_kib=(?P<low>\d+) cpus=(?P<cpus>\d+)"
)


class MeasurementError(Exception):
    """A figure the benchmark needs is missing or unusable."""


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """The kubelet's ``MemoryStats`` of one cgroup (0 where the kubelet left a field out)."""

    working_set: int
    usage: int
    rss: int
    available: int

    @classmethod
    def from_json(cls, memory: Any, what: str) -> MemoryStats:
        if not isinstance(memory, dict) or "workingSetBytes" not in memory:
            raise MeasurementError(f"the kubelet summary has no memory working set for {what}")
        return cls(
            working_set=_count(memory.get("workingSetBytes"), what),
            usage=_count(memory.get("usageBytes", 0), what),
            rss=_count(memory.get("rssBytes", 0), what),
            available=_count(memory.get("availableBytes", 0), what),
        )


@dataclass(frozen=True, slots=True)
class PodMemory:
    pod: MemoryStats  # the pod cgroup: every container plus the pod's own overhead
    containers: dict[str, MemoryStats]


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node's memory at one moment: its /proc/meminfo and the kubelet's cgroup figures."""

    meminfo: dict[str, int]  # bytes
    node: MemoryStats  # the kubelet's root cgroup figures
    system: dict[str, int]  # working set of "pods", "kubelet", "runtime"


@dataclass(frozen=True, slots=True)
class GuestReport:
    state: str  # touching | touched | failed
    mem_total: int  # bytes, as the guest sees them
    mem_free: int
    mem_free_min: int  # the lowest MemFree since the stressor started
    cpus: int  # CPUs online in the guest


def pod_memory(summary: Mapping[str, Any], namespace: str, name: str) -> PodMemory:
    """The memory of pod ``namespace/name`` in a kubelet ``/stats/summary`` answer."""
    for pod in summary.get("pods") or []:
        ref = pod.get("podRef") or {}
        if ref.get("namespace") == namespace and ref.get("name") == name:
            what = f"pod {namespace}/{name}"
            containers = {
                str(c.get("name")): MemoryStats.from_json(
                    c.get("memory"), f"{what} container {c.get('name')}"
                )
                for c in pod.get("containers") or []
            }
            return PodMemory(pod=MemoryStats.from_json(pod.get("memory"), what), containers=containers)
    raise MeasurementError(f"the kubelet summary does not list pod {namespace}/{name} (yet)")


def node_snapshot(summary: Mapping[str, Any], meminfo_text: str) -> NodeSnapshot:
    """The node figures of a kubelet summary, with the node's /proc/meminfo."""
    node = summary.get("node") or {}
    system: dict[str, int] = {}
    for container in node.get("systemContainers") or []:
        name = container.get("name")
        if name in SYSTEM_CONTAINERS and isinstance(container.get("memory"), dict):
            system[name] = MemoryStats.from_json(container["memory"], f"system container {name}").working_set
    if "pods" not in system:  # older kubelets: add up the pods themselves
        system["pods"] = sum(
            MemoryStats.from_json(pod.get("memory"), "a pod").working_set for pod in summary.get("pods") or []
        )
    return NodeSnapshot(
        meminfo=meminfo(meminfo_text),
        node=MemoryStats.from_json(node.get("memory"), "the node"),
        system=system,
    )


def meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (``MemAvailable`` is required)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0]) * (KIB if parts[1:] == ["kB"] else 1)
    if "MemAvailable" not in values:
        raise MeasurementError("/proc/meminfo has no MemAvailable (kernel older than 3.14?)")
    return values


def process_rss(ps_output: str) -> tuple[dict[str, int], int]:
    """Bytes of RSS per component from ``ps -e -o rss=,args=`` (KiB, then the command line).

    Returns ``({component: bytes}, other bytes)``; processes of one kind are added up, ``ps``
    itself is left out. QEMU is any program whose name starts with ``qemu`` (``qemu-kvm``,
    ``qemu-system-x86_64``).
    """
    found: dict[str, int] = {}
    other = 0
    for line in ps_output.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        rss = int(parts[0]) * KIB
        program = PurePosixPath(parts[1].split()[0]).name
        if program == "ps":
            continue
        component = "qemu" if program.startswith("qemu") else COMPONENTS.get(program)
        if component is None:
            other += rss
        else:
            found[component] = found.get(component, 0) + rss
    if "qemu" not in found:
        raise MeasurementError("no QEMU process in the compute container's process list")
    return found, other


def qemu_binary(ps_output: str) -> str:
    """The path of the QEMU program in ``ps -e -o rss=,args=`` output ("" if none)."""
    for line in ps_output.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and PurePosixPath(parts[1].split()[0]).name.startswith("qemu"):
            return parts[1].split()[0]
    return ""


def qemu_version(text: str) -> str | None:
    """``9.1.0`` from ``QEMU emulator version 9.1.0 (qemu-kvm-9.1.0-15.el9)``."""
    match = re.search(r"QEMU emulator version (\S+)", text)
    return match.group(1) if match else None


def libvirt_version(text: str) -> str | None:
    """``10.10.0`` from ``/usr/sbin/virtqemud (libvirt) 10.10.0``."""
    match = re.search(r"\(libvirt\) (\S+)", text)
    return match.group(1) if match else None


def version_from_image(image: str) -> str | None:
    """``v1.9.0`` from ``quay.io/kubevirt/virt-launcher:v1.9.0`` (None for a digest or no tag)."""
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail or ":" not in tail:
        return None
    tag = tail.rsplit(":", 1)[1]
    return tag if re.fullmatch(r"v?\d+\.\d+\S*", tag) else None


def memory_stat(text: str) -> dict[str, int]:
    """The kept fields of a cgroup ``memory.stat`` (v2 names; v1's ``total_*`` mapped)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            name = _V1_FIELDS.get(parts[0], parts[0])
            if name in MEMORY_STAT_FIELDS:
                values[name] = int(parts[1])
    return values


def guest_report(log_text: str) -> GuestReport | None:
    """The guest's latest report line in the serial console log, or None before the first."""
    latest: GuestReport | None = None
    for match in _REPORT.finditer(log_text):
        latest = GuestReport(
            state=match["state"],
            mem_total=int(match["total"]) * KIB,
            mem_free=int(match["free"]) * KIB,
            mem_free_min=int(match["low"]) * KIB,
            cpus=int(match["cpus"]),
        )
    return latest


def allocatable(node: Mapping[str, Any], resource: str) -> int:
    """The node's allocatable count of ``resource`` (0 when absent or unparsable)."""
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    if not isinstance(value, str):
        return 0
    try:
        return max(parse_quantity(value).value(), 0)
    except InputError:
        return 0


def cpu_model(node: Mapping[str, Any]) -> str:
    """The host CPU model virt-handler labels the node with (``host-model-cpu.node.kubevirt.io/X``)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    models = sorted(
        key[len(CPU_MODEL_LABEL) :] for key, value in labels.items() if key.startswith(CPU_MODEL_LABEL)
    )
    return models[0] if models else "unknown"


def launcher_device(pod: Mapping[str, Any]) -> str | None:
    """The hypervisor device (``kvm``, ``mshv``) the compute container asks for, if any."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != "compute":
            continue
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            for name in resources.get(kind) or {}:
                device = name[len(DEVICE_PREFIX) :] if name.startswith(DEVICE_PREFIX) else ""
                if device in ("kvm", "mshv"):
                    return device
    return None


def median(values: Sequence[int]) -> int:
    """The median of ints, as an int (the lower middle value for an even count)."""
    return int(statistics.median_low(values))


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise MeasurementError(f"the kubelet summary has a bad memory figure for {what}: {value!r}")
    return value
