"""Which stored measurements a fit, an evaluation or a report uses, and how to say it in words.

A selection is the keyword arguments of :meth:`overhead_service.store.Store.select_measurements`:
``hypervisor``, ``arch``, ``scope`` (required), ``run_ids``, ``since`` (inclusive) and ``until``
(exclusive), the last three optional.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_selection"]


def describe_selection(selector: Mapping[str, Any]) -> str:
    """The stored measurements a selector picks, in words (the report shows them)."""
    words = [f"stored measurements of {selector['hypervisor']}/{selector['arch']}/{selector['scope']}"]
    if selector.get("run_ids"):
        words.append("runs " + ", ".join(selector["run_ids"]))
    if selector.get("since") is not None:
        words.append(f"measured at or after {selector['since'].isoformat()}")
    if selector.get("until") is not None:
        words.append(f"measured before {selector['until'].isoformat()}")
    return "; ".join(words)
