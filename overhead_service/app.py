"""The application factory: ``gunicorn 'overhead_service:create_app()'``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response

from overhead_service import config as settings
from overhead_service import web
from overhead_service.clusterconfig import config_source
from overhead_service.extensions import ADMISSION, CLUSTER_CONFIG, REGISTRY, SERVICE, STORE, SYNC
from overhead_service.model.admission import Admission
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.store import Store
from overhead_service.sync import TableSync
from overhead_service.web.metrics import publish_active_tables

__all__ = ["OverheadApp", "create_app"]


class OverheadApp(Flask):
    """Flask, answering ``OPTIONS`` with 204 and ``Allow`` (Flask's 200 carries an empty text/html body)."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A configured application; ``config`` overrides ``OVERHEAD_*`` variables, which override defaults."""
    app = OverheadApp("overhead_service")
    app.config.from_mapping(settings.resolve(config))
    # "/v1//tables" is not a path of the API: 404, not a redirect whose URL comes from the Host header.
    app.url_map.merge_slashes = False

    # The tables and the service are built once here: the hot path only looks them up.
    registry = TableRegistry.builtin()
    default_table = app.config["DEFAULT_TABLE"]
    if default_table not in registry.ids():
        known = ", ".join(registry.ids())
        raise ValueError(f"DEFAULT_TABLE {default_table!r} is not a known table (known: {known})")
    app.extensions[REGISTRY] = registry
    service = OverheadService(registry, default_arch=app.config["DEFAULT_ARCH"], default_table=default_table)
    app.extensions[SERVICE] = service
    # The admission webhook: its upstream table is checked now; the KubeVirt configuration is
    # read from its source per VMI, never waited for.
    app.extensions[ADMISSION] = Admission(service, app.config["ADMISSION_UPSTREAM_TABLE"])
    app.extensions[CLUSTER_CONFIG] = config_source(app.config)
    # The store holds no schema until `init-db` (or gunicorn's on_starting) creates it.
    store = app.extensions[STORE] = Store(app.config["DATABASE_URL"])

    web.init_app(app)
    # Stored tables and the active choice: loaded now, then polled (never on the hot path).
    sync = TableSync(store, registry, service, float(app.config["SYNC_SECONDS"]), publish_active_tables)
    app.extensions[SYNC] = sync
    sync.begin()
    return app
