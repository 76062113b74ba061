"""The directory prometheus_client's multiprocess mode shares between gunicorn's workers.

prometheus_client picks its value class (in-memory or mmap'd files) once, when it is first
imported, from ``PROMETHEUS_MULTIPROC_DIR``; a worker that imported it before the variable was set
counts only for itself and its numbers never reach a scrape answered by another worker. So the
variable is set by whoever starts gunicorn (``overhead-service serve``, the pod spec), and
``gunicorn_conf`` sets it for a bare ``gunicorn`` run. This module must therefore not import
prometheus_client itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Final

__all__ = ["ENV", "PRIVATE_ENV", "ensure_dir", "remove_private_dir", "wipe"]

ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Set next to ENV when this module made the directory, so that only such a directory is deleted.
PRIVATE_ENV: Final = "OVERHEAD_PRIVATE_MULTIPROC_DIR"


def ensure_dir(environ: MutableMapping[str, str] | None = None) -> str:
    """The multiprocess directory: ``$PROMETHEUS_MULTIPROC_DIR`` (created if missing), else a new
    private one on tmpfs (``/dev/shm`` when writable), exported in ``environ`` for the workers."""
    environ = os.environ if environ is None else environ
    configured = environ.get(ENV)
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        return configured
    shm = "/dev/shm"
    parent = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    path = tempfile.mkdtemp(prefix="overhead-metrics-", dir=parent)
    environ[ENV] = path
    environ[PRIVATE_ENV] = path
    return path


def wipe(path: str) -> None:
    """Delete the previous run's value files (not the directory: it may be a mount point)."""
    for entry in Path(path).glob("*.db"):
        entry.unlink(missing_ok=True)


def remove_private_dir(environ: MutableMapping[str, str] | None = None) -> None:
    """Delete the directory if :func:`ensure_dir` made it (an operator's directory is left alone)."""
    environ = os.environ if environ is None else environ
    path = environ.get(ENV)
    if path and environ.get(PRIVATE_ENV) == path:
        shutil.rmtree(path, ignore_errors=True)
