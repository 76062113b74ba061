"""Settings of the web application: a mapping first, then ``OVERHEAD_<KEY>`` variables, then defaults.

- ``DATABASE_URL``: SQLAlchemy URL of the store, SQLite (``sqlite:///path``) or PostgreSQL
  (``postgresql+psycopg://…``); default ``sqlite:///<root>/var/overhead.db``. The directory of a
  SQLite file is never created implicitly (:func:`missing_database_directory`).
- ``DEFAULT_ARCH``: ``cpuArch`` when a request names none; default ``amd64``.
- ``DEFAULT_TABLE``: calibration table when a request names none; default ``kubevirt-v1.9.0``.
- ``MAX_CONTENT_LENGTH``: largest accepted request body in bytes; default 32 MiB.
- ``TOKENS_FILE``: path of a JSON file of bearer tokens for writes,
  ``{"tokens": [{"name": "bench-ci", "role": "ingest", "token": "..."}]}``; default none.
- ``TOKENS``: the same JSON document inline (e.g. from a Kubernetes Secret in the environment);
  default none. Tokens from both are used. With neither, every write is refused
  (:mod:`overhead_service.web.auth`).
- ``SYNC_SECONDS``: how often each worker polls the database for new tables and activations;
  default 2 (0 turns polling off: tests refresh explicitly).
- ``FIT_TARGET``: the coverage a fit aims for when the request names none; default 0.995.
- ``ACTIVATION_MIN_SAMPLES``: fewest samples behind a fit that may be activated unforced;
  default 250 (a fit at the default target with 5 folds needs 249).
- ``REQUEST_READ_SECONDS``: how long a client has to send a whole request (head and body) once
  its first byte has arrived, under ``overhead-service serve``; default 10 (then 408, and the
  connection is closed: :mod:`overhead_service.worker`).
- ``LOG_LEVEL``: ``debug``, ``info``, ``warning``, ``error`` or ``critical`` (any case); default
  ``info``. One access line per request is logged at ``info`` (``warning`` for a hypervisor
  fallback), so ``warning`` keeps only fallbacks and errors.
- ``ADMISSION_MODE``: what ``POST /v1/admission/vmi`` does to a VMI: ``shadow`` (annotations only),
  ``headroom``, ``reserved-overhead`` or ``off``; default ``shadow``
  (:mod:`overhead_service.model.admission`).
- ``ADMISSION_UPSTREAM_TABLE``: the built-in upstream table standing for the cluster's KubeVirt;
  default ``kubevirt-v1.9.0``.
- ``KUBEVIRT_CONFIGURATION``: the KubeVirt CR's ``spec.configuration`` as a JSON object, for the
  admission webhook; default none: it is then read and watched in the cluster when credentials are
  at hand (:mod:`overhead_service.clusterconfig`, :mod:`overhead_service.kube`).
- ``KUBEVIRT_NAMESPACE``: where that watch looks for the KubeVirt CR; default none (all namespaces).

``<root>`` is the source checkout when the package runs from one (``make serve``), else the
current directory. Keys of the mapping that are not listed here (``TESTING`` …) go to Flask as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from overhead_service.logs import parse_level
from overhead_service.model.admission import MODES as ADMISSION_MODES

__all__ = [
    "DATABASE_BACKENDS",
    "ENV_PREFIX",
    "KEYS",
    "SettingError",
    "check_database_url",
    "default_database_url",
    "missing_database_directory",
    "resolve",
]

DATABASE_BACKENDS = ("sqlite", "postgresql")

ENV_PREFIX = "OVERHEAD_"
KEYS = (
    "DATABASE_URL",
    "DEFAULT_ARCH",
    "DEFAULT_TABLE",
    "MAX_CONTENT_LENGTH",
    "TOKENS",
    "TOKENS_FILE",
    "SYNC_SECONDS",
    "FIT_TARGET",
    "ACTIVATION_MIN_SAMPLES",
    "REQUEST_READ_SECONDS",
    "LOG_LEVEL",
    "ADMISSION_MODE",
    "ADMISSION_UPSTREAM_TABLE",
    "KUBEVIRT_CONFIGURATION",
    "KUBEVIRT_NAMESPACE",
)


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
        "TOKENS": None,
        "TOKENS_FILE": None,
        "SYNC_SECONDS": 2.0,
        "FIT_TARGET": 0.995,
        "ACTIVATION_MIN_SAMPLES": 250,
        "REQUEST_READ_SECONDS": 10.0,
        "LOG_LEVEL": "info",
        "ADMISSION_MODE": "shadow",
        "ADMISSION_UPSTREAM_TABLE": "kubevirt-v1.9.0",
        "KUBEVIRT_CONFIGURATION": None,
        "KUBEVIRT_NAMESPACE": None,
    }


def check_database_url(url: Any, source: str) -> str:
    """``url`` if it is a SQLAlchemy URL of a backend the store speaks; else :class:`ValueError`
    naming ``source`` (the setting it came from)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{source} must be a non-empty string")
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ValueError(
            f"{source} is not a database URL (sqlite:///path or postgresql+psycopg://user@host/db)"
        ) from None
    if backend not in DATABASE_BACKENDS:
        raise ValueError(
            f"{source} names an unknown database {backend!r}: use sqlite:///path or "
            "postgresql+psycopg://user@host/db"
        )
    return url


