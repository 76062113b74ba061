"""``node-check``: the facts of this node that matter for L1VH (mshv) and kvm, for people and requests.

It inspects the node it runs on and answers the ``node`` object that ``POST /v1/overhead`` and
``POST /v1/render`` accept, unchanged::

    {"mshvAvailable": false, "kvmAvailable": true,
     "devices": {"mshv": {"path": "/dev/mshv", "status": "missing", "remediation": "..."},
                 "kvm": {"path": "/dev/kvm", "status": "present", "remediation": null}},
     "modules": {"mshv_root": false, "kvm": true},
     "l1vhPartition": null,
     "qemu": {"binary": "...", "version": "7.2.22", "accelerators": ["tcg", "kvm"], "mshvAccelerator": false},
     "libvirt": {"version": "9.0.0", "hypervDomain": null, "detail": "..."},
     "memlock": {"softBytes": 8388608, "hardBytes": 8388608},
     "cgroupVersion": 1,
     "hugepages": {"2Mi": {"total": 0, "free": 0}, "1Gi": {"total": 0, "free": 0}}}

``mshvAvailable`` / ``kvmAvailable`` mean what they always meant in a request: the device file exists
on the node (a character device; whether *this* process may open it is the ``status``, since
virt-launcher gets it through KubeVirt's device plugin).  ``emulationAllowed`` is the cluster's
``useEmulation``, not a node fact, so it is left out.

Where each fact comes from (Linux and upstream sources):

* devices: ``/dev/mshv`` is the ``mshv_root`` driver's misc device, registered only on a Hyper-V
  parent (root or L1VH) partition (``drivers/hv/mshv_root_main.c``); ``/dev/kvm`` is KVM's.  Opened
  read-write, as QEMU does: ``ENOENT`` missing, ``EACCES``/``EPERM`` permission denied (in a
  container also the device cgroup), anything else an error;
* modules: ``/proc/modules``, else ``/sys/module/<name>`` (built-in drivers have no ``/proc/modules``
  line);
* L1VH: the kernel logs ``Hyper-V: running as L1VH partition`` (or ``... root partition``) at boot
  (``hv_identify_partition_type``, ``drivers/hv/hv_common.c``); there is no sysfs attribute, so the
  kernel log is read (``dmesg``, which needs ``CAP_SYSLOG`` where ``kernel.dmesg_restrict=1``);
* QEMU: ``--version``, and ``-accel help``, which lists the accelerators compiled in (``mshv`` since
  QEMU 10.2; it says nothing about the device);
* libvirt: ``virsh --version``, and ``virsh domcapabilities --virttype hyperv``, as KubeVirt's
  node-labeller asks (``cmd/virt-launcher/node-labeller/node-labeller.sh``): upstream libvirt's QEMU
  driver refuses ``hyperv``; a build that accepts it answers ``<domain>hyperv</domain>``;
* the calling process's ``RLIMIT_MEMLOCK``, the cgroup version, and ``/sys/kernel/mm/hugepages``.

The checks take their file system, command runner and resource limits as parameters
(:class:`FileSystem`, :class:`CommandRunner`), so every branch is testable with fakes; the real ones
are in :mod:`overhead_service.nodecheck.system`.
"""

from __future__ import annotations

import errno
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "DOMCAPS",
    "PROBES",
    "QEMU_BINARIES",
    "CommandRunner",
    "Completed",
    "FileSystem",
    "check_node",
    "inspect_node",
]

PRESENT: Final = "present"
MISSING: Final = "missing"
DENIED: Final = "permission-denied"
NOT_A_DEVICE: Final = "not-a-device"
ERROR: Final = "error"

# The commands, by probe name (a recorded run answers by these names; deploy/node-check records them).
PROBES: Final = ("qemu-version", "qemu-accel", "libvirt-version", "libvirt-domcaps", "kernel-log")
QEMU_BINARIES: Final = ("qemu-system-x86_64", "/usr/libexec/qemu-kvm", "qemu-kvm", "qemu-system-aarch64")
DOMCAPS: Final = ("domcapabilities", "--machine", "q35", "--arch", "x86_64", "--virttype", "hyperv")

_REMEDIATION: Final = {
    ("mshv", MISSING): (
        "no /dev/mshv: the node is not a Hyper-V root or L1VH partition with the mshv_root driver "
        "loaded; on an L1VH host load it (modprobe mshv_root, CONFIG_MSHV_ROOT), else keep VMIs on kvm here"
    ),
    ("mshv", DENIED): (
        "/dev/mshv exists but this process may not open it: run the check as root (and, in a "
        "container, privileged: the device cgroup denies it otherwise); virt-launcher gets the device "
        "through KubeVirt's device plugin as devices.kubevirt.io/mshv"
    ),
    ("kvm", MISSING): (
        "no /dev/kvm: enable virtualization in the firmware (or nested virtualization on the parent "
        "hypervisor) and load kvm_intel or kvm_amd; without it KubeVirt needs useEmulation (QEMU TCG)"
    ),
    ("kvm", DENIED): (
        "/dev/kvm exists but this process may not open it: run as root or in the kvm group (in a "
        "container, privileged); virt-launcher gets it through devices.kubevirt.io/kvm"
    ),
}


