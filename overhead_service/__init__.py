"""overhead-service: the memory a KubeVirt virt-launcher pod needs on top of guest RAM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overhead_service.errors import (
    InputError,
    InvalidQuantity,
    InvalidRatio,
    OverheadServiceError,
    TableFormatError,
    UnknownTable,
)
from overhead_service.model.quantity import Quantity, parse_quantity
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

if TYPE_CHECKING:
    from overhead_service.app import create_app

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


def __getattr__(name: str) -> Any:
    # create_app brings in the web layer and prometheus_client, so it is imported on first use:
    # gunicorn_conf, inside this package, must set PROMETHEUS_MULTIPROC_DIR before that import.
    if name == "create_app":
        from overhead_service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
