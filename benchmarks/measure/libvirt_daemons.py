"""Private libvirt daemons, started as KubeVirt's virt-launcher starts them in its default non-root
mode, each inside the memory cgroup that will be read.

KubeVirt v1.9.0 (``pkg/virt-launcher/virtwrap/util/libvirt_helper.go``, ``cmd/virt-launcher``,
``pkg/virt-controller/services/rendercontainer.go``): the launcher runs as uid 107 (``qemu``) with
``XDG_CACHE_HOME`` and ``XDG_CONFIG_HOME`` set to ``/var/run/kubevirt-private`` and
``XDG_RUNTIME_DIR`` to ``/var/run``; it starts ``virtqemud -f /var/run/libvirt/virtqemud.conf``
(``listen_tls = 0``, ``listen_tcp = 0``, ``log_outputs = "1:stderr"``) and ``virtlogd -f
/etc/libvirt/virtlogd.conf`` (the packaged defaults), and connects to
``qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock``. Its ``qemu.conf`` (in
``$XDG_CONFIG_HOME/libvirt``) says ``stdio_handler = "logd"``, ``user``/``group`` ``qemu``,
``dynamic_ownership = 1``, ``remember_owner = 0``, ``namespaces = [ ]``, ``cgroup_controllers = [ ]``.

Here every directory is a private one under the point's work directory (nothing of the host's
``/etc/libvirt``, ``/run/libvirt`` or ``/var/lib/libvirt`` is read or written; no system daemon is
involved). Each daemon starts in a private mount namespace where ``/etc/passwd`` and ``/etc/group``
have a ``qemu`` user (uid 107) and ``/dev/kvm`` is a device node that uid 107 may open (as a device
plugin gives a pod), then drops to uid 107. Before exec it enters its memory cgroup (this kernel
cannot move charges afterwards) and asks to be killed if the benchmark dies. QEMU, which libvirt
starts, finds a wrapper first in ``PATH`` that enters the domain's cgroup (or the probe cgroup for
libvirt's capability probes) and execs the real QEMU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.measure.cgroups import MemoryCgroup
from benchmarks.measure.libvirt_install import LibvirtInstall

__all__ = [
    "NONROOT_GID",
    "NONROOT_UID",
    "DaemonFailed",
    "PrivateRoot",
    "Virsh",
    "VirshError",
    "start_daemon",
    "stop_process",
]

NONROOT_UID: Final = 107  # KubeVirt pkg/util NonRootUID
NONROOT_GID: Final = 107
KVM_DEVICE: Final = Path("/dev/kvm")
DAEMON_CONF: Final = 'listen_tls = 0\nlisten_tcp = 0\nlog_outputs = "1:stderr"\n'
# KubeVirt's cmd/virt-launcher/qemu.conf, with VNC's TCP listener on loopback (its VNC is a unix
# socket anyway).
QEMU_CONF: Final = """stdio_handler = "logd"
vnc_listen = "127.0.0.1"
vnc_tls = 0
vnc_sasl = 0
user = "qemu"
group = "qemu"
dynamic_ownership = 1
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
"""
# Enters <cgroups>/<guest name> (or <cgroups>/probe) before exec'ing QEMU; refuses to run QEMU
# anywhere else.
WRAPPER: Final = """#!/bin/sh
prev= name=
for arg; do
    [ "$prev" = "-name" ] && { name=${arg#guest=}; name=${name%%,*}; }
    prev=$arg
done
dir=@CGROUPS@/${name:-probe}
[ -n "$name" ] && [ -e "$dir" ] || dir=@CGROUPS@/probe
echo $$ > "$dir/cgroup.procs" || { echo "cannot enter the memory cgroup $dir" >&2; exit 1; }
exec @QEMU@ "$@"
"""
_CLONE_NEWNS: Final = 0x00020000
_MS_BIND: Final = 0x1000
_MS_REC: Final = 0x4000
_MS_PRIVATE: Final = 0x40000
_PR_SET_PDEATHSIG: Final = 1
_libc = ctypes.CDLL(None, use_errno=True)


class DaemonFailed(RuntimeError):
    """A daemon did not start (or exited); the message carries the end of its log."""


class VirshError(RuntimeError):
    """A virsh command failed; the message carries libvirt's error."""


@dataclass(frozen=True)
class PrivateRoot:
    """A point's private libvirt tree (see the module docstring); ``path`` is created by
    :meth:`create` and removed by the caller."""

    path: Path

    @property
    def runtime(self) -> Path:
        return self.path / "run"

    @property
    def cgroups(self) -> Path:
        return self.path / "cgroups"

    def socket(self, name: str) -> Path:
        return self.runtime / "libvirt" / name

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.path / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.path / "home"),
            "XDG_CACHE_HOME": str(self.path / "kv"),  # KubeVirt: /var/run/kubevirt-private
            "XDG_CONFIG_HOME": str(self.path / "kv"),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LC_ALL": "C",
        }

    def create(self, install: LibvirtInstall, qemu: Path, kvm: bool) -> None:
        root = self.path
        root.mkdir(mode=0o755)
        for name in ("bin", "etc", "conf", "log", "cgroups"):
            (root / name).mkdir(mode=0o755)
        for name in ("home", "kv", "kv/libvirt", "run", "vm"):
            (root / name).mkdir(mode=0o700)
            os.chown(root / name, NONROOT_UID, NONROOT_GID)
        wrapper = WRAPPER.replace("@CGROUPS@", str(self.cgroups)).replace("@QEMU@", str(qemu))
        _write(root / "bin" / qemu.name, wrapper, 0o755)
        if install.daemon == "virtqemud":  # a copy uid 107 can run (the cache is root's)
            _write(root / "bin" / "virtqemud", install.daemon_binary.read_bytes(), 0o755)
        _write(root / "conf" / f"{install.daemon}.conf", DAEMON_CONF, 0o644)
        _write(root / "conf" / "virtlogd.conf", "", 0o644)
        _write(root / "kv" / "libvirt" / "qemu.conf", QEMU_CONF, 0o644)
        _write(
            root / "etc" / "passwd",
            _with_qemu(Path("/etc/passwd"), "qemu:x:{uid}:{gid}::{home}:/bin/sh"),
            0o644,
        )
        _write(root / "etc" / "group", _with_qemu(Path("/etc/group"), "qemu:x:{gid}:"), 0o644)
        if kvm:
            device = os.stat(KVM_DEVICE).st_rdev
            try:
                os.mknod(root / "kvm", stat.S_IFCHR | 0o600, device)
            except OSError as exc:
                raise DaemonFailed(
                    f"cannot create a private /dev/kvm node in {root}: {exc.strerror}"
                ) from None
            os.chown(root / "kvm", NONROOT_UID, NONROOT_GID)

    def link_cgroup(self, name: str, cgroup: MemoryCgroup) -> None:
        """Where the QEMU wrapper finds the cgroup of domain ``name`` (or ``probe``)."""
        (self.cgroups / name).symlink_to(cgroup.path)
        cgroup.delegate(NONROOT_UID, NONROOT_GID)

    def daemon_argv(self, install: LibvirtInstall) -> list[str]:
        binary = self.path / "bin" / "virtqemud" if install.daemon == "virtqemud" else install.daemon_binary
        return [str(binary), "-f", str(self.path / "conf" / f"{install.daemon}.conf")]

    def virtlogd_argv(self, install: LibvirtInstall) -> list[str]:
        return [str(install.virtlogd), "-f", str(self.path / "conf" / "virtlogd.conf")]


