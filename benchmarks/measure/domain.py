"""A libvirt domain shaped like the one KubeVirt's converter writes for a VMI of a measured shape,
with the touch guest as its direct-boot kernel.

What the converter of KubeVirt v1.9.0 (``pkg/virt-launcher/virtwrap/converter``) puts in the domain
of an amd64 VMI with default settings, and what this module writes:

* ``<memory unit='b'>``, ``<vcpu placement='static'>`` and ``<cpu><topology sockets=N cores=1
  threads=1/>``: the defaulting webhook puts the vCPUs in sockets (``pkg/defaults``
  ``SetDefaultGuestCPUTopology``); CPU mode ``host-model`` (``v1.DefaultCPUModel``), here with the
  VMI feature ``arch-capabilities`` disabled, because nested PVM refuses the IA32_ARCH_CAPABILITIES
  MSR (0x10a) that host-model adds.
* ``<os>``: machine ``q35``, ``<smbios mode='sysinfo'/>`` and a ``<sysinfo>`` with the firmware
  UUID and KubeVirt's default SMBIOS strings (``compute/sysinfo.go``, ``virt-config``); the kernel
  and its command line as ``spec.domain.firmware.kernelBoot`` sets them.
* ``<features>``: ``<acpi/>`` and ``<vmport state='off'/>``: the API defaults give every VMI an
  empty ``spec.domain.features`` (``staging/src/kubevirt.io/api/core/v1/defaults.go``), in which
  ACPI is on (``compute/hypervisor_features.go``); no ``<clock>`` (none asked for).
* devices: the guest-agent channel (always, ``compute/channels.go``); the USB controller with model
  ``none``; the serial console (``compute/console.go``: a unix socket in bind mode, its log file
  written through virtlogd, and a pty console); ``virtio-serial`` controller; ``vga`` video (16 MiB
  VRAM, one head) and VNC on a unix socket when graphics are attached (``compute/graphics.go``);
  ``<iothreads>`` (``compute/iothreads.go``); ``pcie-root-port`` controllers for hotplug
  (``virtwrap/manager.go`` ``allocateHotplugPorts``: 8 ports in all up to 2 GiB of RAM, 16 above,
  at least 3 or 6 of them free, and up to 4 interfaces' worth of placeholders).
* device set ``minimal``: a VMI with ``autoattachMemBalloon: false`` (``<memballoon model='none'/>``),
  ``disableHotplug: true`` (no SCSI controller), no interface and no disk.
* device set ``kubevirt`` (a VMI with default device settings and one disk and one NIC): the
  ``virtio-scsi`` controller for hotplug; the memory balloon with statistics every 10 s and free
  page reporting (``compute/balloon.go``, ``virt-config`` ``DefaultMemBalloonStatsPeriod``); one
  virtio disk (qcow2, or raw without qemu-img; ``cache='none'`` where the file system takes
  O_DIRECT, else ``writethrough``; ``error_policy='stop'``, ``discard='unmap'``, on IOThread 1 when
  there are IOThreads); one virtio NIC and ``virtio-rng``, as the bare-QEMU device set has. All
  virtio devices are ``virtio-non-transitional``.

Two differences remain: the NIC's backend is QEMU's user-mode network (``<interface type='user'>``)
where KubeVirt plugs a tap device that virt-handler created in the pod's network namespace (the
virtio-net device is the same); and a VMI started by a VirtualMachine under the default
``LiveUpdate`` rollout strategy also gets CPU and memory hotplug headroom (``maxSockets``,
``maxGuest``), which this domain leaves out.
"""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.measure.config import Point

__all__ = ["DomainFiles", "domain_name", "domain_xml", "hotplug_root_ports", "serial_log", "xml_digest"]

MIB: Final = 1024 * 1024
VIRTIO_MODEL: Final = "virtio-non-transitional"
BALLOON_STATS_PERIOD: Final = 10
VGA_VRAM_KIB: Final = 16384
SMBIOS: Final = (
    ("manufacturer", "KubeVirt"),
    ("family", "KubeVirt"),
    ("product", "None"),
    ("sku", ""),
    ("version", ""),
)
# virtwrap/manager.go: hotplug ports in all (and at least free) up to 2 GiB of RAM, and above.
HOTPLUG_PORTS: Final = ((8, 3), (16, 6))
HOTPLUG_LARGE_MEMORY: Final = 2 * 1024 * MIB
PLACEHOLDER_INTERFACES: Final = 4
NAMESPACE: Final = "default"


@dataclass(frozen=True)
class DomainFiles:
    """The files a domain refers to: its kernel, its own directory, its disk (kubevirt set)."""

    kernel: Path
    directory: Path
    disk: Path | None = None
    disk_cache: str = "none"


def domain_name(index: int) -> str:
    """``<namespace>_<name>``, as KubeVirt names domains (``VMINamespaceKeyFunc``)."""
    return f"{NAMESPACE}_vmi{index}"


