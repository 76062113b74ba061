"""``GET /openapi.yaml``: the API contract, the same file as ``openapi.yaml`` at the repository top."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app

__all__ = ["bp", "init_app", "load_spec"]

bp = Blueprint("spec", __name__)

EXTENSION = "overhead_service.openapi"
MEDIA_TYPE = "application/yaml"  # RFC 9512


def load_spec() -> bytes:
    """The packaged ``openapi.yaml``; from a source checkout, the top-level file it links to."""
    packaged = resources.files("overhead_service").joinpath("openapi.yaml")
    if packaged.is_file():
        return packaged.read_bytes()
    return (Path(__file__).resolve().parents[2] / "openapi.yaml").read_bytes()


def init_app(app: Flask) -> None:
    """Read the contract once, at start-up, so a packaging mistake fails fast."""
    app.extensions[EXTENSION] = load_spec()


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """The OpenAPI 3.0.3 document."""
    return current_app.response_class(current_app.extensions[EXTENSION], mimetype=MEDIA_TYPE)
