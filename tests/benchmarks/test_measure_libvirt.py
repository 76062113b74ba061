"""The libvirt path of the local benchmark (``python -m benchmarks.measure libvirt``): the domain
XML, the daemons' set-up, the records' extension, and real runs through the packaged ``libvirtd``
and ``virtlogd`` (``make test`` installs them): a smoke end to end, a daemon that will not start, a
domain that does not boot, and runs interrupted by SIGINT and SIGTERM. After each real run nothing
of it may be left: no process in one of its cgroups, no cgroup, no private directory."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from benchmarks.harness.tokens import INGEST_TOKEN
from benchmarks.measure.cgroups import CgroupFigures, find_memory_parent
from benchmarks.measure.cli import main
from benchmarks.measure.config import Point, expand, load_config
from benchmarks.measure.domain import DomainFiles, domain_xml, hotplug_root_ports, xml_digest
from benchmarks.measure.guest import SerialReport, build_guest
from benchmarks.measure.host import HostFacts, choose_accelerator
from benchmarks.measure.libvirt_daemons import WRAPPER, _with_qemu
from benchmarks.measure.libvirt_install import (
    LibvirtInstall,
    LibvirtUnavailable,
    find_install,
    parse_version,
)
from benchmarks.measure.libvirt_runner import (
    DaemonFigures,
    DomainFigures,
    LibvirtMeasurement,
    LibvirtRunner,
)
from benchmarks.measure.procfs import ProcessMemory
from benchmarks.measure.records import build_libvirt_records
from benchmarks.measure.runner import PointFailed
from benchmarks.measure.upload import read_jsonl
from overhead_service.calibration.records import validate_batch, validate_record
from overhead_service.errors import InputError
from tests.conftest import AppFactory
from tests.support import ROOT

MEASURE = ROOT / "benchmarks" / "measure"
MIB = 1024 * 1024
KIB = 1024


def _point(**fields: Any) -> Point:
    base: dict[str, Any] = {"vcpus": 2, "memoryMiB": 1024, "touchPct": 100}
    return expand({"points": [base | fields]}).points[0]


def _el(parent: ET.Element, path: str) -> ET.Element:
    """The element at ``path`` (which must be there)."""
    found = parent.find(path)
    assert found is not None, path
    return found


def _xml(point: Point, index: int = 0, root: Path = Path("/w")) -> ET.Element:
    disk = root / "vm" / "disk.qcow2" if point.device_set == "kubevirt" else None
    return ET.fromstring(domain_xml(point, index, DomainFiles(root / "touch.elf", root / "vm", disk)))


# --- the domain ---------------------------------------------------------------------------------


def test_minimal_domain_is_kubevirts_with_its_devices_left_out() -> None:
    domain = _xml(_point(vcpus=4, memoryMiB=256))
    assert domain.get("type") == "kvm" and domain.findtext("name") == "default_vmi0"
    assert _el(domain, "memory").text == str(256 * MIB) and _el(domain, "memory").get("unit") == "b"
    assert _el(domain, "vcpu").text == "4"
    topology = domain.find("cpu/topology")
    assert topology is not None and topology.attrib == {"sockets": "4", "cores": "1", "threads": "1"}
    assert _el(domain, "cpu").get("mode") == "host-model"
    assert _el(domain, "cpu/feature").attrib == {"policy": "disable", "name": "arch-capabilities"}
    assert domain.findtext("os/kernel") == "/w/touch.elf" and domain.findtext("os/cmdline") == "pct=100"
    assert _el(domain, "os/type").get("machine") == "q35"
    assert [(f.tag, f.attrib) for f in _el(domain, "features")] == [
        ("acpi", {}),
        ("vmport", {"state": "off"}),
    ]
    system = {e.get("name"): e.text for e in domain.findall("sysinfo/system/entry")}
    assert system == {
        "uuid": domain.findtext("uuid"), "manufacturer": "KubeVirt", "family": "KubeVirt", "product": "None",
        "sku": None, "version": None,
    }  # fmt: skip
    devices = domain.find("devices")
    assert devices is not None
    controllers = [(c.get("type"), c.get("model")) for c in devices.findall("controller")]
    assert ("usb", "none") in controllers and ("virtio-serial", "virtio-non-transitional") in controllers
    assert not any(kind == "scsi" for kind, _ in controllers)  # hotplug disabled
    assert controllers.count(("pci", "pcie-root-port")) == 6  # virtio-serial's + 5 free (8 counted in all)
    assert _el(devices, "memballoon").get("model") == "none"
    assert _el(devices, "channel/target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}
    serial = devices.find("serial")
    assert serial is not None and serial.get("type") == "unix"
    assert _el(serial, "source").attrib == {"mode": "bind", "path": "/w/vm/virt-serial0"}
    assert _el(serial, "log").attrib == {"file": "/w/vm/virt-serial0-log", "append": "on"}
    assert _el(devices, "console").get("type") == "pty"
    for absent in ("video", "graphics", "interface", "disk", "rng"):
        assert devices.find(absent) is None, absent
    assert domain.find("iothreads") is None


def test_kubevirt_domain_with_graphics_and_iothreads() -> None:
    domain = _xml(_point(graphics=True, ioThreads=2, deviceSet="kubevirt"))
    devices = domain.find("devices")
    assert devices is not None
    assert domain.findtext("iothreads") == "2"
    assert _el(devices, "video/model").attrib == {"type": "vga", "heads": "1", "vram": "16384"}
    assert _el(devices, "graphics/listen").attrib == {"type": "socket", "socket": "/w/vm/virt-vnc"}
    balloon = devices.find("memballoon")
    assert balloon is not None and balloon.attrib == {
        "model": "virtio-non-transitional",
        "freePageReporting": "on",
    }
    assert _el(balloon, "stats").get("period") == "10"
    driver = devices.find("disk/driver")
    assert driver is not None and driver.get("iothread") == "1" and driver.get("type") == "qcow2"
    assert driver.get("error_policy") == "stop" and driver.get("discard") == "unmap"
    assert _el(devices, "interface/model").get("type") == "virtio-non-transitional"
    assert _el(devices, "rng/backend").text == "/dev/urandom"
    controllers = [(c.get("type"), c.get("model")) for c in devices.findall("controller")]
    assert ("scsi", "virtio-non-transitional") in controllers
    # 6 devices on ports, 3 placeholder interfaces (4 - 1), no extra: 8 counted, 3 free at least
    assert controllers.count(("pci", "pcie-root-port")) == 9


def test_hotplug_ports_follow_kubevirts_totals() -> None:
    small, large = _point(memoryMiB=2048), _point(memoryMiB=2049)
    assert hotplug_root_ports(small, pci_devices=3, interfaces=0) == 5  # 8 in all
    assert hotplug_root_ports(small, pci_devices=7, interfaces=1) == 3  # 3 placeholders, at least 3 free
    assert hotplug_root_ports(large, pci_devices=3, interfaces=0) == 13  # 16 in all
    assert hotplug_root_ports(large, pci_devices=7, interfaces=1) == 9  # at least 6 free, 3 placeholders


def test_digest_names_the_shape_not_the_run() -> None:
    point = _point(deviceSet="kubevirt")
    first = domain_xml(
        point, 0, DomainFiles(Path("/tmp/lvA/r/touch.elf"), Path("/tmp/lvA/r/vm"), Path("/tmp/lvA/r/d.qcow2"))
    )
    second = domain_xml(
        point, 0, DomainFiles(Path("/tmp/lvB/r/touch.elf"), Path("/tmp/lvB/r/vm"), Path("/tmp/lvB/r/d.qcow2"))
    )
    assert first != second
    assert xml_digest(first, Path("/tmp/lvA")) == xml_digest(second, Path("/tmp/lvB"))
    other = domain_xml(
        _point(deviceSet="kubevirt", graphics=True),
        0,
        DomainFiles(Path("/tmp/lvA/r/touch.elf"), Path("/tmp/lvA/r/vm"), Path("/tmp/lvA/r/d.qcow2")),
    )
    assert xml_digest(other, Path("/tmp/lvA")) != xml_digest(first, Path("/tmp/lvA"))


# --- configs --------------------------------------------------------------------------------------


def test_domains_field() -> None:
    config = expand(
        {"points": [{"vcpus": 1, "memoryMiB": 256, "domains": 3}, {"vcpus": 1, "memoryMiB": 256}]}
    )
    assert [p.name for p in config.points] == [
        "v1-m256-p100-novga-io0-minimal-d3",
        "v1-m256-p100-novga-io0-minimal",
    ]
    assert [p.domains for p in config.points] == [3, 1]
    with pytest.raises(ValueError, match=r"points\[0\]\.domains: must be an integer between 1 and 8"):
        expand({"points": [{"vcpus": 1, "memoryMiB": 256, "domains": 9}]})


def test_bare_path_refuses_several_domains(tmp_path: Path) -> None:
    err = io.StringIO()
    status = main(
        ["--config", str(MEASURE / "libvirt-grid.yaml"), "--out", str(tmp_path / "x.jsonl")],
        io.StringIO(),
        err,
    )
    assert status == 2 and "needs a libvirt daemon" in err.getvalue()
    assert not (tmp_path / "x.jsonl").exists()


def test_shipped_libvirt_configs() -> None:
    smoke = load_config(MEASURE / "libvirt-smoke.yaml")
    assert [(p.vcpus, p.memory_mib, p.domains) for p in smoke.points] == [(1, 256, 1)]
    grid = load_config(MEASURE / "libvirt-grid.yaml")
    assert {p.vcpus for p in grid.points} == {1, 2, 4, 8, 16}
    assert {p.domains for p in grid.points} == {1, 2, 3}
    assert {p.device_set for p in grid.points} == {"minimal", "kubevirt"}
    assert {p.graphics for p in grid.points} == {True, False} and {p.io_threads for p in grid.points} == {
        0,
        1,
        2,
    }
    # the bare twin has exactly the single-domain shapes
    bare = load_config(MEASURE / "libvirt-grid-bare.yaml")
    assert [p.name for p in bare.points] == [p.name for p in grid.points if p.domains == 1]


# --- installation ---------------------------------------------------------------------------------


def _fake(path: Path, version: str) -> Path:
    path.write_text(f"#!/bin/sh\necho '{path.name} (libvirt) {version}'\n")
    path.chmod(0o755)
    return path


def test_parse_version() -> None:
    assert parse_version("virtqemud (libvirt) 9.0.0\n") == (9, 0, 0)
    assert parse_version("libvirtd (libvirt) 10.10.1") == (10, 10, 1)
    assert parse_version("something else") is None


def test_find_install_says_what_is_missing_or_too_old(tmp_path: Path) -> None:
    logd, virsh = _fake(tmp_path / "virtlogd", "9.0.0"), _fake(tmp_path / "virsh", "9.0.0")
    with pytest.raises(LibvirtUnavailable, match="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"):
        find_install("libvirtd", tmp_path, libvirtd=tmp_path / "missing", virtlogd=logd, virsh=virsh)
    with pytest.raises(LibvirtUnavailable, match="virtlogd"):
        find_install("libvirtd", tmp_path, libvirtd=logd, virtlogd=tmp_path / "missing", virsh=virsh)
    old = _fake(tmp_path / "libvirtd", "6.0.0")
    with pytest.raises(
        LibvirtUnavailable, match=r"is libvirt 6\.0\.0; the libvirt path needs at least 6\.9\.0"
    ):
        find_install("libvirtd", tmp_path, libvirtd=old, virtlogd=logd, virsh=virsh)
    new = _fake(tmp_path / "libvirtd", "9.0.0")
    with pytest.raises(LibvirtUnavailable, match="make libvirt-virtqemud"):
        find_install("virtqemud", tmp_path / "nothing-built", libvirtd=new, virtlogd=logd, virsh=virsh)
    install = find_install("auto", tmp_path / "nothing-built", libvirtd=new, virtlogd=logd, virsh=virsh)
    assert (install.daemon, install.build, install.version, install.socket_name) == (
        "libvirtd", "debian-package", "9.0.0", "libvirt-sock"
    )  # fmt: skip


def test_cli_refuses_an_unbuilt_virtqemud(tmp_path: Path) -> None:
    err = io.StringIO()
    status = main(
        ["libvirt", "--config", str(MEASURE / "libvirt-smoke.yaml"), "--out", str(tmp_path / "o.jsonl"),
         "--daemon", "virtqemud", "--libvirt-build-dir", str(tmp_path / "none")],
        io.StringIO(), err,
    )  # fmt: skip
    assert status == 2 and "make libvirt-virtqemud" in err.getvalue()
    assert not (tmp_path / "o.jsonl").exists()
    out = io.StringIO()
    assert (
        main(["libvirt", "--config", str(MEASURE / "libvirt-grid.yaml"), "--dry-run"], out, io.StringIO())
        == 0
    )
    assert out.getvalue().splitlines()[-1].startswith("74 points, about ")


def test_private_passwd_has_kubevirts_qemu_user(tmp_path: Path) -> None:
    source = tmp_path / "passwd"
    source.write_text(
        "root:x:0:0::/root:/bin/sh\nqemu:x:64055:64055::/:/bin/false\nother:x:107:107::/:/bin/sh\n"
    )
    text = _with_qemu(source, "qemu:x:{uid}:{gid}::{home}:/bin/sh")
    assert text.splitlines() == ["root:x:0:0::/root:/bin/sh", "qemu:x:107:107::/nonexistent:/bin/sh"]


def test_qemu_wrapper_enters_the_domains_cgroup_then_execs(tmp_path: Path) -> None:
    cgroups = tmp_path / "cgroups"
    for name in ("probe", "default_vmi0"):
        (cgroups / name).mkdir(parents=True)
        (cgroups / name / "cgroup.procs").write_text("")
    qemu = tmp_path / "qemu"
    qemu.write_text('#!/bin/sh\necho "qemu $$ $*"\n')
    qemu.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(WRAPPER.replace("@CGROUPS@", str(cgroups)).replace("@QEMU@", str(qemu)))
    wrapper.chmod(0o755)

    def run(*args: str) -> str:
        return subprocess.run(
            [str(wrapper), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    said = run("-name", "guest=default_vmi0,debug-threads=on", "-S")
    pid = said.split()[1]
    assert said == f"qemu {pid} -name guest=default_vmi0,debug-threads=on -S\n"  # same process: exec
    assert (cgroups / "default_vmi0" / "cgroup.procs").read_text() == f"{pid}\n"
    said = run("-S", "-machine", "none")  # a capability probe
    assert (cgroups / "probe" / "cgroup.procs").read_text() == f"{said.split()[1]}\n"
    shutil.rmtree(cgroups / "probe")
    failed = subprocess.run([str(wrapper), "-S"], capture_output=True, text=True, check=False, timeout=30)
    assert (
        failed.returncode == 1 and "cannot enter the memory cgroup" in failed.stderr and failed.stdout == ""
    )


# --- records --------------------------------------------------------------------------------------


def _memory(rss_mib: float, anon_mib: float) -> ProcessMemory:
    rss, anon = int(rss_mib * MIB), int(anon_mib * MIB)
    return ProcessMemory(
        rss, anon, rss - anon, 0, rss - 4 * MIB, anon, rss - anon - 4 * MIB, 0, 256 * KIB, 18
    )


def _measurement(domains: int = 2) -> LibvirtMeasurement:
    point = _point(vcpus=2, memoryMiB=1024, domains=domains)
    serial = SerialReport(booted=True, cpus=2, online=2, avail_mib=1019, touched_mib=1019)
    return LibvirtMeasurement(
        point=point,
        repetition=1,
        accelerator="kvm",
        install=LibvirtInstall(
            "virtqemud",
            Path("/c/virtqemud"),
            Path("/v"),
            Path("/s"),
            "debian-source-build",
            "9.0.0",
            "9.0.0-4+deb12u2",
        ),
        daemon=DaemonFigures(10, _memory(26, 6), CgroupFigures(6 * MIB, MIB, 0, 7 * MIB, 8 * MIB)),
        virtlogd=DaemonFigures(
            11, _memory(18, 2), CgroupFigures(2 * MIB, MIB // 2, 15 * MIB, 18 * MIB, None)
        ),
        probe=CgroupFigures(0, 100 * KIB, 30 * MIB, 30 * MIB, None),
        domains=tuple(
            DomainFigures(
                i,
                f"default_vmi{i}",
                serial,
                _memory(1058, 1040),
                1022 * MIB,
                CgroupFigures(1040 * MIB, 6 * MIB, MIB, 0, None),
                "ab" * 32,
            )
            for i in range(domains)
        ),  # fmt: skip
        cgroup_version=1,
        measured_at=datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
        seconds=12.0,
    )


HOST = HostFacts(kernel="6.18", qemu="7.2.22", accelerator="kvm", node="n1", cpu_model="EPYC", arch="amd64")


def test_libvirt_records() -> None:
    records = build_libvirt_records(_measurement(), HOST, "run-1")
    assert [(r["scope"], r["sampleId"]) for r in records] == [
        ("qemu", "v2-m1024-p100-novga-io0-minimal-d2-r1-qemu0"),
        ("qemu", "v2-m1024-p100-novga-io0-minimal-d2-r1-qemu1"),
        ("virtqemud", "v2-m1024-p100-novga-io0-minimal-d2-r1-virtqemud"),
        ("virtlogd", "v2-m1024-p100-novga-io0-minimal-d2-r1-virtlogd"),
    ]
    qemu, _, daemon, logd = records
    assert qemu["launcher"] == "libvirt" and qemu["host"]["libvirt"] == "9.0.0 (Debian 9.0.0-4+deb12u2)"
    assert qemu["libvirt"] == {
        "daemon": "virtqemud", "build": "debian-source-build", "mode": "session", "domains": 2,
        "domainXmlSha256": "ab" * 32, "domainIndex": 0,
    }  # fmt: skip
    assert qemu["overheadBytes"] == 1046 * MIB - 1019 * MIB and qemu["raw"]["guestRamRss"] == 1022 * MIB
    assert daemon["overheadBytes"] == daemon["rawBytes"] == 7 * MIB and daemon["guestTouchedBytes"] == 0
    assert daemon["libvirt"]["threads"] == 18 and "domainIndex" not in daemon["libvirt"]
    assert daemon["raw"]["probePageCache"] == 30 * MIB and daemon["raw"]["cgroupPeak"] == 8 * MIB
    assert logd["overheadBytes"] == 2 * MIB + MIB // 2 and "probePageCache" not in logd["raw"]
    assert daemon["vm"] == qemu["vm"] and daemon["vm"]["vcpusOnline"] is True
    for record in records:
        assert validate_record(record) is record  # the service's own definition


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("launcher"), "libvirt: is only for records with launcher libvirt"),
        (lambda r: r.update(scope="pod"), "launcher: is for qemu and daemon records"),
        (lambda r: r["libvirt"].update(color="red"), "libvirt.color: unknown field"),
        (lambda r: r["libvirt"].update(daemon="virtxend"), "libvirt.daemon: must be one of"),
        (
            lambda r: r["libvirt"].update(domainIndex=2),
            r"libvirt.domainIndex: must be below libvirt.domains \(2\)",
        ),
        (lambda r: r["libvirt"].update(domainXmlSha256="AB" * 32), "libvirt.domainXmlSha256"),
        (lambda r: r["libvirt"].update(threads=3), "libvirt.threads: is for the daemon scopes only"),
        (lambda r: r["host"].pop("libvirt"), "host.libvirt: is required when launcher is libvirt"),
        (lambda r: r["vm"].update(vcpus=0), r"vm.vcpus: must be an integer"),
    ],
)
def test_libvirt_records_are_checked_by_the_service(change: Any, message: str) -> None:
    record = copy.deepcopy(build_libvirt_records(_measurement(), HOST, "run-1")[0])
    change(record)
    with pytest.raises(InputError, match=message):
        validate_record(record)


def test_daemon_records_hold_no_guest_memory() -> None:
    daemon = copy.deepcopy(build_libvirt_records(_measurement(1), HOST, "run-1")[1])
    daemon["guestTouchedBytes"] = MIB
    daemon["rawBytes"] = daemon["overheadBytes"] + MIB
    with pytest.raises(InputError, match="guestTouchedBytes: must be 0 for scope virtqemud"):
        validate_record(daemon)
    daemon = copy.deepcopy(build_libvirt_records(_measurement(1), HOST, "run-1")[1])
    with pytest.raises(InputError, match="libvirt.threads: is required for scope virtqemud"):
        validate_record(daemon | {"libvirt": {k: v for k, v in daemon["libvirt"].items() if k != "threads"}})


# --- the real thing: packaged libvirtd and virtlogd ------------------------------------------------


def _leftovers(pid: int) -> list[str]:
    """What benchmark process ``pid`` left: processes in its cgroups, the cgroups, private trees."""
    marker = f"overhead-measure-{pid}-"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cgroup").read_text():
                found.append(f"process {entry.name} ({(entry / 'comm').read_text().strip()})")
        except OSError:
            continue
    _, parent = find_memory_parent()
    found += [f"cgroup {path}" for path in parent.glob(f"{marker}*")]
    found += [f"directory {path}" for path in Path(tempfile.gettempdir()).glob(f"lv{pid}-*")]
    return found


def _in_cgroups_of(pid: int, comm: str, cgroup: str) -> bool:
    """Whether a process named ``comm`` runs in the cgroup ``cgroup`` of benchmark process ``pid``."""
    marker = f"overhead-measure-{pid}-"
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != comm:
                continue
            memory = [line for line in (entry / "cgroup").read_text().splitlines() if marker in line]
        except OSError:
            continue
        if any(line.endswith(f"/{cgroup}") for line in memory):
            return True
    return False


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_guest(tmp_path_factory.mktemp("guest-cache"))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 107 (the daemons' user) can read, unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="lvtest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.measure", "libvirt", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def service(app_factory: AppFactory) -> Iterator[str]:
    """The real overhead service on a loopback port (werkzeug, threaded): its URL."""
    server = make_server("127.0.0.1", 0, app_factory(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.mark.qemu
def test_smoke_through_private_libvirtd(guest: Path, tmp_path: Path, service: str) -> None:
    out = tmp_path / "smoke.jsonl"
    run = _cli(
        "--config", str(MEASURE / "libvirt-smoke.yaml"), "--daemon", "libvirtd", "--out", str(out),
        "--url", service, "--token", INGEST_TOKEN, "--run-id", "libvirt-smoke-test",
        "--cache-dir", str(guest.parent.parent), "--wait-other-qemu", "300",
    )  # fmt: skip
    stdout, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["measured"], summary["failed"], summary["daemon"]) == (1, [], "libvirtd")
    assert "[1/1]" in stderr and "libvirtd" in stderr
    assert _leftovers(run.pid) == []
    # Stored once, as written: the service takes the records as they are.
    assert summary["upload"] == {"stored": 3, "duplicates": 0, "requests": 1, "retries": 0, "error": None}
    stored = requests.get(f"{service}/v1/measurements", params={"runId": "libvirt-smoke-test"}, timeout=30)
    assert sorted(r["sampleId"] for r in stored.json()["items"]) == sorted(
        r["sampleId"] for r in read_jsonl(out)
    )

    kvm = summary["accelerator"] == "kvm"
    assert kvm == os.access("/dev/kvm", os.R_OK | os.W_OK)
    records = {r["scope"]: r for r in read_jsonl(out)}
    assert sorted(records) == ["qemu", "virtlogd", "virtqemud"] and len(read_jsonl(out)) == 3
    for record in records.values():
        validate_record(record)
        assert record["libvirt"]["daemon"] == "libvirtd" and record["libvirt"]["build"] == "debian-package"
        assert record["host"]["libvirt"].startswith(summary["libvirt"].split()[0])
    qemu, daemon, logd = records["qemu"], records["virtqemud"], records["virtlogd"]
    assert qemu["vm"]["vcpusOnline"] is True and qemu["vm"]["touchedShare"] == 1.0
    assert 240 * MIB <= qemu["guestTouchedBytes"] <= 256 * MIB
    # as the bare path's smoke (anon + kmem - touched, 256 MiB): libvirt adds ~1 MiB, TCG its cache
    assert (
        (12 * MIB <= qemu["overheadBytes"] <= 32 * MIB)
        if kvm
        else (12 * MIB <= qemu["overheadBytes"] <= 55 * MIB)
    )
    assert qemu["raw"]["cgroupAnon"] >= qemu["guestTouchedBytes"]
    # The daemons: libvirtd ~26-33 MiB RSS, virtlogd ~17 MiB, most of it shared libraries.
    assert 15 * MIB <= daemon["raw"]["rss"] <= 80 * MIB and 2 * MIB <= daemon["overheadBytes"] <= 30 * MIB
    assert 8 * MIB <= logd["raw"]["rss"] <= 40 * MIB and 0.5 * MIB <= logd["overheadBytes"] <= 10 * MIB
    for record in (daemon, logd):
        raw = record["raw"]
        assert raw["pss"] <= raw["rss"] and raw["rssAnon"] <= raw["rss"] and record["libvirt"]["threads"] >= 1
        assert record["overheadBytes"] == raw["cgroupAnon"] + raw["cgroupKernel"]


def _install(daemon: Path | None = None) -> LibvirtInstall:
    real = find_install("libvirtd")
    return real if daemon is None else LibvirtInstall(
        "libvirtd", daemon, real.virtlogd, real.virsh, "debian-package", real.version, real.package
    )  # fmt: skip


@pytest.mark.qemu
def test_a_daemon_that_will_not_start(guest: Path, shared_dir: Path) -> None:
    broken = shared_dir / "libvirtd"
    broken.write_text("#!/bin/sh\necho 'error : cannot listen on the socket' >&2\nexit 1\n")
    broken.chmod(0o755)
    accelerator = choose_accelerator("auto")
    with (
        LibvirtRunner(
            accelerator=accelerator, guest=guest, install=_install(broken), wait_other_qemu=300
        ) as runner,
        pytest.raises(
            PointFailed, match=r"libvirtd exited with status 1 at start .*cannot listen on the socket"
        ),
    ):
        runner.measure(_point(vcpus=1, memoryMiB=256), 0)
    assert _leftovers(os.getpid()) == []


@pytest.mark.qemu
def test_a_domain_that_does_not_boot(shared_dir: Path) -> None:
    garbage = shared_dir / "garbage.elf"
    garbage.write_bytes(b"\x7fELF" + os.urandom(4096))
    accelerator = choose_accelerator("auto")
    with (
        LibvirtRunner(
            accelerator=accelerator, guest=garbage, install=_install(), wait_other_qemu=300
        ) as runner,
        pytest.raises(
            PointFailed, match=r"default_vmi0 did not start: virsh start default_vmi0: .*QEMU's log"
        ),
    ):
        runner.measure(_point(vcpus=1, memoryMiB=256), 0)
    assert _leftovers(os.getpid()) == []


@pytest.mark.qemu
@pytest.mark.parametrize(
    ("signum", "comm", "cgroup"),
    [(signal.SIGINT, "qemu-system-x86", "default_vmi0"), (signal.SIGTERM, "libvirtd", "daemon")],
    ids=["SIGINT-with-the-guest-running", "SIGTERM-with-the-daemon-up"],
)
def test_an_interrupted_run_stops_everything(
    guest: Path, tmp_path: Path, signum: int, comm: str, cgroup: str
) -> None:
    out = tmp_path / "interrupted.jsonl"
    run = _cli(
        "--config", str(MEASURE / "libvirt-smoke.yaml"), "--daemon", "libvirtd", "--out", str(out),
        "--cache-dir", str(guest.parent.parent), "--wait-other-qemu", "300",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # the point waits (bounded) for other measurements
        while not _in_cgroups_of(run.pid, comm, cgroup):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        run.send_signal(signum)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["stopReason"] == "interrupted"
    assert out.read_text() == ""  # nothing half-written
    assert _leftovers(run.pid) == []


def test_committed_results_are_valid_records() -> None:
    """The raw records in benchmarks/measure/results are what the service takes, as they are."""
    counts: dict[str, int] = {}
    for path in sorted((MEASURE / "results").glob("*.jsonl")):
        records = read_jsonl(path)
        validate_batch(records)
        for record in records:
            counts[record["scope"]] = counts.get(record["scope"], 0) + 1
    assert counts["virtqemud"] == counts["virtlogd"] >= 84 and counts["qemu"] >= 100
