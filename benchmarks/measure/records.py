"""Measurement records (scope ``qemu``) for ``POST /v1/measurements``, from one measured point.

``overheadBytes`` = anonymous + kernel memory charged to the VM's own cgroup − the guest RAM the
guest touched; the page cache charged there (QEMU's binary, libraries, firmware: clean and
reclaimable, and charged to whichever cgroup read it first) is reported in ``raw`` and not counted.
"""

from __future__ import annotations

import re
from typing import Any, Final

from benchmarks.measure.host import HostFacts
from benchmarks.measure.runner import MIB, Measurement
from overhead_service.calibration.records import validate_record

__all__ = ["build_record", "default_run_id", "sample_id"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def sample_id(point_name: str, repetition: int) -> str:
    """``<point name>-r<repetition>``: stable, so a re-run of the same run id never double-counts."""
    return f"{point_name}-r{repetition}"


def default_run_id(config_name: str, accelerator: str, node: str, date: str) -> str:
    """``<config>-<accelerator>-<node>-<YYYYMMDD>``: re-running a config on the same host and day
    gives the same run id (and so duplicates, not new samples)."""
    text = f"{config_name}-{accelerator}-{node}-{date}"
    return _UNSAFE.sub("-", text).strip("-")[:200] or "measure"


def build_record(measurement: Measurement, host: HostFacts, run_id: str) -> dict[str, Any]:
    """The record for one measurement, checked with the service's own validation."""
    m = measurement
    point = m.point
    touched = m.touched_bytes
    charged = m.cgroup.anon + m.cgroup.kernel
    avail = (m.serial.avail_mib or 0) * MIB
    share = round(touched / avail, 4) if avail else 0.0
    raw: dict[str, int] = {
        "rss": m.process.rss,
        "rssAnon": m.process.rss_anon,
        "rssFile": m.process.rss_file,
        "pss": m.process.pss,
        "pageTables": m.process.page_tables,
        "guestRamRss": m.process.guest_ram_rss,
        "cgroupAnon": m.cgroup.anon,
        "cgroupKernel": m.cgroup.kernel,
        "pageCache": m.cgroup.page_cache,
        "cgroupUsage": m.cgroup.usage,
        "guestAvailable": avail,
    }
    if m.cgroup.peak is not None:
        raw["cgroupPeak"] = m.cgroup.peak
    record: dict[str, Any] = {
        "runId": run_id,
        "sampleId": sample_id(point.name, m.repetition),
        "hypervisor": "kvm",  # QEMU's accelerator: kvm, or tcg standing in for it
        "arch": host.arch,
        "scope": "qemu",
        "overheadBytes": charged - touched,
        "rawBytes": charged,
        "guestTouchedBytes": touched,
        "vm": {
            "vcpus": point.vcpus,
            "guestMemoryBytes": point.memory_mib * MIB,
            "graphics": point.graphics,
            "vfio": False,
            "ioThreads": point.io_threads,
            "deviceSet": point.device_set,
            "touchedShare": min(share, 1.0),
            "vcpusOnline": m.vcpus_online,
        },
        "host": host.as_record() | {"accelerator": m.accelerator},
        "measuredAt": m.measured_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "raw": raw,
    }
    return validate_record(record)
