"""The VirtualMachineInstance each sample creates, and the guest program that touches its memory.

The guest is any containerDisk image with cloud-init and ``/bin/sh`` (the default Fedora image
has python3 too). Cloud-init writes a small shell script and starts it: the script starts the
stressor on ``share`` of the guest's ``MemAvailable`` and then, every 2 s, writes one line to
the serial console::

    OVH-BENCH v1 state=touched memtotal_kib=980812 memfree_kib=52980 memfree_min_kib=52436 cpus=2

``state`` is ``touching`` until ``MemFree`` has been steady for three polls *and* at least half
of the intended bytes are in use, then ``touched``; ``failed`` if the stressor exits. KubeVirt
streams the serial console of a VMI with ``logSerialConsole`` to the ``guest-console-log``
container of the virt-launcher pod, so the benchmark reads these lines with a plain
``pods/log`` request. The memory balloon is left out (``autoattachMemBalloon: false``): without
it there is no free page reporting, so guest pages the host has backed stay resident, and
"guest RAM minus the lowest ``MemFree`` seen" is a lower bound of the guest RAM resident in the
pod (see docs/cluster-benchmark.md).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from benchmarks.cluster.config import Config, GuestSettings, PoolSettings, Shape

__all__ = [
    "MANAGED_BY",
    "MAX_USER_DATA",
    "REPORT_PREFIX",
    "RUN_LABEL",
    "run_hash",
    "sample_manifest",
    "stressor_command",
    "user_data",
    "vmi_manifest",
    "vmi_name",
]

MANAGED_BY: Final = "overhead-service-cluster-benchmark"
RUN_LABEL: Final = "overhead-service.io/run"
SAMPLE_LABEL: Final = "overhead-service.io/sample"
REPORT_PREFIX: Final = "OVH-BENCH v1"
# KubeVirt's VMI admission refuses inline cloudInitNoCloud.userData of 2048 bytes or more.
MAX_USER_DATA: Final = 2048
CONTAINER_DISK: Final = "containerdisk"
CLOUD_INIT_DISK: Final = "cloudinitdisk"

_STRESSORS: Final = {
    # Touches $n bytes one MiB at a time, then holds them.
    "python": (
        "python3 -c 'import mmap,signal,sys\n"
        'n=int(sys.argv[1]);m=mmap.mmap(-1,n);b=b"\\1"*1048576\n'
        "for i in range(n>>20):m.write(b)\n"
        "signal.pause()' $n"
    ),
    "stress-ng": "stress-ng --vm 1 --vm-bytes @PERCENT@% --vm-keep --timeout 0",
    "dd": (
        "mkdir -p /run/ovh && mount -t tmpfs -o size=$n ovh /run/ovh && "
        "dd if=/dev/zero of=/run/ovh/fill bs=1M count=$mib"
    ),
}

# POSIX sh. kb NAME prints /proc/meminfo's NAME in KiB. The stressor runs in a subshell that then
# sleeps, so a stressor that finishes (dd) keeps the subshell, and "failed" means it really failed.
_SCRIPT: Final = """#!/bin/sh
# overhead-service cluster benchmark: touch guest memory, report on the serial console
c=@CONSOLE@
kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
n=$(( $(kb MemAvailable) * @PERCENT@ / 100 * 1024 ))
mib=$(( n >> 20 ))
( @STRESSOR@ && exec sleep 2147483647 ) >/dev/null 2>&1 &
p=$!
low=$(kb MemFree); start=$low; prev=$low; calm=0; s=touching
while sleep 2; do
  f=$(kb MemFree)
  [ "$f" -lt "$low" ] && low=$f
  if [ $((prev - f)) -lt $((start / 200)) ]; then calm=$((calm + 1)); else calm=0; fi
  prev=$f
  kill -0 $p 2>/dev/null || s=failed
  [ $s = touching ] && [ $calm -ge 3 ] && [ $(((start - low) * 2048)) -ge $n ] && s=touched
  echo "@PREFIX@ state=$s memtotal_kib=$(kb MemTotal) memfree_kib=$f memfree_min_kib=$low cpus=$(nproc)" >>$c
done
"""


def run_hash(run_id: str) -> str:
    """Six hex digits naming the run in VMI names and labels (run ids can be long)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:6]


def vmi_name(run_id: str, shape: Shape, repetition: int) -> str:
    name = f"ovh-{run_hash(run_id)}-{shape.name}-r{repetition}"
    if len(name) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"VMI name {name!r} is not a DNS label")
    return name


def stressor_command(guest: GuestSettings) -> str:
    command = guest.command if guest.stressor == "command" else _STRESSORS[guest.stressor]
    return command.replace("@PERCENT@", str(guest.percent))


