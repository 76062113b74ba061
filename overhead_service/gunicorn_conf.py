"""gunicorn settings for ``overhead-service serve`` (``gunicorn -c python:overhead_service.gunicorn_conf``).

Requests are short and CPU-bound (the formula takes microseconds), and in Kubernetes there is no
buffering proxy in front of the pod, so threaded workers: keep-alive for virt-controller's
connections, and a slow client holds a thread rather than a whole process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]  # gunicorn ships no types

# Underscored: gunicorn reads every module-level name that is one of its settings.
from overhead_service.config import resolve as _resolve_settings
from overhead_service.store import Store as _Store

__all__ = ["cpu_count", "default_workers", "on_starting"]


def cpu_count() -> int:
    """CPUs this process may use: the affinity mask, lowered by a cgroup v2 CPU quota (pod limits)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return max(count, 1)
    if quota != "max":
        count = min(count, -(-int(quota) // int(period)))  # ceiling: a 1.5-CPU limit gets 2 workers
    return max(count, 1)


def default_workers() -> int:
    """One worker process per usable CPU: the work is CPU-bound, so more processes add no throughput."""
    return cpu_count()


wsgi_app = "overhead_service:create_app()"
bind = ["0.0.0.0:8080"]
workers = int(os.environ.get("WEB_CONCURRENCY", default_workers()))
worker_class = "gthread"
threads = 4
keepalive = 5

# A request takes milliseconds: 30 s only catches a hung worker. Shutdown (SIGTERM) finishes the
# requests in flight within 20 s, inside Kubernetes' default 30 s termination grace period.
timeout = 30
graceful_timeout = 20

# The worker heartbeat file: on tmpfs, because fchmod on a disk-backed /tmp can block (and a
# read-only root filesystem has no writable /tmp anyway).
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# gunicorn >= 25.1 opens a control socket under $HOME by default; a container needs none.
if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
    control_socket_disable = True


def on_starting(server: Any) -> None:
    """In the master, before any worker forks: create or upgrade the database schema, once.

    A failure (database unreachable, schema newer than the code) stops gunicorn: the pod restarts
    and tries again, rather than serving without a schema.
    """
    store = _Store(_resolve_settings()["DATABASE_URL"])
    try:
        store.create_schema()
    except Exception:
        logging.getLogger("gunicorn.error").exception("cannot create the database schema")
        raise
    finally:
        store.dispose()  # no connection may cross the fork


accesslog = None  # no log line per request on the VM-start hot path
errorlog = "-"
loglevel = "info"
