"""Measurement records for ``POST /v1/measurements`` from one measured point: scope ``qemu`` from
the bare path, and from the libvirt path QEMU's, the daemon's and virtlogd's (see below).

``overheadBytes`` = anonymous + kernel memory charged to the VM's own cgroup − the guest RAM the
guest touched; the page cache charged there (QEMU's binary, libraries, firmware: clean and
reclaimable, and charged to whichever cgroup read it first) is reported in ``raw`` and not counted.
"""

from __future__ import annotations

import re
from typing import Any, Final

from benchmarks.measure.cgroups import CgroupFigures
from benchmarks.measure.config import Point
from benchmarks.measure.host import HostFacts
from benchmarks.measure.libvirt_runner import DomainFigures, LibvirtMeasurement
from benchmarks.measure.procfs import ProcessMemory
from benchmarks.measure.runner import MIB, Measurement
from overhead_service.calibration.records import validate_record

__all__ = ["build_libvirt_records", "build_record", "default_run_id", "sample_id"]

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
        "vm": vm_object(point, share, m.vcpus_online),
        "host": host.as_record() | {"accelerator": m.accelerator},
        "measuredAt": m.measured_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "raw": raw,
    }
    return validate_record(record)


# --- the libvirt path ---------------------------------------------------------------------------
#
# Per point: one record per domain (scope ``qemu``), one for the daemon (scope ``virtqemud``, also
# when libvirtd stood in for it: ``libvirt.daemon`` says which binary ran) and one for virtlogd,
# each with ``launcher: libvirt``, the ``libvirt`` object and ``host.libvirt`` (the record format,
# and its rules, are the service's: overhead_service/calibration/records.py).  A daemon's
# ``overheadBytes`` = ``rawBytes`` = its cgroup's anon + kernel memory; ``guestTouchedBytes`` = 0.


def _process_raw(process: ProcessMemory, cgroup: CgroupFigures) -> dict[str, int]:
    raw = {
        "rss": process.rss,
        "rssAnon": process.rss_anon,
        "rssFile": process.rss_file,
        "rssShmem": process.rss_shmem,
        "pss": process.pss,
        "pssAnon": process.pss_anon,
        "pssFile": process.pss_file,
        "pssShmem": process.pss_shmem,
        "pageTables": process.page_tables,
        "cgroupAnon": cgroup.anon,
        "cgroupKernel": cgroup.kernel,
        "pageCache": cgroup.page_cache,
        "cgroupUsage": cgroup.usage,
    }
    if cgroup.peak is not None:
        raw["cgroupPeak"] = cgroup.peak
    return raw


def vm_object(point: Point, touched_share: float, vcpus_online: bool) -> dict[str, Any]:
    """A record's ``vm``: the point's shape, the share of its RAM the guest touched (at most 1) and
    whether every vCPU came online."""
    return {
        "vcpus": point.vcpus,
        "guestMemoryBytes": point.memory_mib * MIB,
        "graphics": point.graphics,
        "vfio": False,
        "ioThreads": point.io_threads,
        "deviceSet": point.device_set,
        "touchedShare": min(touched_share, 1.0),
        "vcpusOnline": vcpus_online,
    }


def _vm(m: LibvirtMeasurement, domains: tuple[DomainFigures, ...]) -> dict[str, Any]:
    point = m.point
    shares = []
    for domain in domains:
        avail = (domain.serial.avail_mib or 0) * MIB
        shares.append(round((domain.serial.touched_mib or 0) * MIB / avail, 4) if avail else 0.0)
    return vm_object(point, min(shares), all(d.serial.online == point.vcpus for d in domains))


def build_libvirt_records(m: LibvirtMeasurement, host: HostFacts, run_id: str) -> list[dict[str, Any]]:
    """The records of one libvirt point: each domain's QEMU, then the daemon and virtlogd."""
    base_id = sample_id(m.point.name, m.repetition)
    libvirt = {
        "daemon": m.install.daemon,
        "build": m.install.build,
        "mode": "session",
        "domains": len(m.domains),
        "domainXmlSha256": m.domains[0].xml_digest,
    }
    common: dict[str, Any] = {
        "runId": run_id,
        "hypervisor": "kvm",
        "arch": host.arch,
        "launcher": "libvirt",
        "host": host.as_record() | {"accelerator": m.accelerator, "libvirt": m.install.version_text},
        "measuredAt": m.measured_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    records = []
    for domain in m.domains:
        touched = (domain.serial.touched_mib or 0) * MIB
        charged = domain.cgroup.anon + domain.cgroup.kernel
        raw = _process_raw(domain.process, domain.cgroup)
        raw |= {"guestRamRss": domain.guest_ram_rss, "guestAvailable": (domain.serial.avail_mib or 0) * MIB}
        records.append(
            common
            | {
                "sampleId": f"{base_id}-qemu{domain.index}",
                "scope": "qemu",
                "overheadBytes": charged - touched,
                "rawBytes": charged,
                "guestTouchedBytes": touched,
                "vm": _vm(m, (domain,)),
                "libvirt": libvirt | {"domainIndex": domain.index},
                "raw": raw,
            }
        )
    for scope, figures in (("virtqemud", m.daemon), ("virtlogd", m.virtlogd)):
        charged = figures.cgroup.anon + figures.cgroup.kernel
        raw = _process_raw(figures.process, figures.cgroup)
        if scope == "virtqemud":
            raw |= {
                "probeCgroupAnon": m.probe.anon,
                "probeCgroupKernel": m.probe.kernel,
                "probePageCache": m.probe.page_cache,
            }
        records.append(
            common
            | {
                "sampleId": f"{base_id}-{scope}",
                "scope": scope,
                "overheadBytes": charged,
                "rawBytes": charged,
                "guestTouchedBytes": 0,
                "vm": _vm(m, m.domains),
                "libvirt": libvirt | {"threads": figures.process.threads},
                "raw": raw,
            }
        )
    return [validate_record(record) for record in records]
