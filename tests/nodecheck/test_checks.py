"""``node-check``'s checks against fakes of the device files, /proc, /sys and command outputs: every
branch (a device present, missing, refused, not a device, failing; odd QEMU, virsh and kernel-log
outputs), and the node object each answer is, as the service reads it."""

from __future__ import annotations

import errno
import stat
from collections.abc import Sequence
from typing import Any

import pytest

from overhead_service.model.hypervisor import NodeFacts, read_node
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.nodecheck import Completed, check_node, format_table, inspect_node

ACCEL_HELP = "Accelerators supported in QEMU binary:\ntcg\nmshv\nkvm\n"
VERSION = "QEMU emulator version 10.1.0 (qemu-kvm-10.1.0-20.el9)\nCopyright (c) 2003-2025 Fabrice Bellard\n"
DOMCAPS_OK = (
    "<domainCapabilities>\n  <path>/usr/libexec/qemu-kvm</path>\n"
    "  <domain>hyperv</domain>\n</domainCapabilities>\n"
)
L1VH_LOG = (
    "[    0.000000] Hyper-V: privilege flags low 0x2e7f\n[    0.000000] Hyper-V: running as L1VH partition\n"
)


def oserror(code: int) -> OSError:
    return OSError(code, errno.errorcode[code])


class FakeFS:
    """Paths to what the file operations find there; anything else does not exist."""

    def __init__(self) -> None:
        self.devices: dict[str, OSError | None] = {}  # character devices: the open error, if any
        self.files: dict[str, str] = {}
        self.dirs: dict[str, list[str]] = {}
        self.errors: dict[str, OSError] = {}  # stat, read and listdir fail with this

    def mode(self, path: str) -> int:
        if path in self.errors:
            raise self.errors[path]
        if path in self.devices:
            return stat.S_IFCHR | 0o600
        if path in self.dirs:
            return stat.S_IFDIR | 0o755
        if path in self.files:
            return stat.S_IFREG | 0o644
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def open_rw(self, path: str) -> None:
        self.mode(path)
        error = self.devices.get(path)
        if error is not None:
            raise error

    def read_text(self, path: str) -> str:
        if path in self.errors:
            raise self.errors[path]
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return self.files[path]

    def listdir(self, path: str) -> list[str]:
        if path in self.errors:
            raise self.errors[path]
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return self.dirs[path]


Answer = Completed | Exception


class FakeRunner:
    """Answers by (probe, program); an unknown program is missing. Records what was run."""

    def __init__(self, answers: dict[tuple[str, str], Answer] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, probe: str, argv: Sequence[str]) -> Completed:
        self.calls.append((probe, tuple(argv)))
        answer = self.answers.get((probe, argv[0]))
        if answer is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
        if isinstance(answer, Exception):
            raise answer
        return Completed(tuple(argv), answer.returncode, answer.stdout, answer.stderr)


def done(stdout: str = "", returncode: int = 0, stderr: str = "") -> Completed:
    return Completed((), returncode, stdout, stderr)


def limits(soft: int = 8 << 20, hard: int = 8 << 20) -> Any:
    return lambda: (soft, hard)


def l1vh_host() -> tuple[FakeFS, FakeRunner]:
    """An L1VH node as reported: /dev/mshv and /dev/kvm, mshv_root loaded, QEMU and libvirt with mshv."""
    fs = FakeFS()
    fs.devices["/dev/mshv"] = None
    fs.devices["/dev/kvm"] = None
    fs.files["/proc/modules"] = "mshv_root 118784 0 - Live 0x0\nkvm 1363968 1 kvm_intel, Live 0x0\n"
    fs.files["/sys/fs/cgroup/cgroup.controllers"] = "cpuset cpu io memory pids\n"
    fs.dirs["/sys/kernel/mm/hugepages"] = ["hugepages-1048576kB", "hugepages-2048kB"]
    for folder, total, free in (("hugepages-2048kB", 512, 500), ("hugepages-1048576kB", 0, 0)):
        fs.files[f"/sys/kernel/mm/hugepages/{folder}/nr_hugepages"] = f"{total}\n"
        fs.files[f"/sys/kernel/mm/hugepages/{folder}/free_hugepages"] = f"{free}\n"
    run = FakeRunner(
        {
            ("kernel-log", "dmesg"): done(L1VH_LOG),
            ("qemu-version", "/usr/libexec/qemu-kvm"): done(VERSION),
            ("qemu-accel", "/usr/libexec/qemu-kvm"): done(ACCEL_HELP),
            ("libvirt-version", "virsh"): done("11.10.0\n"),
            ("libvirt-domcaps", "virsh"): done(DOMCAPS_OK),
        }
    )
    return fs, run


