"""What one process holds, from ``/proc/PID/status``, ``smaps_rollup`` and ``smaps`` (bytes).

``rss`` = ``VmRSS`` = ``rssAnon + rssFile + rssShmem``; ``pss`` splits shared pages among the
processes mapping them (``pssAnon``, ``pssFile``, ``pssShmem`` are its parts); ``pageTables`` is
``VmPTE``. A process that is gone raises :class:`FileNotFoundError` or :class:`ProcessLookupError`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["ProcessMemory", "guest_ram_rss_kib", "process_memory", "smaps_rollup_kib", "status_kib"]

KIB: Final = 1024
_STATUS_KEYS: Final = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPTE", "Threads")
_MAPPING: Final = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


@dataclass(frozen=True)
class ProcessMemory:
    """One process, in bytes (``threads`` is a count)."""

    rss: int
    rss_anon: int
    rss_file: int
    rss_shmem: int
    pss: int
    pss_anon: int
    pss_file: int
    pss_shmem: int
    page_tables: int
    threads: int


def status_kib(pid: int) -> dict[str, int]:
    """/proc/PID/status figures in kB (and ``Threads``)."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in _STATUS_KEYS and parts and parts[0].isdigit():
            figures[key] = int(parts[0])
    return figures


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup totals in kB (``Pss``, ``Pss_Anon``, ``Pss_File``, ...)."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            figures[key] = int(parts[0])
    return figures


def process_memory(pid: int) -> ProcessMemory:
    status = status_kib(pid)
    rollup = smaps_rollup_kib(pid)
    if "Pss" not in rollup:
        raise ProcessLookupError(f"no Pss in /proc/{pid}/smaps_rollup")
    return ProcessMemory(
        rss=status.get("VmRSS", 0) * KIB,
        rss_anon=status.get("RssAnon", 0) * KIB,
        rss_file=status.get("RssFile", 0) * KIB,
        rss_shmem=status.get("RssShmem", 0) * KIB,
        pss=rollup["Pss"] * KIB,
        pss_anon=rollup.get("Pss_Anon", 0) * KIB,
        pss_file=rollup.get("Pss_File", 0) * KIB,
        pss_shmem=rollup.get("Pss_Shmem", 0) * KIB,
        page_tables=status.get("VmPTE", 0) * KIB,
        threads=status.get("Threads", 0),
    )


def guest_ram_rss_kib(pid: int, memory_mib: int) -> int:
    """Rss of the largest anonymous mapping at least as large as the guest RAM (QEMU's RAM block)."""
    best_size = best_rss = 0
    size = rss = 0
    anonymous = False

    def close() -> None:
        nonlocal best_size, best_rss
        if anonymous and size >= memory_mib * 1024 and size > best_size:
            best_size, best_rss = size, rss

    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if _MAPPING.match(line):
            close()
            parts = line.split()
            anonymous = len(parts) < 6
            size = rss = 0
        elif line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    close()
    return best_rss


def wait_until_rss_settles(pid: int, settle_seconds: float, max_seconds: float) -> None:
    """Wait until the process's VmRSS has not changed for ``settle_seconds`` (at most ``max_seconds``):
    the guest has stopped faulting pages in, so the figures read next are its steady state."""
    give_up = time.monotonic() + max_seconds
    last = status_kib(pid).get("VmRSS", 0)
    stable_since = time.monotonic()
    while time.monotonic() < give_up:
        time.sleep(0.1)
        rss = status_kib(pid).get("VmRSS", 0)
        if rss != last:
            last, stable_since = rss, time.monotonic()
        elif time.monotonic() - stable_since >= settle_seconds:
            return
