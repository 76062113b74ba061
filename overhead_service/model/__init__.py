"""The KubeVirt model: what KubeVirt computes for a VMI, exactly as its Go code does.

Go-exact quantities and float parsing, the VMI fields the overhead reads, the hypervisor choice,
calibration tables and their evaluation, the launcher pod's resources, and
:class:`OverheadService`, the entry point that answers one request.  Nothing here imports Flask,
SQL or HTTP libraries.
"""

from __future__ import annotations

from overhead_service.model.quantity import Quantity, parse_quantity
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

__all__ = ["OverheadService", "Quantity", "TableRegistry", "parse_quantity", "render"]
