"""One point of the libvirt path: fresh private daemons, ``domains`` identical domains started
through them, every guest waited for until it has touched its RAM, then every process and cgroup
read, and everything torn down.

Per point, under the host-wide measurement lock and with no other QEMU alive: evict the page cache
of QEMU's and libvirt's files; create a memory cgroup for the point with a child for ``virtlogd``,
one for the daemon (``virtqemud`` or ``libvirtd``), one for libvirt's QEMU capability probes and
one per domain; start ``virtlogd``, then the daemon (:mod:`libvirt_daemons`); define and start each
domain (:mod:`domain`); wait for each guest's ``TOUCHED`` line in its serial log (which virtlogd
writes); wait until every process's VmRSS has been unchanged for 0.6 s; read. Teardown always runs,
with SIGINT and SIGTERM held back meanwhile: ``virsh destroy`` each domain, SIGTERM the daemon and
virtlogd (SIGKILL after 10 s), SIGKILL whatever is still in one of the point's cgroups, remove the
cgroups and the point's directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from benchmarks.measure.cgroups import (
    CgroupError,
    CgroupFigures,
    MemoryCgroup,
    create_memory_cgroup,
)
from benchmarks.measure.config import Point
from benchmarks.measure.domain import DomainFiles, domain_name, domain_xml, serial_log, xml_digest
from benchmarks.measure.guest import SerialReport, parse_serial
from benchmarks.measure.host import evict_page_cache
from benchmarks.measure.libvirt_daemons import (
    NONROOT_GID,
    NONROOT_UID,
    DaemonFailed,
    PrivateRoot,
    Virsh,
    VirshError,
    start_daemon,
    stop_process,
)
from benchmarks.measure.libvirt_install import LibvirtInstall
from benchmarks.measure.procfs import (
    KIB,
    ProcessMemory,
    guest_ram_rss_kib,
    process_memory,
    wait_until_rss_settles,
)
from benchmarks.measure.runner import FATAL_STDERR, PointFailed, Runner, _host_lock

__all__ = [
    "DaemonFigures",
    "DomainFigures",
    "LibvirtMeasurement",
    "LibvirtRunner",
    "blocked_signals",
    "libvirt_timeout",
    "predict_libvirt_seconds",
]

POLL: Final = 0.1
DAEMON_START_SECONDS: Final = 30.0
PROBE_SECONDS: Final = 60.0  # libvirt's first QEMU capability probe (about 8 s here)


@dataclass(frozen=True)
class DaemonFigures:
    """A daemon's process and its own cgroup."""

    pid: int
    process: ProcessMemory
    cgroup: CgroupFigures


@dataclass(frozen=True)
class DomainFigures:
    """One domain's QEMU: what its guest said, the process, its guest-RAM mapping, its cgroup."""

    index: int
    name: str
    serial: SerialReport
    process: ProcessMemory
    guest_ram_rss: int
    cgroup: CgroupFigures
    xml_digest: str


@dataclass(frozen=True)
class LibvirtMeasurement:
    point: Point
    repetition: int
    accelerator: str
    install: LibvirtInstall
    daemon: DaemonFigures
    virtlogd: DaemonFigures
    probe: CgroupFigures  # what libvirt's capability probes left charged
    domains: tuple[DomainFigures, ...]
    cgroup_version: int
    measured_at: datetime
    seconds: float
    waited: float = 0.0


def predict_libvirt_seconds(point: Point, accelerator: str) -> float:
    """About how long a point takes here: daemons and libvirt's capability probe (~9 s under nested
    PVM), then each domain as a bare QEMU point would, and the teardown."""
    touched_gib = point.expected_touch_mib / 1024
    per_domain = (1.5 + 1.2 * touched_gib) if accelerator == "tcg" else (4.2 + 3.4 * touched_gib)
    return 11.0 + point.domains * (per_domain + 1.0)


