"""The objects an application holds once (in ``app.extensions``) and how to reach them.

The factory (:func:`overhead_service.app.create_app`) builds them; blueprints and the CLI look them
up here, so the store and the table sync need not know about Flask.
"""

from __future__ import annotations

from typing import cast

from flask import Flask, current_app

from overhead_service.clusterconfig import ConfigSource
from overhead_service.model.admission import Admission
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.store import Store
from overhead_service.sync import TableSync

__all__ = [
    "ADMISSION",
    "CLUSTER_CONFIG",
    "REGISTRY",
    "SERVICE",
    "STORE",
    "SYNC",
    "get_admission",
    "get_cluster_config",
    "get_registry",
    "get_service",
    "get_store",
    "get_sync",
]

SERVICE = "overhead_service.service"
REGISTRY = "overhead_service.registry"
STORE = "overhead_service.store"
SYNC = "overhead_service.sync"
ADMISSION = "overhead_service.admission"
CLUSTER_CONFIG = "overhead_service.cluster_config"


def get_service(app: Flask | None = None) -> OverheadService:
    """The application's one :class:`OverheadService` (built by the factory, not per request)."""
    return cast(OverheadService, (app or current_app).extensions[SERVICE])


def get_registry(app: Flask | None = None) -> TableRegistry:
    """The application's calibration tables."""
    return cast(TableRegistry, (app or current_app).extensions[REGISTRY])


def get_store(app: Flask | None = None) -> Store:
    """The application's :class:`Store` (``DATABASE_URL``; the schema is made by ``init-db``)."""
    return cast(Store, (app or current_app).extensions[STORE])


def get_sync(app: Flask | None = None) -> TableSync:
    """The worker's :class:`TableSync`: stored tables and the active choice, polled."""
    return cast(TableSync, (app or current_app).extensions[SYNC])


def get_admission(app: Flask | None = None) -> Admission:
    """The application's admission decider (``ADMISSION_UPSTREAM_TABLE`` checked at start-up)."""
    return cast(Admission, (app or current_app).extensions[ADMISSION])


def get_cluster_config(app: Flask | None = None) -> ConfigSource:
    """Where the cluster's KubeVirt configuration comes from (:mod:`overhead_service.clusterconfig`)."""
    return cast(ConfigSource, (app or current_app).extensions[CLUSTER_CONFIG])
