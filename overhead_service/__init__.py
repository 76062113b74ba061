"""overhead-service: the memory a KubeVirt virt-launcher pod needs on top of guest RAM."""

from __future__ import annotations

from overhead_service.app import create_app
from overhead_service.errors import (
    InputError,
    InvalidQuantity,
    InvalidRatio,
    OverheadServiceError,
    TableFormatError,
    UnknownTable,
)
from overhead_service.quantity import Quantity, parse_quantity
from overhead_service.service import OverheadService
from overhead_service.tables import TableRegistry

__all__ = [
    "InputError",
    "InvalidQuantity",
    "InvalidRatio",
    "OverheadService",
    "OverheadServiceError",
    "Quantity",
    "TableFormatError",
    "TableRegistry",
    "UnknownTable",
    "create_app",
    "parse_quantity",
]