def hotplug_root_ports(point: Point, pci_devices: int, interfaces: int) -> int:
    """Empty ``pcie-root-port`` controllers KubeVirt leaves for hotplug: placeholders for up to 4
    interfaces when there is one, then extra ports up to its total (with a minimum free)."""
    total, min_free = HOTPLUG_PORTS[point.memory_mib * MIB > HOTPLUG_LARGE_MEMORY]
    placeholders = max(0, PLACEHOLDER_INTERFACES - interfaces) if interfaces else 0
    free = max(total - pci_devices, min_free)
    return placeholders + max(0, free - placeholders)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def domain_xml(point: Point, index: int, files: DomainFiles, virt_type: str = "kvm") -> str:
    """The domain XML for the ``index``-th domain of ``point`` (``virt_type`` ``qemu``: TCG, as
    KubeVirt's software emulation sets it)."""
    kubevirt = point.device_set == "kubevirt"
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"overhead-measure/{point.name}/{index}"))
    domain = ET.Element("domain", {"type": virt_type})
    _sub(domain, "name", domain_name(index))
    _sub(domain, "uuid", uid)
    _sub(domain, "memory", str(point.memory_mib * MIB), unit="b")
    _os(domain, point, files)
    sysinfo = _sub(_sub(domain, "sysinfo", type="smbios"), "system")
    _sub(sysinfo, "entry", uid, name="uuid")
    for name, value in SMBIOS:
        _sub(sysinfo, "entry", value, name=name)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "vmport", state="off")
    cpu = _sub(domain, "cpu", mode="host-model")
    _sub(cpu, "topology", sockets=str(point.vcpus), cores="1", threads="1")
    _sub(cpu, "feature", policy="disable", name="arch-capabilities")
    _sub(domain, "vcpu", str(point.vcpus), placement="static")
    if point.io_threads:
        _sub(domain, "iothreads", str(point.io_threads))
    _devices(_sub(domain, "devices"), point, files, kubevirt)
    metadata = _sub(_sub(domain, "metadata"), "kubevirt", xmlns="http://kubevirt.io")
    _sub(metadata, "uid", uid)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _os(domain: ET.Element, point: Point, files: DomainFiles) -> None:
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="q35")
    _sub(os_element, "kernel", str(files.kernel))
    _sub(os_element, "cmdline", point.append)
    _sub(os_element, "smbios", mode="sysinfo")


def _devices(devices: ET.Element, point: Point, files: DomainFiles, kubevirt: bool) -> None:
    if kubevirt:
        interface = _sub(devices, "interface", type="user")
        _sub(interface, "model", type=VIRTIO_MODEL)
        _sub(interface, "alias", name="ua-default")
        _sub(interface, "rom", enabled="no")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(devices, "controller", type="usb", index="0", model="none")
    if kubevirt:
        _sub(devices, "controller", type="scsi", index="0", model=VIRTIO_MODEL)
    _sub(devices, "controller", type="virtio-serial", index="0", model=VIRTIO_MODEL)
    if point.graphics:
        video = _sub(devices, "video")
        _sub(video, "model", type="vga", heads="1", vram=str(VGA_VRAM_KIB))
        graphics = _sub(devices, "graphics", type="vnc")
        _sub(graphics, "listen", type="socket", socket=str(files.directory / "virt-vnc"))
    if kubevirt:
        balloon = _sub(devices, "memballoon", model=VIRTIO_MODEL, freePageReporting="on")
        _sub(balloon, "stats", period=str(BALLOON_STATS_PERIOD))
        _disk(devices, point, files)
        rng = _sub(devices, "rng", model=VIRTIO_MODEL)
        _sub(rng, "backend", "/dev/urandom", model="random")
    else:
        _sub(devices, "memballoon", model="none")
    serial = _sub(devices, "serial", type="unix")
    _sub(serial, "target", port="0")
    _sub(serial, "source", mode="bind", path=str(files.directory / "virt-serial0"))
    _sub(serial, "log", file=str(serial_log(files)), append="on")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    # KubeVirt's count (CountPCIDevices) includes the USB controller and the balloon even with
    # model none: 3 here, 7 with the kubevirt set. libvirt puts each PCIe device on a root port of
    # its own (virtio-serial; with the kubevirt set also NIC, SCSI, disk, balloon and RNG); the
    # other ports stay empty for hotplug.
    counted, on_ports, interfaces = (7, 6, 1) if kubevirt else (3, 1, 0)
    ports = on_ports + hotplug_root_ports(point, counted, interfaces)
    for port in range(1, ports + 1):
        _sub(devices, "controller", type="pci", index=str(port), model="pcie-root-port")


def _disk(devices: ET.Element, point: Point, files: DomainFiles) -> None:
    if files.disk is None:
        raise ValueError("the kubevirt device set needs a disk")
    disk = _sub(devices, "disk", type="file", device="disk", model=VIRTIO_MODEL)
    _sub(disk, "source", file=str(files.disk))
    _sub(disk, "target", bus="virtio", dev="vda")
    disk_format = "qcow2" if files.disk.suffix == ".qcow2" else "raw"
    driver = {"name": "qemu", "type": disk_format, "cache": files.disk_cache, "error_policy": "stop"}
    driver["discard"] = "unmap"
    if point.io_threads:
        driver["iothread"] = "1"
    _sub(disk, "driver", **driver)
    _sub(disk, "alias", name="ua-containerdisk")


def serial_log(files: DomainFiles) -> Path:
    """Where virtlogd writes the serial console (``virt-serial0-log``, as KubeVirt names it)."""
    return files.directory / "virt-serial0-log"


def xml_digest(xml: str, work_dir: Path) -> str:
    """SHA-256 of the domain XML with this run's work directory replaced by ``@WORKDIR@``: the same
    shape gives the same digest in every run."""
    return hashlib.sha256(xml.replace(str(work_dir), "@WORKDIR@").encode()).hexdigest()