def test_an_l1vh_host_whole_answer() -> None:
    fs, run = l1vh_host()
    node = check_node(fs, run, limits(-1, -1))
    assert node == {
        "mshvAvailable": True,
        "kvmAvailable": True,
        "devices": {
            "mshv": {"path": "/dev/mshv", "status": "present", "remediation": None},
            "kvm": {"path": "/dev/kvm", "status": "present", "remediation": None},
        },
        "modules": {"mshv_root": True, "kvm": True},
        "l1vhPartition": True,
        "qemu": {
            "binary": "/usr/libexec/qemu-kvm",  # the first candidate, qemu-system-x86_64, is missing
            "version": "10.1.0",
            "accelerators": ["tcg", "mshv", "kvm"],
            "mshvAccelerator": True,
        },
        "libvirt": {
            "version": "11.10.0",
            "hypervDomain": True,
            "detail": "domain capabilities: <domain>hyperv",
        },
        "memlock": {"softBytes": None, "hardBytes": None},  # RLIM_INFINITY
        "cgroupVersion": 2,
        "hugepages": {"1Gi": {"total": 0, "free": 0}, "2Mi": {"total": 512, "free": 500}},
    }
    # virsh is asked exactly what KubeVirt's node-labeller asks
    assert ("libvirt-domcaps", ("virsh", "domcapabilities", "--machine", "q35", "--arch", "x86_64",
                                "--virttype", "hyperv")) in run.calls  # fmt: skip


def test_the_node_object_is_what_requests_accept() -> None:
    fs, run = l1vh_host()
    node = check_node(fs, run, limits())
    facts = read_node(node, use_emulation=False)
    assert facts == NodeFacts(mshv_available=True, kvm_available=True)
    assert (facts.device_status, facts.qemu_mshv_accelerator, facts.libvirt_hyperv_domain) == (
        {"mshv": "present", "kvm": "present"},
        True,
        True,
    )
    assert facts.hugepages == {"1Gi": (0, 0), "2Mi": (512, 500)} and facts.memlock_soft_bytes == 8 << 20
    service = OverheadService(TableRegistry.builtin())
    l1vh = {"developerConfiguration": {"featureGates": ["HyperVL1VH"]}}
    answer = service.compute({"vmi": {"spec": {}}, "node": node, "kubevirtConfiguration": l1vh})
    assert answer["hypervisor"]["name"] == "mshv"
    del fs.devices["/dev/mshv"]
    answer = service.compute(
        {"vmi": {"spec": {}}, "node": check_node(fs, run, limits()), "kubevirtConfiguration": l1vh}
    )
    assert answer["hypervisor"]["reason"] == "mshv-device-unavailable"