def _write(path: Path, content: str | bytes, mode: int) -> None:
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    path.chmod(mode)


def _with_qemu(source: Path, line: str) -> str:
    """``source`` without any user or group ``qemu`` or id 107, plus KubeVirt's ``qemu`` (107)."""
    kept = [
        entry
        for entry in source.read_text().splitlines()
        if entry.split(":")[:1] != ["qemu"] and entry.split(":")[2:3] != [str(NONROOT_UID)]
    ]
    home = "/nonexistent"
    return "\n".join([*kept, line.format(uid=NONROOT_UID, gid=NONROOT_GID, home=home)]) + "\n"


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _enter(root: PrivateRoot, cgroup: MemoryCgroup) -> None:
    """In the child, before exec: the cgroup, death with the parent, private mounts, uid 107."""
    cgroup.add_pid(os.getpid())
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    _check(_libc.unshare(_CLONE_NEWNS), "unshare")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    binds = [
        (root.path / "etc" / "passwd", Path("/etc/passwd")),
        (root.path / "etc" / "group", Path("/etc/group")),
    ]
    if (root.path / "kvm").exists():
        binds.append((root.path / "kvm", KVM_DEVICE))
    for source, target in binds:
        _check(_libc.mount(bytes(source), bytes(target), None, _MS_BIND, None), f"bind {target}")
    os.setgroups([])
    os.setgid(NONROOT_GID)
    os.setuid(NONROOT_UID)


def start_daemon(
    name: str,
    argv: list[str],
    root: PrivateRoot,
    cgroup: MemoryCgroup,
    socket: Path,
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon (stderr to ``log/<name>.log``) and wait for its socket; raises
    :class:`DaemonFailed` after stopping it if it exits or the socket does not appear in time."""
    log = root.path / "log" / f"{name}.log"
    with log.open("ab") as output:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=dict(env or root.env()),
                cwd=root.path / "home",
                preexec_fn=lambda: _enter(root, cgroup),
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops the daemons in order
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise DaemonFailed(f"cannot start {name} ({argv[0]}): {exc}") from None
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if process.poll() is not None:
            raise DaemonFailed(f"{name} exited with status {process.returncode} at start{_tail(log)}")
        if time.monotonic() > deadline:
            stop_process(process)
            raise DaemonFailed(f"{name} did not create {socket} within {timeout:.0f} s{_tail(log)}")
        time.sleep(0.05)
    return process


def _tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (its log: {' | '.join(lines[-4:])[-600:]!r})" if lines else " (its log is empty)"


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@dataclass(frozen=True)
class Virsh:
    """``virsh`` against one private daemon (run as root, which a session daemon accepts)."""

    binary: Path
    socket: Path

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.socket}"

    def __call__(self, *args: str, timeout: float = 120.0) -> str:
        argv = [str(self.binary), "-q", "-c", self.uri, *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise VirshError(f"virsh {' '.join(args[:1])} did not answer within {timeout:.0f} s") from None
        if done.returncode != 0:
            message = " ".join(line for line in done.stderr.strip().splitlines() if line.strip())
            raise VirshError(f"virsh {' '.join(args[:2])}: {message[-800:] or f'exit {done.returncode}'}")
        return done.stdout