def missing_database_directory(url: str) -> Path | None:
    """The directory a SQLite database file should be in, when it does not exist (None otherwise,
    and for PostgreSQL or an in-memory database). Nothing creates it silently: ``make serve`` and
    ``make init-db`` create ``var/`` explicitly."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    directory = Path(database).parent
    return None if directory.is_dir() else directory


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


def _number(value: Any, source: str, low: float, high: float) -> float:
    """A number in [low, high]; environment variables arrive as strings."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{source} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{source} must be a number between {low} and {high}, got {value!r}")
    return float(value)


def _json_object(value: Any, source: str) -> dict[str, Any] | None:
    """None, or the KubeVirt CR's ``spec.configuration``: a JSON object (environment variables
    arrive as JSON text)."""
    what = f"{source} must be a JSON object (the KubeVirt CR's spec.configuration)"
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what}: not valid JSON: {exc}") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{what}, got {type(value).__name__}")
    return value


def _namespace(value: Any, source: str) -> str | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{source} must be a namespace name")
    return value


def _text(value: Any, source: str, what: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source} must be {what}")
    return value


def _choice(value: Any, source: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{source} must be one of {', '.join(allowed)}")
    return str(value)


def _whole(value: Any, source: str) -> int:
    minimum = _number(value, source, 1, 10**9)
    if minimum != int(minimum):
        raise ValueError(f"{source} must be a whole number")
    return int(minimum)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "DATABASE_URL": check_database_url,
    "DEFAULT_ARCH": _text,
    "DEFAULT_TABLE": _text,
    "MAX_CONTENT_LENGTH": _max_content_length,
    "SYNC_SECONDS": lambda value, source: _number(value, source, 0.0, 3600.0),
    "REQUEST_READ_SECONDS": lambda value, source: _number(value, source, 0.1, 3600.0),
    "FIT_TARGET": lambda value, source: _number(value, source, 0.5, 0.9999),
    "ACTIVATION_MIN_SAMPLES": _whole,
    "LOG_LEVEL": parse_level,
    "ADMISSION_MODE": lambda value, source: _choice(value, source, ADMISSION_MODES),
    "ADMISSION_UPSTREAM_TABLE": lambda value, source: _text(value, source, "a table id"),
    "KUBEVIRT_CONFIGURATION": _json_object,
    "KUBEVIRT_NAMESPACE": _namespace,
}


class SettingError(ValueError):
    """A setting is wrong; ``key`` names it (``DATABASE_URL``), ``source`` where it came from."""

    def __init__(self, message: str, *, key: str, source: str) -> None:
        super().__init__(message)
        self.key = key
        self.source = source

    @property
    def variable(self) -> str:
        """The environment variable that sets it (``OVERHEAD_DATABASE_URL``)."""
        return ENV_PREFIX + self.key


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
    for key, check in _CHECKS.items():
        try:
            settings[key] = check(settings[key], sources[key])
        except ValueError as err:
            raise SettingError(str(err), key=key, source=sources[key]) from None
    settings.update(config)
    return settings