# --- devices ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "status", "available", "remediation"),
    [
        (None, "present", True, None),
        ("missing", "missing", False, "modprobe mshv_root"),
        (oserror(errno.EACCES), "permission-denied", True, "run the check as root"),
        (oserror(errno.EPERM), "permission-denied", True, "device cgroup"),  # a container's device cgroup
        (oserror(errno.ENXIO), "error", False, "its driver does not answer"),
        ("file", "not-a-device", False, "not a character device"),
        ("stat-denied", "permission-denied", True, "run the check as root"),
        ("stat-error", "error", False, "stat /dev/mshv"),
    ],
)
def test_the_mshv_device(setup: Any, status: str, available: bool, remediation: str | None) -> None:
    fs = FakeFS()
    if setup == "file":
        fs.files["/dev/mshv"] = ""
    elif setup == "stat-denied":
        fs.errors["/dev/mshv"] = PermissionError(errno.EACCES, "Permission denied")
    elif setup == "stat-error":
        fs.errors["/dev/mshv"] = oserror(errno.EIO)
    elif setup != "missing":
        fs.devices["/dev/mshv"] = setup
    node = check_node(fs, FakeRunner(), limits())
    device = node["devices"]["mshv"]
    assert (device["status"], node["mshvAvailable"]) == (status, available)
    if remediation is None:
        assert device["remediation"] is None
    else:
        assert remediation in device["remediation"]


def test_a_registered_driver_without_its_node_file_gets_the_mknod_remediation() -> None:
    fs = FakeFS()
    fs.files["/proc/misc"] = "232 kvm\n 58 mshv\n183 hw_random\n"
    node = check_node(fs, FakeRunner(), limits())
    assert node["devices"]["mshv"]["status"] == "missing" and not node["mshvAvailable"]
    assert "mknod /dev/mshv c 10 58" in node["devices"]["mshv"]["remediation"]
    assert "mknod /dev/kvm c 10 232" in node["devices"]["kvm"]["remediation"]


def test_kvm_remediations_differ_by_result() -> None:
    fs = FakeFS()
    missing = check_node(fs, FakeRunner(), limits())["devices"]["kvm"]["remediation"]
    fs.devices["/dev/kvm"] = oserror(errno.EACCES)
    denied = check_node(fs, FakeRunner(), limits())["devices"]["kvm"]["remediation"]
    assert "kvm_intel or kvm_amd" in missing and "kvm group" in denied


# --- modules, kernel log ---------------------------------------------------------------------------


def test_modules_from_proc_modules_or_sys_module() -> None:
    fs = FakeFS()
    fs.files["/proc/modules"] = "kvm_intel 1 0 - Live 0x0\nmshv_rootx 1 0 - Live 0x0\n"  # no exact names
    fs.dirs["/sys/module/kvm"] = []  # built in: no /proc/modules line, but /sys/module/kvm
    assert check_node(fs, FakeRunner(), limits())["modules"] == {"mshv_root": False, "kvm": True}
    del fs.files["/proc/modules"]  # a kernel without module support has no /proc/modules at all
    fs.files["/sys/module/mshv_root"] = ""  # not a directory: not a module
    assert check_node(fs, FakeRunner(), limits())["modules"] == {"mshv_root": False, "kvm": True}


ROOT_LOG = "[    0.0] Hyper-V: running as root partition\n"


@pytest.mark.parametrize(
    ("answers", "expected", "note"),
    [
        ({("kernel-log", "dmesg"): done(L1VH_LOG)}, True, "dmesg: Hyper-V: running as L1VH partition"),
        ({("kernel-log", "dmesg"): done(ROOT_LOG)}, False, "root partition"),
        ({("kernel-log", "dmesg"): done("[0.0] Linux version 6.18\n")}, False, "no Hyper-V partition line"),
        # dmesg_restrict without CAP_SYSLOG, then journalctl
        (
            {
                ("kernel-log", "dmesg"): done(
                    "", 1, "dmesg: read kernel buffer failed: Operation not permitted\n"
                ),
                ("kernel-log", "journalctl"): done(L1VH_LOG),
            },
            True,
            "journalctl",
        ),
        (
            {
                ("kernel-log", "dmesg"): done(
                    "", 1, "dmesg: read kernel buffer failed: Operation not permitted\n"
                )
            },
            None,
            "Operation not permitted",
        ),
        ({("kernel-log", "dmesg"): TimeoutError("dmesg did not finish")}, None, "did not finish"),
        ({("kernel-log", "dmesg"): done("")}, None, "no output"),  # an empty buffer proves nothing
    ],
)
def test_the_l1vh_partition_from_the_kernel_log(
    answers: dict[tuple[str, str], Answer], expected: bool | None, note: str
) -> None:
    node, notes = inspect_node(FakeFS(), FakeRunner(answers), limits())
    assert node["l1vhPartition"] is expected
    assert note in notes["l1vhPartition"]


