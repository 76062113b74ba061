"""Which stored measurements a fit, an evaluation or a report uses, and how to say it in words.

A selection is the keyword arguments of :meth:`overhead_service.store.Store.select_measurements`:
``hypervisor``, ``arch``, ``scope`` (required), ``run_ids``, ``since`` (inclusive), ``until``
(exclusive) and ``launcher``, the last four optional.  ``launcher`` (``direct`` or ``libvirt``) selects
only among ``qemu`` records: the daemon scopes are always libvirt's, and a pod's or a node's QEMU
is started by KubeVirt's virt-launcher (:func:`for_scope`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_selection", "for_scope", "merge_facts"]


def for_scope(selector: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """The store's selection of ``scope``'s records: ``selector`` with that scope, and its
    ``launcher`` only for ``qemu``."""
    chosen = {key: value for key, value in selector.items() if key not in ("scope", "launcher")}
    chosen["scope"] = scope
    if scope == "qemu" and selector.get("launcher") is not None:
        chosen["launcher"] = selector["launcher"]
    return chosen


def merge_facts(*facts: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Host facts of several selections together: every value of each fact, sorted."""
    merged: dict[str, set[str]] = {}
    for one in facts:
        for name, values in one.items():
            merged.setdefault(name, set()).update(values)
    return {name: sorted(values) for name, values in sorted(merged.items())}


def describe_selection(selector: Mapping[str, Any]) -> str:
    """The stored measurements a selector picks, in words (the report shows them); its ``scope``
    may be several scopes."""
    scope = selector["scope"]
    scopes = scope if isinstance(scope, str) else "+".join(scope)
    words = [f"stored measurements of {selector['hypervisor']}/{selector['arch']}/{scopes}"]
    launcher = selector.get("launcher")
    if launcher is not None:
        words.append("QEMU started " + ("directly" if launcher == "direct" else f"by {launcher}"))
    if selector.get("run_ids"):
        words.append("runs " + ", ".join(selector["run_ids"]))
    if selector.get("since") is not None:
        words.append(f"measured at or after {selector['since'].isoformat()}")
    if selector.get("until") is not None:
        words.append(f"measured before {selector['until'].isoformat()}")
    return "; ".join(words)
