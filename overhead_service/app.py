"""The application factory: ``gunicorn 'overhead_service:create_app()'``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from overhead_service import config as settings
from overhead_service import store, web
from overhead_service.service import OverheadService
from overhead_service.tables import TableRegistry
from overhead_service.web import sync
from overhead_service.web.common import REGISTRY, SERVICE

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A configured application; ``config`` overrides ``OVERHEAD_*`` variables, which override defaults."""
    app = Flask("overhead_service")
    app.config.from_mapping(settings.resolve(config))

    # The tables and the service are built once here: the hot path only looks them up.
    registry = TableRegistry.builtin()
    default_table = app.config["DEFAULT_TABLE"]
    if default_table not in registry.ids():
        known = ", ".join(registry.ids())
        raise ValueError(f"DEFAULT_TABLE {default_table!r} is not a known table (known: {known})")
    app.extensions[REGISTRY] = registry
    app.extensions[SERVICE] = OverheadService(
        registry, default_arch=app.config["DEFAULT_ARCH"], default_table=default_table
    )

    store.init_app(app)
    web.init_app(app)
    # Stored tables and the active choice: loaded now, then polled (never on the hot path).
    sync.init_app(app, store.get_store(app), registry, app.extensions[SERVICE])
    return app