# --- QEMU and libvirt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "accel", "expected"),
    [
        (done(VERSION), done(ACCEL_HELP), ("10.1.0", ["tcg", "mshv", "kvm"], True)),
        (
            done("QEMU emulator version 7.2.22 (Debian)\n"),
            done("Accelerators supported in QEMU binary:\ntcg\nkvm\n"),
            ("7.2.22", ["tcg", "kvm"], False),
        ),  # fmt: skip
        (
            done("qemu 8.x, a wrapper\n"),
            done(ACCEL_HELP),
            (None, ["tcg", "mshv", "kvm"], True),
        ),  # odd version
        (done(VERSION), done("qemu: -accel help: invalid option\n", 1), ("10.1.0", None, None)),
        (done(VERSION), done("tcg\nkvm\n"), ("10.1.0", None, None)),  # no header: not trusted
        (done(VERSION), TimeoutError("hung"), ("10.1.0", None, None)),
        (done(VERSION), done("Accelerators supported in QEMU binary:\n"), ("10.1.0", [], False)),
    ],
)
def test_qemu(version: Answer, accel: Answer, expected: tuple[Any, ...]) -> None:
    run = FakeRunner(
        {("qemu-version", "qemu-system-x86_64"): version, ("qemu-accel", "qemu-system-x86_64"): accel}
    )
    qemu = check_node(FakeFS(), run, limits())["qemu"]
    assert qemu["binary"] == "qemu-system-x86_64"
    assert (qemu["version"], qemu["accelerators"], qemu["mshvAccelerator"]) == expected


def test_no_qemu_anywhere() -> None:
    run = FakeRunner({("qemu-version", "qemu-kvm"): TimeoutError("hung")})
    assert check_node(FakeFS(), run, limits())["qemu"] is None
    tried = [argv[0] for probe, argv in run.calls if probe == "qemu-version"]
    assert tried == ["qemu-system-x86_64", "/usr/libexec/qemu-kvm", "qemu-kvm", "qemu-system-aarch64"]


# What virsh says (libvirt's virQEMUCapsCacheLookupDefault and virQEMUDriverGetDomainCapabilities).
FAILED = "error: failed to get emulator capabilities\n"
NO_KVM = (
    FAILED
    + "error: invalid argument: the accel 'tcg' is not supported by '/usr/libexec/qemu-kvm' on this host\n"
)
KVM_ONLY = (
    FAILED + "error: invalid argument: Emulator '/usr/libexec/qemu-kvm' does not support virt type 'hyperv'\n"
)
NO_DAEMON = (
    "error: failed to connect to the hypervisor\n"
    "error: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory\n"
)


@pytest.mark.parametrize(
    ("version", "caps", "expected"),
    [
        (done("11.10.0\n"), done(DOMCAPS_OK), ("11.10.0", True, "<domain>hyperv")),
        (done("11.10.0\n"), done("", 1, KVM_ONLY), ("11.10.0", False, "does not support virt type 'hyperv'")),
        (done("11.10.0\n"), done("", 1, NO_KVM), ("11.10.0", False, "accel 'tcg' is not supported")),
        (done("9.0.0\n"), done("", 1, NO_DAEMON), ("9.0.0", None, "failed to connect")),
        (
            done("9.0.0\n"),
            done("<domainCapabilities><domain>kvm</domain></domainCapabilities>"),
            ("9.0.0", None, ""),
        ),
        (
            done("libvirt says hello\n"),
            done("", 1, NO_DAEMON),
            (None, None, "failed to connect"),
        ),  # odd version
        (done("9.0.0\n"), TimeoutError("virsh did not finish"), ("9.0.0", None, "did not finish")),
    ],
)
def test_libvirt(version: Answer, caps: Answer, expected: tuple[Any, ...]) -> None:
    run = FakeRunner({("libvirt-version", "virsh"): version, ("libvirt-domcaps", "virsh"): caps})
    libvirt = check_node(FakeFS(), run, limits())["libvirt"]
    assert (libvirt["version"], libvirt["hypervDomain"]) == expected[:2]
    assert expected[2] in libvirt["detail"]


