"""The HTTP layer: one blueprint per resource, problem+json errors, nothing domain-specific."""

from __future__ import annotations

from flask import Flask

from overhead_service.web import (
    activations,
    auth,
    errors,
    fits,
    health,
    measurements,
    overhead,
    reports,
    spec,
    tables,
)

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    """Register the error handlers and every blueprint."""
    errors.init_app(app)
    auth.init_app(app)
    spec.init_app(app)
    for module in (overhead, tables, reports, fits, activations, measurements, health, spec):
        app.register_blueprint(module.bp)
