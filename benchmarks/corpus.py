"""Realistic VirtualMachineInstances, as virt-controller holds them after defaulting.

Deterministic for a given seed, so every benchmark run measures the same inputs.  The shapes mix
what clusters run: small and large guests, topologies, dedicated CPUs, GPUs/SR-IOV, TPM, probes,
passt, and the many fields the overhead model does not read (disks, firmware, networks…), which
the service still has to decode.
"""

from __future__ import annotations

import random
from typing import Any

MEMORY = ["512Mi", "1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "32Gi", "64Gi", "3G", "6000M"]


def realistic_vmi(rng: random.Random, index: int) -> dict[str, Any]:
    memory = rng.choice(MEMORY)
    cores = rng.choice([1, 1, 2, 2, 4, 8, 16])
    dedicated = rng.random() < 0.1
    guaranteed = dedicated or rng.random() < 0.15
    spec = _spec(index, memory, cores, dedicated, guaranteed, _devices(rng))
    if rng.random() < 0.1:
        spec["readinessProbe"] = {"exec": {"command": ["cat", "/tmp/healthy"]}, "initialDelaySeconds": 30}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": f"vm-{index}",
            "namespace": rng.choice(["default", "team-a", "team-b"]),
            "uid": f"0b6d5c7e-0d7a-4a6c-9d1e-{index:012d}",
            "labels": {"kubevirt.io/vm": f"vm-{index}", "app": rng.choice(["db", "web", "batch"])},
            "annotations": {"kubevirt.io/latest-observed-api-version": "v1"},
        },
        "spec": spec,
    }


def _devices(rng: random.Random) -> dict[str, Any]:
    """``domain.devices``: two disks, the pod network (masquerade, sometimes passt), sometimes
    SR-IOV, TPM, a GPU, no graphics."""
    interfaces: list[dict[str, Any]] = [{"name": "default", "masquerade": {}}]
    if rng.random() < 0.1:
        interfaces = [{"name": "default", "passtBinding": {}}]
    if rng.random() < 0.05:
        interfaces.append({"name": "sriov-net", "sriov": {}})
    devices: dict[str, Any] = {
        "disks": [
            {"name": "rootdisk", "disk": {"bus": "virtio"}},
            {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
        ],
        "interfaces": interfaces,
        "rng": {},
    }
    if rng.random() < 0.3:
        devices["autoattachGraphicsDevice"] = False
    if rng.random() < 0.1:
        devices["tpm"] = {"persistent": True}
    if rng.random() < 0.03:
        devices["gpus"] = [{"name": "gpu1", "deviceName": "nvidia.com/GA102GL_A10"}]
    return devices


def _spec(
    index: int, memory: str, cores: int, dedicated: bool, guaranteed: bool, devices: dict[str, Any]
) -> dict[str, Any]:
    """The VMI's spec around ``devices``: guaranteed QoS sets CPU requests and limits."""
    resources: dict[str, Any] = {"requests": {"memory": memory}}
    if guaranteed:
        resources = {
            "requests": {"memory": memory, "cpu": str(cores)},
            "limits": {"memory": memory, "cpu": str(cores)},
        }
    return {
        "architecture": "amd64",
        "domain": {
            "cpu": {
                "cores": cores,
                "sockets": 1,
                "threads": 1,
                "model": "host-model",
                "dedicatedCpuPlacement": dedicated,
            },
            "memory": {"guest": memory},
            "resources": resources,
            "devices": devices,
            "features": {"acpi": {"enabled": True}},
            "firmware": {"uuid": f"5d307ca9-b3ef-428c-8861-{index:012d}", "serial": f"serial-{index}"},
            "machine": {"type": "q35"},
        },
        "networks": [{"name": "default", "pod": {}}]
        + (
            [{"name": "sriov-net", "multus": {"networkName": "sriov"}}]
            if len(devices["interfaces"]) > 1
            else []
        ),
        "terminationGracePeriodSeconds": 180,
        "volumes": [
            {"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}},
            {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\npassword: fedora\n"}},
        ],
    }


def corpus(count: int, seed: int = 20261126) -> list[dict[str, Any]]:
    """``count`` overhead requests with realistic VMIs."""
    rng = random.Random(seed)
    return [{"vmi": realistic_vmi(rng, i)} for i in range(count)]
