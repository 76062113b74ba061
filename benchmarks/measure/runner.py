"""Boot one VM shape under QEMU, wait for its guest to touch its memory, and measure the QEMU
process and its memory cgroup.

Per point: take the host-wide measurement lock (one VM at a time, also across benchmark
processes), refuse while any other ``qemu-system-*`` process is alive (it would share the page
cache of QEMU's files and skew the figures), evict QEMU's files from the page cache, create a
fresh child memory cgroup, start QEMU moved into it from ``preexec_fn`` (before exec, so every page
it charges lands there), wait for the guest's ``TOUCHED`` line, wait for the RSS to settle, read
every figure, SIGTERM and reap QEMU, remove the cgroup. Every wait is bounded; a guest that fails
(QEMU exits, a KVM internal error pauses it, or nothing within the time bound) fails the point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from benchmarks.measure.cgroups import (
    CgroupError,
    CgroupFigures,
    MemoryCgroup,
    create_memory_cgroup,
    find_memory_parent,
)
from benchmarks.measure.config import Point
from benchmarks.measure.guest import SerialReport, parse_serial
from benchmarks.measure.host import QemuFiles, evict_page_cache, other_qemus
from benchmarks.measure.procfs import guest_ram_rss_kib, process_memory, status_kib, wait_until_rss_settles

__all__ = [
    "Measurement",
    "OtherQemuRunning",
    "PointFailed",
    "ProcessFigures",
    "Runner",
    "default_timeout",
    "predict_seconds",
    "qemu_argv",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
LOCK_PATH: Final = Path(tempfile.gettempdir()) / "overhead-measure.lock"
POLL: Final = 0.05
FATAL_STDERR: Final = ("KVM internal error", "emulation failure")


class PointFailed(RuntimeError):
    """This point could not be measured (the run goes on with the next one)."""


class OtherQemuRunning(RuntimeError):
    """Another QEMU is alive: measuring now would skew the figures (the run stops)."""


@dataclass(frozen=True)
class ProcessFigures:
    """The QEMU process, in bytes."""

    rss: int
    rss_anon: int
    rss_file: int
    pss: int
    page_tables: int
    guest_ram_rss: int  # resident part of the guest-RAM mapping
    threads: int


@dataclass(frozen=True)
class Measurement:
    point: Point
    repetition: int
    accelerator: str
    serial: SerialReport
    process: ProcessFigures
    cgroup: CgroupFigures
    cgroup_version: int
    measured_at: datetime
    seconds: float  # QEMU start to the end of reading
    waited: float = 0.0  # for the host lock and for other QEMUs to end, before it started

    @property
    def touched_bytes(self) -> int:
        return (self.serial.touched_mib or 0) * MIB

    @property
    def vcpus_online(self) -> bool:
        return self.serial.online == self.point.vcpus


def predict_seconds(point: Point, accelerator: str) -> float:
    """About how long a point takes here: boot, touching, settling (figures from this machine type:
    under nested PVM KVM the firmware is slow and each first touch faults in software; TCG is faster)."""
    touched_gib = point.expected_touch_mib / 1024
    if accelerator == "tcg":
        return 1.5 + 1.2 * touched_gib
    return 4.2 + 3.4 * touched_gib


def default_timeout(point: Point, accelerator: str) -> float:
    """A generous bound on one point: 60 s plus 15 s per GiB of guest RAM."""
    del accelerator  # the same bound for both; TCG is faster here
    return 60.0 + 15.0 * point.memory_mib / 1024


def qemu_argv(
    qemu: str,
    point: Point,
    accelerator: str,
    guest: Path,
    serial: Path,
    *,
    disk: tuple[Path, str] | None = None,
    agent_socket: Path | None = None,
) -> list[str]:
    """QEMU's command line for ``point``. The ``kubevirt`` device set needs ``disk`` (path, format)
    and ``agent_socket``."""
    argv = [qemu, "-machine", "q35", "-accel", accelerator]
    argv += ["-smp", str(point.vcpus), "-m", str(point.memory_mib)]
    argv += ["-nodefaults", "-display", "none", "-vga", "std" if point.graphics else "none", "-no-reboot"]
    argv += ["-kernel", str(guest), "-append", point.append]
    argv += ["-serial", f"file:{serial}", "-monitor", "none"]
    for index in range(point.io_threads):
        argv += ["-object", f"iothread,id=iothread{index}"]
    if point.device_set == "kubevirt":
        if disk is None or agent_socket is None:
            raise ValueError("the kubevirt device set needs a disk and an agent socket")
        # As a KubeVirt domain: devices on their own PCIe root ports (and spare ports for hotplug).
        for port in range(1, 7):
            argv += ["-device", f"pcie-root-port,id=rp{port},bus=pcie.0,chassis={port}"]
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,bus=rp1"]
        path, fmt = disk
        iothread = ",iothread=iothread0" if point.io_threads else ""
        argv += ["-drive", f"file={path},format={fmt},if=none,id=disk0"]
        argv += ["-device", f"virtio-blk-pci,drive=disk0,bus=rp2{iothread}"]
        argv += ["-device", "virtio-serial-pci,id=serial0,bus=rp3"]
        argv += ["-chardev", f"socket,id=agent0,path={agent_socket},server=on,wait=off"]
        argv += ["-device", "virtserialport,bus=serial0.0,chardev=agent0,name=org.qemu.guest_agent.0"]
        argv += ["-device", "virtio-balloon-pci,id=balloon0,bus=rp4"]
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom"]
        argv += ["-device", "virtio-rng-pci,rng=rng0,bus=rp5"]
    return argv


class _LockTimeout(Exception):
    pass


def _flock_blocking(fd: int, timeout: float) -> bool:
    """Block in flock(LOCK_EX) for at most ``timeout`` seconds (SIGALRM interrupts it); only in the
    main thread. A blocked waiter is woken the moment the holder unlocks, so a run that measures
    point after point cannot starve another run waiting for the lock (polling could)."""
    waiting = True

    def on_alarm(signum: int, frame: object) -> None:
        if waiting:
            raise _LockTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        waiting = False
        return True
    except _LockTimeout:
        return False
    finally:
        waiting = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _host_lock(timeout: float) -> Iterator[None]:
    """The host-wide measurement lock (flock on LOCK_PATH), waited for at most ``timeout`` seconds:
    one VM at a time on this host, also across benchmark processes (their points interleave)."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            if threading.current_thread() is threading.main_thread():
                acquired = _flock_blocking(fd, timeout)
            else:
                acquired = _flock_polling(fd, timeout)
        if not acquired:
            raise OtherQemuRunning(f"another measurement held {LOCK_PATH} for {timeout:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    time.sleep(0.05)  # let a waiting run take the lock before this one asks for it again


def _flock_polling(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.01)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
    return False


def _start_in_cgroup(
    argv: list[str], cgroup: MemoryCgroup, errors: Path, point_dir: Path
) -> subprocess.Popen[bytes]:
    """QEMU started inside ``cgroup`` (it joins between fork and exec: charges never move here),
    its output in ``errors``, in a session of its own (Ctrl-C reaches us; we stop QEMU ourselves)."""

    def enter_cgroup() -> None:  # runs in the child between fork and exec
        cgroup.add_pid(os.getpid())

    with errors.open("wb") as err:
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                preexec_fn=enter_cgroup,
                start_new_session=True,
                cwd=point_dir,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PointFailed(f"cannot start QEMU in {cgroup.path}: {exc}") from None


def _process_figures(pid: int, point: Point) -> ProcessFigures:
    """What ``/proc`` says of QEMU's memory once it has settled."""
    status = status_kib(pid)
    return ProcessFigures(
        rss=status.get("VmRSS", 0) * KIB,
        rss_anon=status.get("RssAnon", 0) * KIB,
        rss_file=status.get("RssFile", 0) * KIB,
        pss=process_memory(pid).pss,
        page_tables=status.get("VmPTE", 0) * KIB,
        guest_ram_rss=guest_ram_rss_kib(pid, point.memory_mib) * KIB,
        threads=status.get("Threads", 0),
    )


class Runner:
    """Measures points one at a time with one accelerator (a run never mixes them)."""

    def __init__(
        self,
        *,
        accelerator: str,
        guest: Path,
        qemu: str = "qemu-system-x86_64",
        wait_other_qemu: float = 0.0,
        settle_seconds: float = 0.6,
        settle_max_seconds: float = 5.0,
    ) -> None:
        if accelerator not in ("kvm", "tcg"):
            raise ValueError(f"accelerator must be kvm or tcg, not {accelerator!r}")
        binary = shutil.which(qemu)
        if binary is None:
            raise FileNotFoundError(f"{qemu} not found (install qemu-system-x86)")
        self.qemu = binary
        self.accelerator = accelerator
        self.guest = guest
        self.wait_other_qemu = wait_other_qemu
        self.settle_seconds = settle_seconds
        self.settle_max_seconds = settle_max_seconds
        self.cgroup_parent = find_memory_parent()
        self.files = QemuFiles(binary)
        self._work = tempfile.TemporaryDirectory(prefix="measure-")
        self.work_dir = Path(self._work.name)
        self._disk: tuple[Path, str] | None = None

    def close(self) -> None:
        self._work.cleanup()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ------------------------------------------------------------------------------------

    def check_quiet(self) -> None:
        """Before a run: under the host lock (so another benchmark run's VM has been torn down), no
        other QEMU may be alive (waiting up to ``wait_other_qemu`` seconds)."""
        with _host_lock(max(self.wait_other_qemu, 1.0) + 300):
            self.wait_for_quiet()

    def wait_for_quiet(self) -> None:
        """Return once no other QEMU is alive; raise :class:`OtherQemuRunning` after the wait bound."""
        deadline = time.monotonic() + self.wait_other_qemu
        while True:
            others = other_qemus(exclude={os.getpid()})
            if not others:
                return
            if time.monotonic() >= deadline:
                listing = "; ".join(f"pid {pid}: {command}" for pid, command in others[:5])
                raise OtherQemuRunning(
                    f"refusing to measure: {len(others)} other QEMU process(es) alive ({listing}); they "
                    "share the page cache of QEMU's files and compete for the CPUs"
                )
            time.sleep(1.0)

    def _disk_image(self) -> tuple[Path, str]:
        """A small disk for the kubevirt device set: qcow2 (1 GiB virtual) via qemu-img, else raw."""
        if self._disk is None:
            qemu_img = shutil.which("qemu-img")
            if qemu_img is not None:
                path = self.work_dir / "disk.qcow2"
                subprocess.run(
                    [qemu_img, "create", "-q", "-f", "qcow2", str(path), "1G"],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                self._disk = (path, "qcow2")
            else:
                path = self.work_dir / "disk.raw"
                with path.open("wb") as handle:
                    handle.truncate(64 * MIB)
                self._disk = (path, "raw")
        return self._disk

    # -- one point ---------------------------------------------------------------------------------

    def measure(self, point: Point, repetition: int, timeout: float | None = None) -> Measurement:
        """Boot ``point``, measure it, tear it down. Raises :class:`PointFailed` (this point),
        :class:`OtherQemuRunning` or :class:`~benchmarks.measure.cgroups.CgroupError` (the run
        cannot go on)."""
        bound = timeout if timeout is not None else default_timeout(point, self.accelerator)
        asked = time.monotonic()
        with _host_lock(max(self.wait_other_qemu, 1.0) + bound):
            self.wait_for_quiet()
            waited = time.monotonic() - asked
            return dataclasses.replace(self._measure_locked(point, repetition, bound), waited=waited)

    def _measure_locked(self, point: Point, repetition: int, bound: float) -> Measurement:
        point_dir = Path(tempfile.mkdtemp(prefix="p-", dir=self.work_dir))
        serial, errors = point_dir / "serial.log", point_dir / "qemu.err"
        disk = agent = None
        if point.device_set == "kubevirt":
            disk, agent = self._disk_image(), point_dir / "agent.sock"
        argv = qemu_argv(
            self.qemu, point, self.accelerator, self.guest, serial, disk=disk, agent_socket=agent
        )
        evict = set(self.files.files) | {self.guest}
        if disk is not None:
            evict.add(disk[0])
        evict_page_cache(sorted(evict))

        cgroup = create_memory_cgroup(self.cgroup_parent)
        process: subprocess.Popen[bytes] | None = None
        failed = True
        try:
            started = time.monotonic()
            process = _start_in_cgroup(argv, cgroup, errors, point_dir)
            report = self._wait_touched(process, serial, errors, started + bound, bound)
            try:
                wait_until_rss_settles(process.pid, self.settle_seconds, self.settle_max_seconds)
                figures = _process_figures(process.pid, point)
                charged = cgroup.read()
                measured_at = datetime.now(UTC)
                seconds = time.monotonic() - started
                in_cgroup = process.pid in cgroup.pids()
                self.files.learn(process.pid)
            except (FileNotFoundError, ProcessLookupError) as exc:
                raise PointFailed(f"QEMU went away while being measured ({exc})") from None
            if process.poll() is not None:
                raise PointFailed(f"QEMU exited (status {process.returncode}) while being measured")
            if not in_cgroup:
                raise PointFailed(f"QEMU (pid {process.pid}) is not in its memory cgroup {cgroup.path}")
            failed = False
        finally:
            if process is not None:
                _stop(process)
            try:
                cgroup.remove()
            except CgroupError:
                if not failed:  # else the point's own error matters more
                    raise
            shutil.rmtree(point_dir, ignore_errors=True)
        return Measurement(
            point=point,
            repetition=repetition,
            accelerator=self.accelerator,
            serial=report,
            process=figures,
            cgroup=charged,
            cgroup_version=cgroup.version,
            measured_at=measured_at,
            seconds=seconds,
        )

    def _wait_touched(
        self, process: subprocess.Popen[bytes], serial: Path, errors: Path, deadline: float, bound: float
    ) -> SerialReport:
        report = SerialReport()
        while True:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            report = parse_serial(text)
            if report.done:
                return report
            stderr = errors.read_text(errors="replace")
            if process.poll() is not None:
                raise PointFailed(
                    f"QEMU exited with status {process.returncode} before the guest reported TOUCHED"
                    f"{_context(text, stderr)}"
                )
            fatal = [marker for marker in FATAL_STDERR if marker in stderr]
            if fatal:
                raise PointFailed(
                    f"QEMU reported {fatal[0]!r} (a KVM internal error leaves the VM paused)"
                    f"{_context(text, stderr)}"
                )
            if time.monotonic() > deadline:
                raise PointFailed(
                    f"the guest did not report TOUCHED within {bound:.0f} s{_context(text, stderr)}"
                )
            time.sleep(POLL)


def _context(serial: str, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "host doesn't support requested feature" not in line]
    return f" (serial: {serial.strip()[-300:]!r}; stderr: {' | '.join(lines)[-600:]!r})"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    else:
        process.wait()
