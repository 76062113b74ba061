"""The HTTP layer: one blueprint per resource, problem+json errors, nothing domain-specific."""

from __future__ import annotations

from flask import Flask

from overhead_service.web import (
    activations,
    admission,
    auth,
    errors,
    fits,
    health,
    measurements,
    metrics,
    observe,
    overhead,
    parsing,
    render,
    reports,
    spec,
    tables,
)

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    """Register the error handlers and every blueprint."""
    observe.init_app(app)  # request ids, HTTP metrics, one access line per request
    errors.init_app(app)
    parsing.init_app(app)  # query strings: bounded, and refused by views that read none
    auth.init_app(app)
    spec.init_app(app)
    for module in (overhead, render, tables, reports, fits, activations, measurements, health, spec, metrics):
        app.register_blueprint(module.bp)
    app.register_blueprint(admission.bp)
