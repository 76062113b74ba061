"""gunicorn settings for ``overhead-service serve`` (``gunicorn -c python:overhead_service.gunicorn_conf``).

Requests are short and CPU-bound (the formula takes microseconds), and in Kubernetes there is no
buffering proxy in front of the pod, so threaded workers whose event loop reads every request
whole before a thread answers it (:mod:`overhead_service.worker`): keep-alive for virt-controller's
connections, and a slow client holds neither a process nor a thread.
"""

from __future__ import annotations

import logging
import math
import os
import ssl as _ssl
import sys
from pathlib import Path
from typing import Any

from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]  # gunicorn ships no types
from gunicorn.glogging import Logger as _GunicornLogger  # type: ignore[import-untyped]

# Underscored: gunicorn reads every module-level name that is one of its settings.
from overhead_service import multiproc as _multiproc
from overhead_service.config import resolve as _resolve_settings
from overhead_service.logs import gunicorn_logconfig as _gunicorn_logconfig
from overhead_service.store import Store as _Store

__all__ = [
    "NoAccessLogger",
    "child_exit",
    "cpu_count",
    "default_workers",
    "on_exit",
    "on_starting",
    "ssl_context",
]


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the affinity mask, lowered by a cgroup CPU quota (pod limits),
    cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cpu_quota(cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))  # a 1.5-CPU limit gets 2 workers
    return max(count, 1)


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs the cgroup quota allows (quota / period), or None when there is none."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
        try:
            v1_quota = int((v1 / "cpu.cfs_quota_us").read_text())  # -1: no limit
            v1_period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return v1_quota / v1_period if v1_quota > 0 and v1_period > 0 else None
    return None


def default_workers() -> int:
    """One worker process per usable CPU: the work is CPU-bound, so more processes add no throughput."""
    return cpu_count()


wsgi_app = "overhead_service:create_app()"
bind = ["0.0.0.0:8080"]
workers = int(os.environ.get("WEB_CONCURRENCY", default_workers()))
worker_class = "overhead_service.worker.BufferingThreadWorker"
threads = 4
keepalive = 5

# The worker bounds the request line (overhead_service.worker.MAX_REQUEST_LINE, 64 KiB: 414) before
# gunicorn's parser sees it, in one pass; gunicorn's own bound cannot exceed 8190 bytes, shorter
# than the longest query the contract allows (100 `runId` filters of 200 characters). Header
# limits stay at gunicorn's defaults (100 fields of at most 8190 bytes: 431).
limit_request_line = 0

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
    """In the master, before any worker forks: prepare the metrics directory and create or
    upgrade the database schema, once.

    The workers import the application, and with it prometheus_client, after they fork, so the
    directory is in their environment from the start: ``$PROMETHEUS_MULTIPROC_DIR`` (set by
    ``overhead-service serve`` or the pod spec), else a private one for a bare ``gunicorn`` run.
    The previous run's files are wiped (an emptyDir outlives a container restart).

    A failure (database unreachable, schema newer than the code) stops gunicorn: the pod restarts
    and tries again, rather than serving without a schema.
    """
    if "prometheus_client" in sys.modules and not os.environ.get(_multiproc.ENV):
        # --preload, or an import in the master: the workers would inherit in-memory metrics.
        raise RuntimeError(
            f"prometheus_client was imported before {_multiproc.ENV} was set, so the workers would "
            f"not share their metrics: set {_multiproc.ENV} in the environment that starts gunicorn"
        )
    _multiproc.wipe(_multiproc.ensure_dir())
    store = _Store(_resolve_settings()["DATABASE_URL"])
    try:
        store.create_schema()
    except Exception:
        logging.getLogger("gunicorn.error").exception("cannot create the database schema")
        raise
    finally:
        store.dispose()  # no connection may cross the fork


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker has exited (or was killed): drop its live gauges' files, so a
    restarted worker does not show the active table twice. Its counters stay: they still count."""
    from prometheus_client import multiprocess  # here: the master needs it for nothing else

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]  # untyped in the library


def on_exit(server: Any) -> None:
    """Remove the metrics directory if it was made for this run (a mounted one stays)."""
    _multiproc.remove_private_dir()


# --- TLS (serve --certfile/--keyfile: the admission webhook's listener) -----------------------------
# gunicorn asks for a context for every connection it accepts and builds a new one each time,
# reading and parsing the certificate and key again. One per set of files is kept instead, and
# rebuilt when a file changes (cert-manager renews the Secret; the kubelet swaps the mounted files
# by moving a symlink, so the inode changes): a rotated certificate is served from the next
# connection on, without a restart.
_ssl_contexts: dict[tuple[object, ...], _ssl.SSLContext] = {}


def _file_identity(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None  # the factory reports the missing file
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def ssl_context(config: Any, default_ssl_context_factory: Any) -> _ssl.SSLContext:
    """gunicorn's hook: the context for the configured files, reused while they are unchanged."""
    key = tuple(_file_identity(path) for path in (config.certfile, config.keyfile, config.ca_certs))
    context = _ssl_contexts.get(key)
    if context is None:
        context = default_ssl_context_factory()
        context.minimum_version = _ssl.TLSVersion.TLSv1_2
        _ssl_contexts.clear()
        _ssl_contexts[key] = context
    return context


class NoAccessLogger(_GunicornLogger):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn's logger without its access log: the application writes one JSON line per request
    (with its request id). gunicorn would otherwise build the access record of every request once
    ``logconfig_dict`` is set, only for the silenced ``gunicorn.access`` logger to drop it."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


# JSON lines on stderr, for gunicorn's own messages as for the application's (overhead_service.logs).
_log_level = _resolve_settings()["LOG_LEVEL"]
accesslog = None
errorlog = "-"
loglevel = _log_level
logger_class = NoAccessLogger
logconfig_dict = _gunicorn_logconfig(_log_level)
