"""A sample's VMI from creation to deletion: create it (adopting this run's own leftover of a
retried POST), wait until it and its launcher pod run on the node, delete it and wait until both
are gone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from benchmarks.cluster.config import Timing
from benchmarks.cluster.errors import PreflightError, RunAborted, SampleError
from benchmarks.cluster.kube import ApiError, KubeClient
from benchmarks.cluster.vmi import MANAGED_BY

__all__ = ["VmiLifecycle"]

log = logging.getLogger(__name__)

FINAL_PHASES: Final = ("Failed", "Succeeded")


@dataclass(frozen=True, slots=True)
class VmiLifecycle:
    """Creates, watches and deletes VMIs in ``namespace``, polling every ``timing.poll_seconds``."""

    client: KubeClient
    namespace: str
    timing: Timing
    sleep: Callable[[float], None]
    clock: Callable[[], float]

    def remove_leftovers(self) -> None:
        """Delete the VMIs an earlier, interrupted run left in the namespace."""
        try:
            listing = self.client.vmis(self.namespace, f"app.kubernetes.io/managed-by={MANAGED_BY}")
            for item in listing.get("items") or []:
                name = item["metadata"]["name"]
                log.warning("deleting VMI %s left by an earlier run", name)
                self.remove(name, (item.get("metadata") or {}).get("uid", ""))
        except (ApiError, SampleError, RunAborted) as err:
            raise PreflightError(f"cannot remove leftover VMIs: {err}") from None

    def create(self, manifest: Mapping[str, Any]) -> str:
        """Create the VMI; its uid. An identical leftover of this run (a retried POST) is adopted."""
        name = manifest["metadata"]["name"]
        try:
            created = self.client.create_vmi(self.namespace, manifest)
        except ApiError as err:
            if err.status != 409:
                raise
            created = self.client.vmi(self.namespace, name)
            labels = (created.get("metadata") or {}).get("labels") or {}
            if labels != manifest["metadata"]["labels"] or created["metadata"].get("deletionTimestamp"):
                raise SampleError(f"VMI {name} exists already and is not this sample's") from None
        log.info("created VMI %s", name)
        return str(created["metadata"]["uid"])

    def wait_running(self, name: str, node: str) -> dict[str, Any]:
        """The VMI once ``Running`` on ``node``; SampleError if it ends, runs elsewhere or takes too long."""
        timing = self.timing
        deadline = self.clock() + timing.running_seconds
        phase = None
        while True:
            vmi = self.client.vmi(self.namespace, name)
            status = vmi.get("status") or {}
            if status.get("phase") != phase:
                phase = status.get("phase")
                log.info("VMI %s: %s", name, phase or "(no phase yet)")
            if phase == "Running":
                if status.get("nodeName") != node:
                    raise SampleError(f"VMI {name} runs on {status.get('nodeName')}, not on {node}")
                return vmi
            if phase in FINAL_PHASES:
                reasons = "; ".join(
                    f"{c.get('type')}: {c.get('reason', '')} {c.get('message', '')}".strip()
                    for c in status.get("conditions") or []
                )
                raise SampleError(f"VMI {name} ended {phase} before it ran ({reasons or 'no conditions'})")
            if self.clock() > deadline:
                raise SampleError(
                    f"VMI {name} not Running within {timing.running_seconds:g} s (phase {phase})"
                )
            self.sleep(timing.poll_seconds)

    def launcher_pod(self, uid: str, node: str) -> dict[str, Any]:
        """The running virt-launcher pod of the VMI with ``uid``, which must be on ``node``."""
        timing = self.timing
        deadline = self.clock() + timing.running_seconds
        while True:
            listing = self.client.pods(self.namespace, f"kubevirt.io/created-by={uid}")
            for pod in listing.get("items") or []:
                if (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get(
                    "deletionTimestamp"
                ):
                    if (pod.get("spec") or {}).get("nodeName") != node:
                        raise SampleError(f"launcher pod {pod['metadata']['name']} is not on {node}")
                    return dict(pod)
            if self.clock() > deadline:
                raise SampleError(f"no running virt-launcher pod for VMI uid {uid}")
            self.sleep(timing.poll_seconds)

    def remove(self, name: str, uid: str) -> None:
        """Delete the VMI (if it exists) and wait until it and its launcher pod are gone."""
        timing = self.timing
        try:
            self.client.delete_vmi(self.namespace, name)
            deadline = self.clock() + timing.delete_seconds
            while True:
                gone = self._gone(name)
                if gone and uid:
                    listing = self.client.pods(self.namespace, f"kubevirt.io/created-by={uid}")
                    gone = not listing.get("items")
                if gone:
                    log.info("deleted VMI %s", name)
                    return
                if self.clock() > deadline:
                    raise RunAborted(
                        f"VMI {name} or its launcher pod still there {timing.delete_seconds:g} s after delete"
                    )
                self.sleep(timing.poll_seconds)
        except ApiError as err:
            raise RunAborted(f"cannot delete VMI {name}: {err}") from err

    def _gone(self, name: str) -> bool:
        try:
            self.client.vmi(self.namespace, name)
        except ApiError as err:
            if err.status == 404:
                return True
            raise
        return False
