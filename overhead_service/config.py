"""Settings of the web application: a mapping first, then ``OVERHEAD_<KEY>`` variables, then defaults.

- ``DATABASE_URL``: SQLAlchemy URL of the store; default ``sqlite:///<root>/var/overhead.db``.
- ``DEFAULT_ARCH``: ``cpuArch`` when a request names none; default ``amd64``.
- ``DEFAULT_TABLE``: calibration table when a request names none; default ``kubevirt-v1.9.0``.
- ``MAX_CONTENT_LENGTH``: largest accepted request body in bytes; default 32 MiB.

``<root>`` is the source checkout when the package runs from one (``make serve``), else the
current directory. Keys of the mapping that are not listed here (``TESTING`` …) go to Flask as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENV_PREFIX", "KEYS", "default_database_url", "resolve"]

ENV_PREFIX = "OVERHEAD_"
KEYS = ("DATABASE_URL", "DEFAULT_ARCH", "DEFAULT_TABLE", "MAX_CONTENT_LENGTH")


def _root() -> Path:
    """The source checkout holding this package, or the current directory for an installed one."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "overhead_service").is_dir():
        return checkout
    return Path.cwd()


def default_database_url() -> str:
    """The embedded SQLite database under ``var/``."""
    return f"sqlite:///{_root() / 'var' / 'overhead.db'}"


def _defaults() -> dict[str, Any]:
    return {
        "DATABASE_URL": default_database_url(),
        "DEFAULT_ARCH": "amd64",
        "DEFAULT_TABLE": "kubevirt-v1.9.0",
        "MAX_CONTENT_LENGTH": 32 * 1024 * 1024,
    }


def _max_content_length(value: Any, source: str) -> int:
    """A positive byte count; environment variables arrive as strings."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{source} must be a whole number of bytes, got {value!r}") from None
    # bool is an int subclass, but True is a mistake, not a one-byte limit.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source} must be a positive whole number of bytes, got {value!r}")
    return value


def resolve(
    config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings for one application: ``config`` wins over ``environ`` (default ``os.environ``)."""
    config = dict(config or {})
    environ = os.environ if environ is None else environ
    settings = _defaults()
    sources = dict.fromkeys(KEYS, "the default")
    for key in KEYS:
        if key in config:
            settings[key], sources[key] = config.pop(key), f"config key {key}"
        elif ENV_PREFIX + key in environ:
            settings[key], sources[key] = environ[ENV_PREFIX + key], f"environment variable {ENV_PREFIX}{key}"
    for key in ("DATABASE_URL", "DEFAULT_ARCH", "DEFAULT_TABLE"):
        if not isinstance(settings[key], str) or not settings[key]:
            raise ValueError(f"{sources[key]} must be a non-empty string, got {settings[key]!r}")
    settings["MAX_CONTENT_LENGTH"] = _max_content_length(
        settings["MAX_CONTENT_LENGTH"], sources["MAX_CONTENT_LENGTH"]
    )
    settings.update(config)
    return settings
