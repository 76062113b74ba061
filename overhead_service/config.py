"""Settings of the web application: a mapping first, then ``OVERHEAD_<KEY>`` variables, then defaults.

- ``DATABASE_URL``: SQLAlchemy URL of the store; default ``sqlite:///<root>/var/overhead.db``.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overhead_service.logs import parse_level
from overhead_service.model.admission import MODES as ADMISSION_MODES

__all__ = ["ENV_PREFIX", "KEYS", "default_database_url", "resolve"]

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
    settings["SYNC_SECONDS"] = _number(settings["SYNC_SECONDS"], sources["SYNC_SECONDS"], 0.0, 3600.0)
    settings["REQUEST_READ_SECONDS"] = _number(
        settings["REQUEST_READ_SECONDS"], sources["REQUEST_READ_SECONDS"], 0.1, 3600.0
    )
    settings["FIT_TARGET"] = _number(settings["FIT_TARGET"], sources["FIT_TARGET"], 0.5, 0.9999)
    minimum = _number(settings["ACTIVATION_MIN_SAMPLES"], sources["ACTIVATION_MIN_SAMPLES"], 1, 10**9)
    if minimum != int(minimum):
        raise ValueError(f"{sources['ACTIVATION_MIN_SAMPLES']} must be a whole number")
    settings["ACTIVATION_MIN_SAMPLES"] = int(minimum)
    settings["LOG_LEVEL"] = parse_level(settings["LOG_LEVEL"], sources["LOG_LEVEL"])
    if settings["ADMISSION_MODE"] not in ADMISSION_MODES:
        raise ValueError(f"{sources['ADMISSION_MODE']} must be one of {', '.join(ADMISSION_MODES)}")
    if not isinstance(settings["ADMISSION_UPSTREAM_TABLE"], str) or not settings["ADMISSION_UPSTREAM_TABLE"]:
        raise ValueError(f"{sources['ADMISSION_UPSTREAM_TABLE']} must be a table id")
    settings["KUBEVIRT_CONFIGURATION"] = _json_object(
        settings["KUBEVIRT_CONFIGURATION"], sources["KUBEVIRT_CONFIGURATION"]
    )
    namespace = settings["KUBEVIRT_NAMESPACE"] or None
    if namespace is not None and not isinstance(namespace, str):
        raise ValueError(f"{sources['KUBEVIRT_NAMESPACE']} must be a namespace name, got {namespace!r}")
    settings["KUBEVIRT_NAMESPACE"] = namespace
    settings.update(config)
    return settings
