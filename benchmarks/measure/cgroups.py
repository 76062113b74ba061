"""A fresh memory cgroup per measured VM: cgroup v2 where the memory controller is available, else
the v1 memory hierarchy, as a child of this process's own memory cgroup.

What is read (bytes):

================  =====================================  =========================================
figure            v1                                     v2
================  =====================================  =========================================
anon              ``memory.stat`` ``rss`` (incl. THP)    ``memory.stat`` ``anon``
kernel            ``memory.kmem.usage_in_bytes``         ``memory.stat`` ``kernel`` (or its parts)
page cache        ``memory.stat`` ``cache``              ``memory.stat`` ``file``
usage             ``memory.usage_in_bytes``              ``memory.current``
peak              ``memory.max_usage_in_bytes``          ``memory.peak`` (if the kernel has it)
================  =====================================  =========================================

Kernel memory includes the QEMU process's page tables (v1 charges them to kmem) and KVM's
allocations made on behalf of the VM.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["CgroupError", "CgroupFigures", "MemoryCgroup", "create_memory_cgroup", "find_memory_parent"]

PREFIX: Final = "overhead-measure"
_V2_KERNEL_PARTS: Final = (
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "sock",
    "vmalloc",
    "slab",
)
_counter = itertools.count()


class CgroupError(RuntimeError):
    """No usable memory cgroup, or one could not be created, read or removed."""


@dataclass(frozen=True)
class CgroupFigures:
    anon: int
    kernel: int
    page_cache: int
    usage: int
    peak: int | None


@dataclass(frozen=True)
class MemoryCgroup:
    """One child memory cgroup (``version`` 1 or 2) at ``path``."""

    path: Path
    version: int

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` into this cgroup (safe to call from ``preexec_fn``)."""
        fd = os.open(self.path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def delegate(self, uid: int, gid: int) -> None:
        """Let ``uid`` move its own processes in here (a process entering its cgroup before exec)."""
        os.chown(self.path / "cgroup.procs", uid, gid)

    def kill_all(self) -> list[int]:
        """SIGKILL whatever is still inside (a safety net after an orderly stop); returns the pids."""
        try:
            pids = self.pids()
        except FileNotFoundError:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def read(self) -> CgroupFigures:
        stat = _stat(self.path / "memory.stat")
        if self.version == 1:
            return CgroupFigures(
                anon=stat.get("rss", 0),
                kernel=_number(self.path / "memory.kmem.usage_in_bytes") or 0,
                page_cache=stat.get("cache", 0),
                usage=_number(self.path / "memory.usage_in_bytes") or 0,
                peak=_number(self.path / "memory.max_usage_in_bytes"),
            )
        kernel = stat.get("kernel")
        if kernel is None:  # kernels before 6.x have no total; add up its parts
            kernel = sum(stat.get(part, 0) for part in _V2_KERNEL_PARTS)
        return CgroupFigures(
            anon=stat.get("anon", 0),
            kernel=kernel,
            page_cache=stat.get("file", 0),
            usage=_number(self.path / "memory.current") or 0,
            peak=_number(self.path / "memory.peak"),
        )

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir once its processes are gone (bounded: a cgroup still busy after ``timeout`` raises)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove {self.path}: {exc.strerror}") from None
                time.sleep(0.05)


def _stat(path: Path) -> dict[str, int]:
    figures: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            figures[name] = int(value)
    return figures


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _mounts(mountinfo: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, super options) of each mount."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append((point, tail[0], set(tail[2].split(","))))
    return mounts


def find_memory_parent(proc_cgroup: str | None = None, mountinfo: str | None = None) -> tuple[int, Path]:
    """(version, directory) under which a child memory cgroup for a VM can be made: this
    process's own cgroup in the v2 hierarchy if it has the memory controller, else this process's
    memory cgroup in the v1 hierarchy."""
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    mounts = _mounts(mountinfo)
    v2_path = v1_path = None
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    if v2_path is not None:
        for point, fstype, _ in mounts:
            if fstype != "cgroup2":
                continue
            directory = Path(point) / v2_path.lstrip("/")
            try:
                available = (directory / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "memory" in available:
                return 2, directory
    if v1_path is not None:
        for point, fstype, options in mounts:
            if fstype == "cgroup" and "memory" in options:
                return 1, Path(point) / v1_path.lstrip("/")
    raise CgroupError("no memory cgroup controller: neither cgroup v2 with memory nor a v1 memory hierarchy")


def create_memory_cgroup(parent: tuple[int, Path] | None = None, name: str | None = None) -> MemoryCgroup:
    """A new, empty child memory cgroup (named ``name``, by default ``overhead-measure-<pid>-<n>``)."""
    version, directory = parent or find_memory_parent()
    if version == 2:
        _enable_v2_memory(directory)
    path = directory / (name or f"{PREFIX}-{os.getpid()}-{next(_counter)}")
    try:
        path.mkdir()
    except OSError as exc:
        raise CgroupError(f"cannot create the memory cgroup {path}: {exc.strerror}") from None
    cgroup = MemoryCgroup(path, version)
    if version == 1:
        # A fresh v1 cgroup starts empty; make the peak start with this VM.
        (path / "memory.max_usage_in_bytes").write_text("0")
    return cgroup


def _enable_v2_memory(directory: Path) -> None:
    control = directory / "cgroup.subtree_control"
    if "memory" in control.read_text().split():
        return
    try:
        control.write_text("+memory")
    except OSError as exc:
        raise CgroupError(
            f"cannot enable the memory controller for child cgroups of {directory} ({exc.strerror}): "
            "cgroup v2 allows that only in a cgroup without processes of its own; run the benchmark "
            "in a delegated cgroup (e.g. systemd-run --scope -p Delegate=yes ...)"
        ) from None