@dataclass(frozen=True)
class Completed:
    """What a command did: the argv that ran, its exit status and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class FileSystem(Protocol):
    """The file operations the checks need; each raises :class:`OSError` as the system call would."""

    def mode(self, path: str) -> int:
        """``st_mode`` of ``path`` (following links)."""
        ...

    def open_rw(self, path: str) -> None:
        """Open ``path`` read-write and close it again."""
        ...

    def read_text(self, path: str) -> str: ...

    def listdir(self, path: str) -> list[str]: ...


class CommandRunner(Protocol):
    """Runs ``argv`` for the probe named ``probe``; raises :class:`FileNotFoundError` when the program
    does not exist and :class:`TimeoutError` when it hangs."""

    def __call__(self, probe: str, argv: Sequence[str]) -> Completed: ...


# --- the checks -----------------------------------------------------------------------------------


def _device(fs: FileSystem, name: str) -> dict[str, Any]:
    path = f"/dev/{name}"
    try:
        mode = fs.mode(path)
    except FileNotFoundError:
        status, detail = MISSING, None
    except PermissionError as err:
        status, detail = DENIED, err.strerror
    except OSError as err:
        status, detail = ERROR, f"stat {path}: {err.strerror or err}"
    else:
        if not stat.S_ISCHR(mode):
            status, detail = NOT_A_DEVICE, None
        else:
            status, detail = _open(fs, path)
    remediation = _REMEDIATION.get((name, status))
    minor = _misc_minor(fs, name) if status == MISSING else None
    if minor is not None:
        remediation = (
            f"the driver registered {name} (minor {minor} in /proc/misc) but {path} is missing: "
            f"mknod {path} c 10 {minor} (KubeVirt's node-labeller does the same for mshv)"
        )
    if status == NOT_A_DEVICE:
        remediation = f"{path} exists but is not a character device: remove it, let the driver create it"
    elif status == ERROR:
        remediation = f"{detail}: the device node exists but its driver does not answer; see the kernel log"
    return {"path": path, "status": status, "remediation": remediation}


def _misc_minor(fs: FileSystem, name: str) -> int | None:
    """The misc minor ``/proc/misc`` lists for ``name`` (``232 kvm``), if the driver registered one."""
    try:
        lines = fs.read_text("/proc/misc").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1] == name and parts[0].isdigit():
            return int(parts[0])
    return None


def _open(fs: FileSystem, path: str) -> tuple[str, str | None]:
    try:
        fs.open_rw(path)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return DENIED, None
        if err.errno == errno.ENOENT:
            return MISSING, None
        return ERROR, f"open {path}: {err.strerror or err}"
    return PRESENT, None


def _module(fs: FileSystem, name: str, modules: str | None) -> bool:
    if modules is not None and any(line.split(" ", 1)[0] == name for line in modules.splitlines()):
        return True
    try:
        return stat.S_ISDIR(fs.mode(f"/sys/module/{name}"))
    except OSError:
        return False


_L1VH: Final = re.compile(r"Hyper-V: running as L1VH partition")
_ROOT: Final = re.compile(r"Hyper-V: running as root partition")


def _kernel_log(run: CommandRunner) -> tuple[bool | None, str]:
    """Whether the kernel said it runs as an L1VH partition: True, False, or None (log unreadable)."""
    attempts = (["dmesg"], ["journalctl", "-k", "-b", "--no-pager", "-q"])
    reasons = []
    for argv in attempts:
        try:
            done = run("kernel-log", argv)
        except (FileNotFoundError, TimeoutError) as err:
            reasons.append(f"{argv[0]}: {err}")
            continue
        if done.returncode != 0 or not done.stdout.strip():
            reasons.append(f"{argv[0]}: {(done.stderr.strip() or 'no output').splitlines()[0]}")
            continue
        if _L1VH.search(done.stdout):
            return True, f"{argv[0]}: Hyper-V: running as L1VH partition"
        if _ROOT.search(done.stdout):
            return False, f"{argv[0]}: Hyper-V: running as root partition"
        return False, f"{argv[0]}: no Hyper-V partition line (not a Hyper-V parent, or the log rotated)"
    return None, "kernel log not readable (" + "; ".join(reasons) + ")"


_QEMU_VERSION: Final = re.compile(r"QEMU emulator version (\S+)")
_ACCEL_HEADER: Final = "Accelerators supported in QEMU binary:"


def _qemu(run: CommandRunner) -> dict[str, Any] | None:
    for binary in QEMU_BINARIES:
        try:
            version = run("qemu-version", [binary, "--version"])
        except (FileNotFoundError, TimeoutError):
            continue
        match = _QEMU_VERSION.search(version.stdout)
        accelerators: list[str] | None = None
        try:
            accel = run("qemu-accel", [version.argv[0], "-accel", "help"])
        except (FileNotFoundError, TimeoutError):
            accel = None
        if accel is not None and accel.returncode == 0 and _ACCEL_HEADER in accel.stdout:
            listed = accel.stdout.split(_ACCEL_HEADER, 1)[1].split()
            accelerators = [name for name in listed if re.fullmatch(r"[a-z0-9_-]+", name)]
        return {
            "binary": version.argv[0],
            "version": match.group(1) if match else None,
            "accelerators": accelerators,
            "mshvAccelerator": None if accelerators is None else "mshv" in accelerators,
        }
    return None


_HYPERV_REFUSED: Final = (
    "does not support virt type 'hyperv'",
    "is not supported by",  # "the accel 'tcg' is not supported by '<binary>' on this host"
    "unknown virt type",
    "invalid argument: virttype",
)


def _libvirt(run: CommandRunner) -> dict[str, Any] | None:
    try:
        version = run("libvirt-version", ["virsh", "--version"])
    except (FileNotFoundError, TimeoutError):
        return None
    text = version.stdout.strip()
    number = text if version.returncode == 0 and re.fullmatch(r"[0-9][0-9.]*", text) else None
    try:
        caps = run("libvirt-domcaps", ["virsh", *DOMCAPS])
    except (FileNotFoundError, TimeoutError) as err:
        return {"version": number, "hypervDomain": None, "detail": str(err)}
    said = (caps.stderr + caps.stdout).strip()
    first = next((line for line in said.splitlines() if line.strip()), "")
    if caps.returncode == 0 and re.search(r"<domain>\s*hyperv\s*</domain>", caps.stdout):
        return {"version": number, "hypervDomain": True, "detail": "domain capabilities: <domain>hyperv"}
    refused = [line for line in said.splitlines() if any(marker in line for marker in _HYPERV_REFUSED)]
    if refused:
        return {"version": number, "hypervDomain": False, "detail": refused[0].strip()[:300]}
    return {"version": number, "hypervDomain": None, "detail": (first or "no answer")[:300]}


def _memlock(limits: Callable[[], tuple[int, int]]) -> dict[str, int | None]:
    soft, hard = limits()

    def value(limit: int) -> int | None:
        return None if limit < 0 else limit  # RLIM_INFINITY reads as -1: unlimited

    return {"softBytes": value(soft), "hardBytes": value(hard)}


def _cgroup_version(fs: FileSystem) -> int | None:
    try:
        fs.mode("/sys/fs/cgroup/cgroup.controllers")
        return 2
    except OSError:
        pass
    try:
        return 1 if "memory" in fs.listdir("/sys/fs/cgroup") else None
    except OSError:
        return None


def _page_size(folder: str) -> str | None:
    """``hugepages-2048kB`` -> ``2Mi`` (the Kubernetes resource's spelling)."""
    match = re.fullmatch(r"hugepages-([0-9]+)kB", folder)
    if match is None:
        return None
    kib = int(match.group(1))
    for suffix, size in (("Gi", 1 << 20), ("Mi", 1 << 10)):
        if kib % size == 0:
            return f"{kib // size}{suffix}"
    return f"{kib}Ki"


def _hugepages(fs: FileSystem) -> dict[str, dict[str, int]] | None:
    base = "/sys/kernel/mm/hugepages"
    try:
        folders = fs.listdir(base)
    except OSError:
        return None
    pages = {}
    for folder in folders:
        size = _page_size(folder)
        if size is None:
            continue
        try:
            total = int(fs.read_text(f"{base}/{folder}/nr_hugepages").strip())
            free = int(fs.read_text(f"{base}/{folder}/free_hugepages").strip())
        except (OSError, ValueError):
            continue
        pages[size] = {"total": total, "free": free}
    return pages


def check_node(
    fs: FileSystem,
    run: CommandRunner,
    limits: Callable[[], tuple[int, int]],
) -> dict[str, Any]:
    """Every check; the answer is the request's ``node`` object (see the module docstring)."""
    return inspect_node(fs, run, limits)[0]


def inspect_node(
    fs: FileSystem,
    run: CommandRunner,
    limits: Callable[[], tuple[int, int]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``node`` object, and notes for people (where the L1VH answer came from)."""
    devices = {name: _device(fs, name) for name in ("mshv", "kvm")}
    try:
        modules_text: str | None = fs.read_text("/proc/modules")
    except OSError:
        modules_text = None
    partition, kernel_log = _kernel_log(run)
    node = {
        # The device file exists (openable or not): what these two always meant in a request.
        "mshvAvailable": devices["mshv"]["status"] in (PRESENT, DENIED),
        "kvmAvailable": devices["kvm"]["status"] in (PRESENT, DENIED),
        "devices": devices,
        "modules": {name: _module(fs, name, modules_text) for name in ("mshv_root", "kvm")},
        "l1vhPartition": partition,
        "qemu": _qemu(run),
        "libvirt": _libvirt(run),
        "memlock": _memlock(limits),
        "cgroupVersion": _cgroup_version(fs),
        "hugepages": _hugepages(fs),
    }
    return node, {"l1vhPartition": kernel_log}
