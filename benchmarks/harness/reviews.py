"""AdmissionReviews of VMIs as the API server sends them to the admission webhook: after
KubeVirt's own mutating webhook has defaulted them (``memory.guest`` from the request, a CPU
topology, the architecture, phase ``Pending`` and KubeVirt's finalizer; see
``pkg/defaults/defaults.go`` and the VMI mutator at KubeVirt v1.9.0).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

__all__ = ["VMI_KIND", "admission_review", "defaulted_vmi"]

VMI_KIND = {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstance"}


def defaulted_vmi(
    resources: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    cpu: dict[str, Any] | None = None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    devices: dict[str, Any] | None = None,
    architecture: str = "amd64",
    name: str = "vm-1",
    namespace: str = "default",
) -> dict[str, Any]:
    """A VMI after KubeVirt's defaults: ``memory.guest`` set as ``setGuestMemory`` would (the request,
    else the limit, else the hugepage size) unless given; 1 socket x 1 core x 1 thread unless
    ``cpu`` says otherwise."""
    resources = copy.deepcopy(resources if resources is not None else {"requests": {"memory": "1Gi"}})
    memory = copy.deepcopy(memory or {})
    if "guest" not in memory:
        for source in (resources.get("requests", {}), resources.get("limits", {})):
            if source.get("memory") not in (None, "0"):
                memory["guest"] = source["memory"]
                break
        else:
            if "hugepages" in memory:
                memory["guest"] = memory["hugepages"]["pageSize"]
    topology = {"cores": 1, "sockets": 1, "threads": 1, "model": "host-model"}
    topology.update(cpu or {})
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid4()),
        "finalizers": ["kubevirt.io/foregroundDeleteVirtualMachine"],
        "labels": dict(labels or {}),
    }
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": {
            "architecture": architecture,
            "domain": {
                "cpu": topology,
                "devices": devices
                if devices is not None
                else {"interfaces": [{"name": "default", "masquerade": {}}]},
                "firmware": {"uuid": str(uuid.uuid4())},
                "machine": {"type": "q35"},
                "memory": memory,
                "resources": resources,
            },
            "networks": [{"name": "default", "pod": {}}],
        },
        "status": {"phase": "Pending", "guestOSInfo": {}, "qosClass": "Burstable"},
    }


def admission_review(
    vmi: Any, *, uid: str | None = None, operation: str = "CREATE", kind: dict[str, str] | None = None
) -> dict[str, Any]:
    """An ``admission.k8s.io/v1`` AdmissionReview request for ``vmi``."""
    metadata = vmi.get("metadata") if isinstance(vmi, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": kind or dict(VMI_KIND),
            "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachineinstances"},
            "requestKind": kind or dict(VMI_KIND),
            "requestResource": {
                "group": "kubevirt.io",
                "version": "v1",
                "resource": "virtualmachineinstances",
            },
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kubevirt:kubevirt-controller"},
            "object": vmi,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
