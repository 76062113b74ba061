"""Which libvirt daemon the libvirt path runs, and where its binaries are.

KubeVirt's virt-launcher runs the modular ``virtqemud`` (``pkg/virt-launcher/virtwrap/util/
libvirt_helper.go``, ``StartVirtqemud``). Debian 12 packages only the monolithic ``libvirtd``
(package ``libvirt-daemon``); its source package builds ``virtqemud`` too but does not ship it.
``make libvirt-virtqemud`` builds it from Debian's own source package (``build-virtqemud.sh``)
into ``~/.cache/overhead-service/libvirt-<version>/virtqemud``, where ``<version>`` is the
installed ``libvirt0``'s: the built daemon runs with the packaged ``libvirt.so.0`` and the packaged
QEMU driver module, so only the daemon itself differs from ``libvirtd``.

``--daemon auto`` takes the built ``virtqemud`` when the cache holds one for the installed libvirt,
else the packaged ``libvirtd``; every record says which one it measured.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DAEMONS",
    "MIN_LIBVIRT",
    "LibvirtInstall",
    "LibvirtUnavailable",
    "default_build_dir",
    "find_install",
    "parse_version",
]

DAEMONS: Final = ("auto", "virtqemud", "libvirtd")
# libvirt 6.9 added the balloon's freePageReporting that KubeVirt's domains use.
MIN_LIBVIRT: Final = (6, 9, 0)
LIBVIRTD: Final = Path("/usr/sbin/libvirtd")
VIRTLOGD: Final = Path("/usr/sbin/virtlogd")
VIRSH: Final = Path("/usr/bin/virsh")
QEMU_DRIVER: Final = Path("/usr/lib") / "x86_64-linux-gnu" / "libvirt" / "connection-driver"
PACKAGES: Final = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
_VERSION: Final = re.compile(r"\(libvirt\)\s+(\d+)\.(\d+)\.(\d+)")


class LibvirtUnavailable(RuntimeError):
    """No usable libvirt: missing, too old, or the requested daemon not built."""


@dataclass(frozen=True)
class LibvirtInstall:
    """The daemons and the client of one libvirt installation."""

    daemon: str  # "virtqemud" or "libvirtd": the daemon that runs the QEMU driver
    daemon_binary: Path
    virtlogd: Path
    virsh: Path
    build: str  # "debian-source-build" (virtqemud built here) or "debian-package"
    version: str  # "9.0.0"
    package: str | None  # the libvirt0 package version, e.g. "9.0.0-4+deb12u2"

    @property
    def socket_name(self) -> str:
        """The daemon's socket in ``$XDG_RUNTIME_DIR/libvirt`` (session mode)."""
        return "libvirt-sock" if self.daemon == "libvirtd" else "virtqemud-sock"

    @property
    def version_text(self) -> str:
        """``9.0.0 (Debian 9.0.0-4+deb12u2)``: for the records' ``host.libvirt``."""
        return f"{self.version} (Debian {self.package})" if self.package else self.version


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``(9, 0, 0)`` from ``virtqemud (libvirt) 9.0.0`` (what ``--version`` prints)."""
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _binary_version(binary: Path) -> tuple[int, int, int]:
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise LibvirtUnavailable(f"cannot run {binary}: {exc.strerror or exc}") from None
    version = parse_version(done.stdout + done.stderr)
    if done.returncode != 0 or version is None:
        raise LibvirtUnavailable(
            f"{binary} --version did not report a libvirt version (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[:200]!r}"
        )
    if version < MIN_LIBVIRT:
        raise LibvirtUnavailable(
            f"{binary} is libvirt {'.'.join(map(str, version))}; the libvirt path needs at least "
            f"{'.'.join(map(str, MIN_LIBVIRT))}"
        )
    return version


def _package_version(package: str = "libvirt0") -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def default_build_dir(package: str | None = None) -> Path:
    """``$XDG_CACHE_HOME/overhead-service/libvirt-<libvirt0 version>`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "overhead-service" / f"libvirt-{package or _package_version() or 'unknown'}"


def _require(path: Path, what: str) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LibvirtUnavailable(f"{path} ({what}) not found: install {PACKAGES}")
    return path


def find_install(
    choice: str = "auto",
    build_dir: Path | None = None,
    *,
    libvirtd: Path = LIBVIRTD,
    virtlogd: Path = VIRTLOGD,
    virsh: Path = VIRSH,
) -> LibvirtInstall:
    """The installation to measure with; raises :class:`LibvirtUnavailable` with what to do."""
    if choice not in DAEMONS:
        raise ValueError(f"daemon must be one of {', '.join(DAEMONS)}")
    _require(virtlogd, "virtlogd")
    _require(virsh, "virsh")
    package = _package_version()
    built = (build_dir or default_build_dir(package)) / "virtqemud"
    if choice == "virtqemud" or (choice == "auto" and built.is_file()):
        if not built.is_file():
            raise LibvirtUnavailable(
                f"no virtqemud built for libvirt {package or '(unknown)'} at {built}: run "
                "`make libvirt-virtqemud` (about 2 minutes), or use --daemon libvirtd"
            )
        if not (QEMU_DRIVER / "libvirt_driver_qemu.so").is_file():
            raise LibvirtUnavailable(f"{QEMU_DRIVER}/libvirt_driver_qemu.so not found: install {PACKAGES}")
        daemon, binary, build = "virtqemud", built, "debian-source-build"
    else:
        daemon, binary, build = "libvirtd", _require(libvirtd, "libvirtd"), "debian-package"
    version = _binary_version(binary)
    _binary_version(virtlogd)
    return LibvirtInstall(
        daemon=daemon,
        daemon_binary=binary,
        virtlogd=virtlogd,
        virsh=virsh,
        build=build,
        version=".".join(map(str, version)),
        package=package,
    )