def libvirt_timeout(point: Point) -> float:
    """A generous bound: daemon start and probe, then 60 s plus 15 s per GiB for each domain."""
    return DAEMON_START_SECONDS + PROBE_SECONDS + point.domains * (60.0 + 15.0 * point.memory_mib / 1024)


@contextlib.contextmanager
def blocked_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered on exit) so that a teardown runs to its end."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class _Point:
    """What one point started, for its teardown."""

    root: PrivateRoot
    virsh: Virsh | None = None
    cgroups: dict[str, MemoryCgroup] = field(default_factory=dict)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # domains started


class LibvirtRunner:
    """Measures points through private libvirt daemons, one point at a time."""

    def __init__(
        self,
        *,
        accelerator: str,
        guest: Path,
        install: LibvirtInstall,
        qemu: str = "qemu-system-x86_64",
        wait_other_qemu: float = 0.0,
        settle_seconds: float = 0.6,
        settle_max_seconds: float = 5.0,
    ) -> None:
        self.base = Runner(accelerator=accelerator, guest=guest, qemu=qemu, wait_other_qemu=wait_other_qemu)
        self.install = install
        self.accelerator = accelerator
        self.settle_seconds = settle_seconds
        self.settle_max_seconds = settle_max_seconds
        self.files = self.base.files
        self.files.files.update({install.daemon_binary, install.virtlogd})

    @property
    def qemu(self) -> str:
        return self.base.qemu

    def close(self) -> None:
        self.base.close()

    def __enter__(self) -> LibvirtRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_quiet(self) -> None:
        self.base.check_quiet()

    def measure(self, point: Point, repetition: int, timeout: float | None = None) -> LibvirtMeasurement:
        """Measure ``point`` once; raises :class:`PointFailed` (this point), or
        :class:`~benchmarks.measure.runner.OtherQemuRunning` or :class:`CgroupError` (the run stops)."""
        bound = timeout if timeout is not None else libvirt_timeout(point)
        asked = time.monotonic()
        with _host_lock(max(self.base.wait_other_qemu, 1.0) + bound):
            self.base.wait_for_quiet()
            waited = time.monotonic() - asked
            # Short (unix socket paths, the guest agent's in the private tree, have 107 bytes), and
            # named after this process, whose cgroups are named so too.
            point_dir = Path(tempfile.mkdtemp(prefix=f"lv{os.getpid()}-"))
            point_dir.chmod(0o711)
            state = _Point(PrivateRoot(point_dir / "root"))
            try:
                result = self._measure(point, repetition, bound, state)
            except BaseException as exc:
                with blocked_signals():
                    try:
                        self._teardown(state)
                    except CgroupError as left:  # something survived: worse than the point's error
                        raise CgroupError(f"{left} (after: {exc})") from exc
                raise
            with blocked_signals():
                self._teardown(state)
            return dataclasses.replace(result, waited=waited)

    # -- one point -------------------------------------------------------------------------------

    def _measure(self, point: Point, repetition: int, bound: float, state: _Point) -> LibvirtMeasurement:
        started = time.monotonic()
        deadline = started + bound
        root, install = state.root, self.install
        root.create(install, Path(self.qemu), kvm=self.accelerator == "kvm")
        kernel = root.path / "vm" / "touch.elf"
        shutil.copyfile(self.base.guest, kernel)
        kernel.chmod(0o644)
        names = [domain_name(index) for index in range(point.domains)]
        self._cgroups(state, names)
        evict_page_cache(sorted(self.files.files | {kernel}))
        state.virsh = virsh = Virsh(install.virsh, root.socket(install.socket_name))
        try:
            logd = start_daemon(
                "virtlogd", root.virtlogd_argv(install), root, state.cgroups["virtlogd"],
                root.socket("virtlogd-sock"), timeout=DAEMON_START_SECONDS,
            )  # fmt: skip
            state.daemons.append(logd)
            daemon = start_daemon(
                install.daemon, root.daemon_argv(install), root, state.cgroups["daemon"],
                virsh.socket, timeout=DAEMON_START_SECONDS,
            )  # fmt: skip
            state.daemons.append(daemon)
        except DaemonFailed as exc:
            raise PointFailed(str(exc)) from None
        digests = [self._start_domain(state, point, index, deadline) for index in range(point.domains)]
        reports = [self._wait_touched(state, point, name, deadline) for name in names]
        qemus = [self._qemu_pid(state, name) for name in names]
        for pid in [daemon.pid, logd.pid, *qemus]:
            wait_until_rss_settles(pid, self.settle_seconds, self.settle_max_seconds)
        return self._read(state, point, repetition, (daemon.pid, logd.pid), qemus, reports, digests, started)

    def _cgroups(self, state: _Point, names: list[str]) -> None:
        pod = create_memory_cgroup(self.base.cgroup_parent)
        state.cgroups["pod"] = pod
        pod.delegate(NONROOT_UID, NONROOT_GID)  # cgroup v2: the wrapper moves itself within the pod
        for name in ["virtlogd", "daemon", "probe", *names]:
            state.cgroups[name] = create_memory_cgroup((pod.version, pod.path), name)
        for name in ["probe", *names]:
            state.root.link_cgroup(name, state.cgroups[name])

    def _start_domain(self, state: _Point, point: Point, index: int, deadline: float) -> str:
        root, virsh = state.root, state.virsh
        assert virsh is not None
        directory = root.path / "vm" / domain_name(index)
        directory.mkdir(mode=0o700)
        disk = self._disk(directory) if point.device_set == "kubevirt" else None
        files = DomainFiles(root.path / "vm" / "touch.elf", directory, disk, self._cache_mode(directory))
        for path in (directory, *([disk] if disk else [])):
            shutil.chown(path, NONROOT_UID, NONROOT_GID)
        xml = domain_xml(point, index, files, "kvm" if self.accelerator == "kvm" else "qemu")
        definition = root.path / "conf" / f"{domain_name(index)}.xml"
        definition.write_text(xml)
        try:
            virsh("define", str(definition), timeout=max(deadline - time.monotonic(), 1.0))
            virsh("start", domain_name(index), timeout=max(deadline - time.monotonic(), 1.0))
        except VirshError as exc:
            raise PointFailed(
                f"{domain_name(index)} did not start: {exc}{self._qemu_log(state, domain_name(index))}"
            ) from None
        state.started.append(domain_name(index))
        return xml_digest(xml, root.path.parent)

    def _disk(self, directory: Path) -> Path:
        """The domain's disk: a qcow2 image (1 GiB virtual) as a container disk's overlay is, or a
        64 MiB raw file without qemu-img."""
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            path = directory / "disk.raw"
            with path.open("wb") as handle:
                handle.truncate(64 * 1024 * 1024)
            return path
        path = directory / "disk.qcow2"
        subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", str(path), "1G"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return path

    @staticmethod
    def _cache_mode(directory: Path) -> str:
        """``none`` where the file system takes O_DIRECT, else ``writethrough`` (KubeVirt's
        ``SetDriverCacheMode``)."""
        probe = directory / ".direct-io"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
        except OSError:
            return "writethrough"
        os.close(fd)
        probe.unlink()
        return "none"

    def _qemu_log(self, state: _Point, name: str) -> str:
        """The end of QEMU's own log (its stderr, which virtlogd writes), for error messages."""
        log = state.root.path / "kv" / "libvirt" / "qemu" / "log" / f"{name}.log"
        try:
            lines = [line for line in log.read_text(errors="replace").splitlines() if "warning:" not in line]
        except OSError:
            return ""
        return f" (QEMU's log: {' | '.join(lines[-4:])[-600:]!r})" if lines else ""

    def _wait_touched(self, state: _Point, point: Point, name: str, deadline: float) -> SerialReport:
        directory = state.root.path / "vm" / name
        serial = serial_log(DomainFiles(Path(), directory))
        cgroup = state.cgroups[name]
        while True:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            report = parse_serial(text)
            if report.done:
                return report
            log = self._qemu_log(state, name)
            if not cgroup.pids():
                raise PointFailed(f"{name}: QEMU exited before the guest reported TOUCHED{log}")
            fatal = [marker for marker in FATAL_STDERR if marker in log]
            if fatal:
                raise PointFailed(f"{name}: QEMU reported {fatal[0]!r} (the VM is paused){log}")
            if time.monotonic() > deadline:
                raise PointFailed(
                    f"{name}: the guest did not report TOUCHED in time (serial: {text.strip()[-200:]!r}){log}"
                )
            time.sleep(POLL)

    @staticmethod
    def _qemu_pid(state: _Point, name: str) -> int:
        pids = state.cgroups[name].pids()
        if len(pids) != 1:
            raise PointFailed(f"{name}: expected QEMU alone in its cgroup, found pids {pids}")
        return pids[0]

    def _read(
        self,
        state: _Point,
        point: Point,
        repetition: int,
        daemons: tuple[int, int],
        qemus: list[int],
        reports: list[SerialReport],
        digests: list[str],
        started: float,
    ) -> LibvirtMeasurement:
        cgroups = state.cgroups
        try:
            figures = [
                DaemonFigures(pid, process_memory(pid), cgroups[name].read())
                for pid, name in zip(daemons, ("daemon", "virtlogd"), strict=True)
            ]
            domains = tuple(
                DomainFigures(
                    index=index,
                    name=domain_name(index),
                    serial=reports[index],
                    process=process_memory(pid),
                    guest_ram_rss=guest_ram_rss_kib(pid, point.memory_mib) * KIB,
                    cgroup=cgroups[domain_name(index)].read(),
                    xml_digest=digests[index],
                )
                for index, pid in enumerate(qemus)
            )
            probe = cgroups["probe"].read()
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise PointFailed(f"a process went away while being measured ({exc})") from None
        measured_at = datetime.now(UTC)
        for pid in [*daemons, *qemus]:
            self.files.learn(pid)
        for pid, name in [
            *zip(daemons, ("daemon", "virtlogd"), strict=True),
            *zip(qemus, (d.name for d in domains), strict=True),
        ]:
            if pid not in cgroups[name].pids():
                raise PointFailed(f"{name} (pid {pid}) left its memory cgroup {cgroups[name].path}")
        return LibvirtMeasurement(
            point=point,
            repetition=repetition,
            accelerator=self.accelerator,
            install=self.install,
            daemon=figures[0],
            virtlogd=figures[1],
            probe=probe,
            domains=domains,
            cgroup_version=cgroups["pod"].version,
            measured_at=measured_at,
            seconds=time.monotonic() - started,
        )

    # -- teardown --------------------------------------------------------------------------------

    @staticmethod
    def _teardown(state: _Point) -> None:
        """Stop everything the point started, in order, then make sure: SIGKILL what is left in the
        point's cgroups, remove them and the point's directory. Raises :class:`CgroupError` only if a
        cgroup cannot be removed (something survived)."""
        if state.virsh is not None and state.daemons and state.daemons[-1].poll() is None:
            for name in state.started:
                with contextlib.suppress(VirshError):
                    state.virsh("destroy", name, timeout=60)
        for process in reversed(state.daemons):
            stop_process(process)
        for cgroup in state.cgroups.values():
            cgroup.kill_all()
        problems = []
        for name, cgroup in reversed(list(state.cgroups.items())):
            try:
                cgroup.remove(timeout=10)
            except CgroupError as exc:
                problems.append(f"{name}: {exc}")
        shutil.rmtree(state.root.path.parent, ignore_errors=True)
        if problems:
            raise CgroupError("; ".join(problems))
