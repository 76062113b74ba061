"""The real node for :mod:`overhead_service.nodecheck.checks`: files, commands, limits; the table for
people; and the standalone script (``python -m overhead_service.nodecheck [--json]``), which needs
only the standard library, as the DaemonSet in ``deploy/node-check/`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overhead_service.nodecheck.checks import QEMU_BINARIES, CommandRunner, Completed, inspect_node

__all__ = ["HostFileSystem", "RecordedRunner", "SubprocessRunner", "format_table", "main", "memlock_limits"]


class HostFileSystem:
    """The real file system, optionally under ``root`` (the host's ``/`` mounted in a container)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def _path(self, path: str) -> str:
        return path if self.root == "/" else os.path.join(self.root, path.lstrip("/"))

    def mode(self, path: str) -> int:
        return os.stat(self._path(path)).st_mode

    def open_rw(self, path: str) -> None:
        os.close(os.open(self._path(path), os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK))

    def read_text(self, path: str) -> str:
        return Path(self._path(path)).read_text(encoding="utf-8", errors="replace")

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._path(path)))


class SubprocessRunner:
    """Runs commands with ``LC_ALL=C``, in ``chroot root`` when the host is mounted elsewhere."""

    def __init__(self, root: str = "/", timeout: float = 15.0) -> None:
        self.root = root
        self.timeout = timeout

    def __call__(self, probe: str, argv: Sequence[str]) -> Completed:
        if self.root == "/":
            found = shutil.which(argv[0])
            if found is None:
                raise FileNotFoundError(argv[0])
            argv = [found, *argv[1:]]
        command = list(argv) if self.root == "/" else ["chroot", self.root, *argv]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{argv[0]} did not finish within {self.timeout:g} s") from None
        if self.root != "/" and done.returncode == 127 and "No such file" in done.stderr:
            raise FileNotFoundError(argv[0])  # chroot: the program is missing on the host
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)


class RecordedRunner:
    """Answers probes from outputs recorded elsewhere, the others with ``fallback``.

    A record is ``<probe>.rc`` (the exit status), ``.out``, ``.err`` and ``.argv`` in ``directory``.
    The DaemonSet records QEMU and libvirt inside the virt-launcher image, where KubeVirt's QEMU and
    libvirt live, and runs the rest here.  A probe with neither is a missing program; exit status 127
    (the shell's "command not found") too.
    """

    def __init__(self, directory: str, fallback: CommandRunner | None = None) -> None:
        self.directory = Path(directory)
        self.fallback = fallback

    def __call__(self, probe: str, argv: Sequence[str]) -> Completed:
        try:
            code = int((self.directory / f"{probe}.rc").read_text().strip())
        except (OSError, ValueError):
            if self.fallback is None:
                raise FileNotFoundError(argv[0]) from None
            return self.fallback(probe, argv)
        if code == 127:
            raise FileNotFoundError(argv[0])

        def text(suffix: str) -> str:
            try:
                return (self.directory / f"{probe}{suffix}").read_text(encoding="utf-8", errors="replace")
            except OSError:
                return ""

        recorded = text(".argv").split()
        return Completed(tuple(recorded or argv), code, text(".out"), text(".err"))


def memlock_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)


# --- the table ------------------------------------------------------------------------------------


def _size(limit: int | None) -> str:
    if limit is None:
        return "unlimited"
    return f"{limit} bytes ({limit / (1 << 20):g} MiB)"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def format_table(node: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """The facts as a table for people: check, result, detail (remediation where something is wrong)."""
    rows: list[tuple[str, str, str]] = []
    for device in node["devices"].values():
        detail = device["remediation"] or "character device, opened read-write"
        rows.append((device["path"], device["status"], detail))
    for name, loaded in node["modules"].items():
        rows.append((f"module {name}", "loaded" if loaded else "not loaded", ""))
    rows.append(("L1VH partition", _yes(node["l1vhPartition"]), (notes or {}).get("l1vhPartition", "")))
    rows += _software_rows(node)
    memlock = node["memlock"]
    rows.append(
        ("memlock (this process)", _size(memlock["softBytes"]), f"hard {_size(memlock['hardBytes'])}")
    )
    cgroup = node["cgroupVersion"]
    rows.append(("cgroup", "unknown" if cgroup is None else f"v{cgroup}", ""))
    pages = node["hugepages"]
    if pages is None:
        rows.append(("hugepages", "unknown", "/sys/kernel/mm/hugepages not readable"))
    else:
        text = "; ".join(f"{size}: {p['free']} free of {p['total']}" for size, p in pages.items())
        rows.append(("hugepages", text or "none", ""))
    rows.append(
        (
            "=> request node",
            f"mshvAvailable={_json(node['mshvAvailable'])}",
            f"kvmAvailable={_json(node['kvmAvailable'])} (node-check --json prints the whole object)",
        )
    )
    width = max(len(row[0]) for row in rows)
    result = max(len(row[1]) for row in rows)
    lines = [f"{'CHECK':<{width}}  {'RESULT':<{result}}  DETAIL"]
    lines += [f"{a:<{width}}  {b:<{result}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def _software_rows(node: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    qemu = node["qemu"]
    if qemu is None:
        rows.append(("QEMU", "not found", "looked for " + ", ".join(QEMU_BINARIES)))
    else:
        listed = qemu["accelerators"]
        accelerators = "unknown" if listed is None else ", ".join(listed)
        version = qemu["version"] or "unknown version"
        rows.append(("QEMU", version, f"{qemu['binary']}; -accel help: {accelerators}"))
        rows.append(("QEMU mshv accelerator", _yes(qemu["mshvAccelerator"]), ""))
    libvirt = node["libvirt"]
    if libvirt is None:
        rows.append(("libvirt", "not found", "no virsh here (KubeVirt runs libvirt inside virt-launcher)"))
    else:
        rows.append(("libvirt", libvirt["version"] or "unknown version", "virsh --version"))
        rows.append(("libvirt type='hyperv'", _yes(libvirt["hypervDomain"]), libvirt["detail"]))
    return rows


def _json(value: Any) -> str:
    return json.dumps(value)


# --- the standalone script ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="node-check", description="This node's facts for L1VH (mshv) and kvm, as a table or as JSON."
    )
    parser.add_argument("--json", action="store_true", help="print the request's node object")
    parser.add_argument("--root", default="/", help="the host's / (files read and commands run there)")
    parser.add_argument("--recorded", help="answer QEMU/libvirt/kernel-log probes from recorded outputs")
    parser.add_argument("--every", type=float, help="repeat every SECONDS (one JSON line each)")
    args = parser.parse_args(argv)
    fs = HostFileSystem(args.root)
    live = SubprocessRunner(args.root)
    run: CommandRunner = RecordedRunner(args.recorded, live) if args.recorded else live
    while True:
        node, notes = inspect_node(fs, run, memlock_limits)
        print(json.dumps(node, separators=(",", ":")) if args.json else format_table(node, notes), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)