def test_no_virsh() -> None:
    assert check_node(FakeFS(), FakeRunner(), limits())["libvirt"] is None


# --- limits, cgroup, hugepages ---------------------------------------------------------------------


def test_memlock_cgroup_and_hugepages_when_little_is_readable() -> None:
    fs = FakeFS()
    node = check_node(fs, FakeRunner(), limits(65536, -1))
    assert node["memlock"] == {"softBytes": 65536, "hardBytes": None}
    assert node["cgroupVersion"] is None and node["hugepages"] is None
    fs.dirs["/sys/fs/cgroup"] = ["blkio", "cpu", "memory", "unified"]  # v1 (hybrid)
    fs.dirs["/sys/kernel/mm/hugepages"] = [
        "hugepages-64kB",
        "hugepages-2048kB",
        "README",
        "hugepages-32768kB",
    ]
    fs.files["/sys/kernel/mm/hugepages/hugepages-64kB/nr_hugepages"] = "4\n"
    fs.files["/sys/kernel/mm/hugepages/hugepages-64kB/free_hugepages"] = "3\n"
    fs.files["/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"] = "garbage\n"  # skipped
    fs.files["/sys/kernel/mm/hugepages/hugepages-32768kB/nr_hugepages"] = "1\n"
    fs.files["/sys/kernel/mm/hugepages/hugepages-32768kB/free_hugepages"] = "1\n"
    node = check_node(fs, FakeRunner(), limits())
    assert node["cgroupVersion"] == 1
    assert node["hugepages"] == {"64Ki": {"total": 4, "free": 3}, "32Mi": {"total": 1, "free": 1}}
    fs.errors["/sys/fs/cgroup"] = oserror(errno.EACCES)
    assert check_node(fs, FakeRunner(), limits())["cgroupVersion"] is None


# --- the table -------------------------------------------------------------------------------------


def test_the_table_says_what_to_fix() -> None:
    fs = FakeFS()
    fs.devices["/dev/kvm"] = oserror(errno.EACCES)
    node, notes = inspect_node(fs, FakeRunner({("kernel-log", "dmesg"): done(ROOT_LOG)}), limits())
    table = format_table(node, notes)
    lines = table.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert any(
        line.startswith("/dev/mshv") and "missing" in line and "modprobe mshv_root" in line for line in lines
    )
    assert any(line.startswith("/dev/kvm") and "permission-denied" in line for line in lines)
    assert any(
        line.startswith("L1VH partition") and " no " in line and "root partition" in line for line in lines
    )
    assert any(line.startswith("QEMU") and "not found" in line for line in lines)
    assert "8388608 bytes (8 MiB)" in table
    assert lines[-1].split()[:4] == ["=>", "request", "node", "mshvAvailable=false"]
    assert "kvmAvailable=true" in lines[-1]


def test_the_table_of_an_l1vh_host() -> None:
    fs, run = l1vh_host()
    table = format_table(*inspect_node(fs, run, limits(-1, -1)))
    rows = {line[:24].strip(): line[24:].split() for line in table.splitlines()}
    assert rows["QEMU mshv accelerator"] == ["yes"]
    assert rows["libvirt type='hyperv'"][0] == "yes"
    assert rows["memlock (this process)"][:3] == ["unlimited", "hard", "unlimited"]
    assert rows["L1VH partition"][0] == "yes"
    assert "2Mi: 500 free of 512" in table
