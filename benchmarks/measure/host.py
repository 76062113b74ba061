"""Facts about the measuring host, the accelerator, other QEMU processes, and the page cache of
QEMU's files."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "HostFacts",
    "QemuFiles",
    "choose_accelerator",
    "evict_page_cache",
    "host_facts",
    "other_qemus",
    "qemu_version",
]

_ARCHES: Final = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_VERSION: Final = re.compile(r"QEMU emulator version\s+(.+)")


@dataclass(frozen=True)
class HostFacts:
    kernel: str
    qemu: str
    accelerator: str
    node: str
    cpu_model: str
    arch: str

    def as_record(self) -> dict[str, str]:
        return {
            "kernel": self.kernel,
            "qemu": self.qemu,
            "accelerator": self.accelerator,
            "node": self.node,
            "cpuModel": self.cpu_model,
        }


def choose_accelerator(requested: str) -> str:
    """``kvm`` or ``tcg``: ``auto`` is kvm when /dev/kvm can be opened for reading and writing."""
    if requested != "auto":
        return requested
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def qemu_version(qemu: str) -> str:
    """``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`` from ``qemu --version``."""
    done = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30, check=True)
    match = _VERSION.search(done.stdout)
    first = done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"
    return (match.group(1).strip() if match else first)[:200]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()[:200]
    except OSError:
        pass
    return (platform.processor() or platform.machine() or "unknown")[:200]


def host_facts(accelerator: str, qemu: str) -> HostFacts:
    machine = platform.machine()
    return HostFacts(
        kernel=platform.release()[:200] or "unknown",
        qemu=qemu_version(qemu),
        accelerator=accelerator,
        node=(socket.gethostname() or "unknown")[:200],
        cpu_model=_cpu_model(),
        arch=_ARCHES.get(machine, machine or "unknown"),
    )


def other_qemus(exclude: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Live (not zombie) ``qemu-system-*`` processes other than ``exclude``: (pid, command line)."""
    skip = set(exclude)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        program = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
        if not (comm.startswith("qemu-system") or program.startswith("qemu-system")):
            continue
        state = stat.rpartition(")")[2].split()[:1]
        if state == ["Z"]:
            continue
        command = " ".join(a.decode(errors="replace") for a in argv if a)[:300]
        found.append((int(entry.name), command or comm))
    return found


def evict_page_cache(paths: Iterable[Path]) -> int:
    """``posix_fadvise(DONTNEED)`` each file, so that its pages are read (and charged) afresh; pages
    another process still maps stay. Returns how many files were advised."""
    advised = 0
    for path in paths:
        try:
            if not path.is_file():  # regular files only (never block a FIFO or touch a device)
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            advised += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return advised


class QemuFiles:
    """The files whose page cache a fresh QEMU would read: the binary, its shared libraries, its
    firmware and module directories, and every file a measured QEMU was seen to map."""

    def __init__(self, qemu: str) -> None:
        binary = shutil.which(qemu)
        self.files: set[Path] = set()
        if binary is None:
            return
        real = Path(binary).resolve()
        self.files.add(real)
        self.files.update(self._libraries(str(real)))
        directories = self._data_dirs(str(real))
        directories.append(Path("/usr/lib") / f"{platform.machine()}-linux-gnu" / "qemu")  # modules
        for directory in directories:
            self._add_tree(directory)

    @staticmethod
    def _libraries(binary: str) -> set[Path]:
        try:
            done = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return set()
        libraries = set()
        for line in done.stdout.splitlines():
            match = re.search(r"(/\S+)\s+\(0x", line)
            if match:
                libraries.add(Path(match.group(1)).resolve())
        return libraries

    @staticmethod
    def _data_dirs(binary: str) -> list[Path]:
        try:
            done = subprocess.run(
                [binary, "-L", "help"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return []
        return [
            Path(line.strip()).resolve() for line in done.stdout.splitlines() if line.strip().startswith("/")
        ]

    def _add_tree(self, directory: Path, depth: int = 2) -> None:
        try:
            entries = list(directory.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.is_dir() and depth > 0:
                self._add_tree(entry, depth - 1)
            elif entry.is_file():
                self.files.add(entry.resolve())

    def learn(self, pid: int) -> None:
        """Add the files process ``pid`` maps (read from /proc/PID/maps)."""
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/") and not parts[5].endswith("(deleted)"):
                self.files.add(Path(parts[5]))