def user_data(guest: GuestSettings) -> str:
    """The cloud-config that installs and starts the guest script (under 2048 bytes)."""
    script = (
        _SCRIPT.replace("@CONSOLE@", guest.console_device)
        .replace("@PERCENT@", str(guest.percent))
        .replace("@PREFIX@", REPORT_PREFIX)
        .replace("@STRESSOR@", stressor_command(guest))
    )
    body = "".join(f"      {line}\n" if line else "\n" for line in script.splitlines())
    lines = [
        "#cloud-config",
        "write_files:",
        "  - path: /usr/local/bin/ovh-bench",
        '    permissions: "0755"',
        "    content: |",
    ]
    text = "\n".join(lines) + "\n" + body
    if guest.install_packages:
        text += "packages: [stress-ng]\n"
    text += 'runcmd:\n  - [sh, -c, "nohup /usr/local/bin/ovh-bench >/dev/null 2>&1 &"]\n'
    if len(text.encode()) >= MAX_USER_DATA:
        raise ValueError(
            f"cloud-init user data is {len(text.encode())} bytes; KubeVirt accepts less than {MAX_USER_DATA}"
        )
    return text


def sample_manifest(config: Config, run_id: str, shape: Shape, repetition: int, node: str) -> dict[str, Any]:
    """The VMI of repetition ``repetition`` of ``shape`` in a run of ``config``, pinned to ``node``."""
    return vmi_manifest(
        name=vmi_name(run_id, shape, repetition),
        namespace=config.namespace,
        run_id=run_id,
        sample=f"{shape.name}-r{repetition}",
        shape=shape,
        guest=config.guest,
        pool=config.pool,
        node=node,
    )


def vmi_manifest(
    *,
    name: str,
    namespace: str,
    run_id: str,
    sample: str,
    shape: Shape,
    guest: GuestSettings,
    pool: PoolSettings,
    node: str,
) -> dict[str, Any]:
    """The VMI for one sample of ``shape``, pinned to ``node``."""
    devices, networks = _devices(shape, guest)
    spec: dict[str, Any] = {
        "domain": _domain(shape, devices),
        "terminationGracePeriodSeconds": 0,
        "evictionStrategy": "None",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                    ]
                }
            }
        },
        "networks": networks,
        "volumes": [
            {"name": CONTAINER_DISK, "containerDisk": {"image": guest.image}},
            {"name": CLOUD_INIT_DISK, "cloudInitNoCloud": {"userData": user_data(guest)}},
        ],
    }
    if pool.node_selector:
        spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        spec["tolerations"] = [dict(t) for t in pool.tolerations]
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                RUN_LABEL: run_hash(run_id),
                SAMPLE_LABEL: sample,
            },
        },
        "spec": spec,
    }


def _devices(shape: Shape, guest: GuestSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``domain.devices`` and ``spec.networks`` of the shape's device set."""
    disks: list[dict[str, Any]] = [
        {"name": CONTAINER_DISK, "disk": {"bus": "virtio"}},
        {"name": CLOUD_INIT_DISK, "disk": {"bus": "virtio"}},
    ]
    devices: dict[str, Any] = {
        "autoattachGraphicsDevice": shape.graphics,
        "autoattachMemBalloon": False,
        "disks": disks,
    }
    if guest.touch_detection == "console":
        devices["logSerialConsole"] = True
    networks: list[dict[str, Any]] = []
    if shape.device_set == "kubevirt":
        devices["interfaces"] = [{"name": "default", "masquerade": {}}]
        devices["rng"] = {}
        networks = [{"name": "default", "pod": {}}]
    else:
        devices["autoattachPodInterface"] = False
        devices["interfaces"] = []
    return devices, networks


def _domain(shape: Shape, devices: dict[str, Any]) -> dict[str, Any]:
    """``spec.domain``: the shape's vCPUs, memory and IOThreads, and ``devices``."""
    domain: dict[str, Any] = {
        "cpu": {"cores": shape.vcpus, "sockets": 1, "threads": 1},
        "resources": {"requests": {"memory": shape.memory}},
        "devices": devices,
    }
    # As overhead_service.calibration.sample_vmi spells IOThreads: 1 = the shared thread, n > 1 = a pool of n.
    if shape.io_threads == 1:
        domain["ioThreadsPolicy"] = "shared"
    elif shape.io_threads > 1:
        domain["ioThreadsPolicy"] = "supplementalPool"
        domain["ioThreads"] = {"supplementalPoolThreadCount": shape.io_threads}
    return domain
