"""Before the first VMI: the node to measure (named, this Job's own, or the first usable one of the
pool) and the facts about it that every record carries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.cluster.config import Config
from benchmarks.cluster.errors import PreflightError
from benchmarks.cluster.kube import ApiError, KubeClient
from benchmarks.cluster.readings import DEVICE_PREFIX, allocatable, cpu_model
from benchmarks.cluster.records import HostFacts

__all__ = ["choose_node", "host_facts"]

log = logging.getLogger(__name__)


def choose_node(config: Config, client: KubeClient, self_node: str) -> dict[str, Any]:
    """The node to measure, checked; PreflightError otherwise.

    ``self_node`` is the node this Job runs on ("" when unknown): node scope reads its
    ``/proc/meminfo``, so it must be the node measured.
    """
    pool = config.pool
    try:
        if pool.node or self_node:
            node = client.node(pool.node or self_node)
            problem = _node_problem(config, node)
            if problem and not pool.node:  # this Job's node is not in the pool: look elsewhere
                log.info("this Job's node %s is not usable (%s); looking in the pool", self_node, problem)
                node = _pick_node(config, client)
            elif problem:
                raise PreflightError(problem)
        else:
            node = _pick_node(config, client)
    except ApiError as err:
        raise PreflightError(f"cannot read the node: {err}") from None
    name = node["metadata"]["name"]
    if config.node_scope:
        if name != self_node:
            raise PreflightError(
                "node scope reads /proc/meminfo of the node this Job runs on "
                f"({self_node or 'unknown'}), but the node measured is {name}: "
                "schedule the Job onto the measured node (its nodeSelector), or set nodeScope: false"
            )
        try:
            Path(config.meminfo_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PreflightError(f"cannot read {config.meminfo_path}: {exc}") from None
    return node


def _pick_node(config: Config, client: KubeClient) -> dict[str, Any]:
    selector = ",".join(f"{key}={value}" for key, value in sorted(config.pool.node_selector.items()))
    listing = client.nodes(selector)
    problems = []
    for node in sorted(listing.get("items") or [], key=lambda item: str(item["metadata"]["name"])):
        problem = _node_problem(config, node)
        if problem is None:
            return dict(node)
        problems.append(problem)
    detail = "; ".join(problems) if problems else f"no node matches nodeSelector {selector or '(none)'}"
    raise PreflightError(f"no usable {config.pool.hypervisor} node: {detail}")


def _node_problem(config: Config, node: Mapping[str, Any]) -> str | None:
    """Why ``node`` cannot be measured, or None."""
    metadata = node.get("metadata") or {}
    name = metadata.get("name", "?")
    labels = metadata.get("labels") or {}
    for key, value in config.pool.node_selector.items():
        if labels.get(key) != value:
            return f"node {name} does not have label {key}={value}"
    if (node.get("spec") or {}).get("unschedulable"):
        return f"node {name} is cordoned (unschedulable)"
    conditions = (node.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return f"node {name} is not Ready"
    hypervisor = config.pool.hypervisor
    device = DEVICE_PREFIX + hypervisor
    if allocatable(node, device) <= 0:
        what = "an L1VH (mshv) node" if hypervisor == "mshv" else "a KVM node"
        return (
            f"node {name} has no allocatable {device}: not {what}, or KubeVirt's device plugin "
            "does not run there"
        )
    return None


def host_facts(config: Config, client: KubeClient, node: Mapping[str, Any]) -> HostFacts:
    """The node's facts; KubeVirt's version from its CR when readable (else learnt per sample)."""
    info = (node.get("status") or {}).get("nodeInfo") or {}
    kubevirt = None
    try:
        cr = client.kubevirt(config.kubevirt_namespace, config.kubevirt_name)
        kubevirt = (cr.get("status") or {}).get("observedKubeVirtVersion") or None
    except ApiError as err:
        log.warning("cannot read the KubeVirt CR (%s); the launcher image's tag will name the version", err)
    return HostFacts(
        node=node["metadata"]["name"],
        arch=str(info.get("architecture") or "amd64"),
        kernel=str(info.get("kernelVersion") or "unknown"),
        kubelet=str(info.get("kubeletVersion") or ""),
        accelerator=config.pool.hypervisor,
        cpu_model=cpu_model(node),
        kubevirt=kubevirt,
    )
