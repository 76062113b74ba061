"""The cluster's KubeVirt configuration (the KubeVirt CR's ``spec.configuration``), always at hand.

See the package docstring (:mod:`overhead_service.kube`) for the states and the rules.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from overhead_service.kube.access import Access
from overhead_service.kube.errors import KubeApiError, KubeError

if TYPE_CHECKING:  # the client imports the kubernetes library: only the watch thread loads it
    from overhead_service.kube.client import KubeApi, WatchStream

__all__ = ["KubeVirtConfig", "KubeVirtConfigSource", "choose_kubevirt"]

log = logging.getLogger(__name__)

CONFIGURED: Final = "configured"
NOT_YET_SYNCED: Final = "not-yet-synced"
WATCHING: Final = "watching"
STOPPED: Final = "stopped"
ERROR_PREFIX: Final = "error: "


@dataclass(frozen=True, slots=True)
class KubeVirtConfig:
    """One look at the configuration: what it is, where it came from, and how fresh it is.

    ``configuration`` is shared by every caller until the next change: read it, never modify it.
    """

    configuration: dict[str, Any]
    state: str  # configured | not-yet-synced | watching | stopped | error: <why>
    source: str  # "setting" (KUBEVIRT_CONFIGURATION) or "cluster"
    name: str | None = None  # the KubeVirt CR the configuration is from
    namespace: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    synced_at: datetime | None = None  # when the cluster last confirmed it (list, event, watch end)

    @property
    def usable(self) -> bool:
        """Whether ``configuration`` is the cluster's (or the setting's), not a placeholder."""
        return self.source == "setting" or self.synced_at is not None

    def describe(self) -> dict[str, Any]:
        """The metadata as JSON (for logs, health and debug answers), without the configuration."""
        return {
            "state": self.state,
            "source": self.source,
            "name": self.name,
            "namespace": self.namespace,
            "resourceVersion": self.resource_version,
            "generation": self.generation,
            "syncedAt": self.synced_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.synced_at else None,
        }


def choose_kubevirt(objects: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The KubeVirt CR whose configuration counts, or None.

    As KubeVirt's own components do (``GetConfigFromKubeVirtCR`` in kubevirt/kubevirt
    pkg/virt-config/config-map.go), only a CR that virt-operator has taken on (``status.phase``
    set) and that is not being deleted counts. KubeVirt runs one; should several qualify, the
    oldest (``metadata.creationTimestamp``), then the first by namespace and name, so every
    replica of this service picks the same.
    """
    eligible = [
        kv
        for kv in objects
        if not _metadata(kv).get("deletionTimestamp") and ((kv.get("status") or {}).get("phase") or "")
    ]
    if not eligible:
        return None
    return min(
        eligible,
        key=lambda kv: (
            str(_metadata(kv).get("creationTimestamp") or "~"),  # "~" sorts after any timestamp
            str(_metadata(kv).get("namespace") or ""),
            str(_metadata(kv).get("name") or ""),
        ),
    )


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = _metadata(obj)
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _now() -> datetime:
    return datetime.now(UTC)


# Every source in this process, so that a fork can reset them in the child (see _after_fork).
_SOURCES: weakref.WeakSet[KubeVirtConfigSource] = weakref.WeakSet()


@dataclass(slots=True)
class _Watch:
    """What the watch thread knows: the CRs by (namespace, name) and where to resume from."""

    objects: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    version: str | None = None  # None: list (again) before watching
    failures: int = 0
    expired: int = 0  # 410s in a row: a relist that does not help backs off too


class KubeVirtConfigSource:
    """The KubeVirt configuration: fixed (``KUBEVIRT_CONFIGURATION``), or watched in the cluster.

    :meth:`current` never waits on the API server: it answers the last configuration seen and
    the watch's state. The watch runs in a daemon thread of the process that first calls
    :meth:`start` or :meth:`current`; a forked child starts its own (see the package docstring).
    """

    def __init__(
        self,
        *,
        configuration: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        access: Access | None = None,
        request_timeout: float = 10.0,
        watch_seconds: int = 300,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
    ) -> None:
        self.namespace = namespace
        self.access = access or Access()
        self.request_timeout = request_timeout
        self.watch_seconds = watch_seconds
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.fixed = configuration is not None
        if configuration is not None:
            self._snapshot = KubeVirtConfig(dict(configuration), CONFIGURED, "setting")
        else:
            self._snapshot = KubeVirtConfig({}, NOT_YET_SYNCED, "cluster")
        self._reset()
        _SOURCES.add(self)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **options: Any) -> KubeVirtConfigSource:
        """From the settings ``KUBEVIRT_CONFIGURATION`` and ``KUBEVIRT_NAMESPACE`` (config.resolve)."""
        configuration = settings.get("KUBEVIRT_CONFIGURATION")
        if configuration is not None:
            return cls(configuration=configuration)
        return cls(namespace=settings.get("KUBEVIRT_NAMESPACE") or None, **options)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._pid = os.getpid()
        self._closed = False

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread and lock did not come along; start afresh."""
        if self.fixed:
            return
        self._reset()
        self._snapshot = KubeVirtConfig({}, NOT_YET_SYNCED, "cluster")

    # --- what callers use ----------------------------------------------------------------------

    def current(self) -> KubeVirtConfig:
        """The configuration now and its state (starts the watch on first use)."""
        if self._thread is None and not self.fixed:
            self.start()
        return self._snapshot

    def start(self) -> None:
        """Start watching in a daemon thread (once per process; no-op for a fixed configuration)."""
        if self.fixed:
            return
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="kubevirt-config", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the watch; True if its thread ended within ``timeout`` seconds (it is a daemon
        thread either way, so it never holds up the process's exit)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stop.set()
        if thread is None:
            return True
        # Repeated: a watch request sent just before stop() has no socket to close yet.
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            stream = self._stream
            if stream is not None:
                stream.stop()
            thread.join(0.05)
        return not thread.is_alive()

    # --- the watch thread ----------------------------------------------------------------------

    def _run(self) -> None:
        watch = _Watch()
        api: KubeApi | None = None
        try:
            while not self._stop.is_set():
                try:
                    if api is None:
                        from overhead_service.kube.client import connect  # the heavy import, here

                        api = connect(self.access)
                    self._cycle(api, watch)
                    watch.failures = watch.expired = 0
                except KubeApiError as err:
                    if self._stop.is_set():
                        break
                    if err.status == 410:  # too old to resume from: list again
                        watch.version, watch.expired = None, watch.expired + 1
                        log.info("KubeVirt watch: %s; listing again", err)
                        if watch.expired < 2:
                            continue
                    self._failed(watch, str(err))
                except KubeError as err:  # no credentials (yet): a token may still be mounted
                    self._failed(watch, str(err))
                except Exception as exc:  # never let the thread die: the snapshot would freeze
                    log.exception("KubeVirt watch: unexpected error")
                    self._failed(watch, f"{type(exc).__name__}: {exc}")
        finally:
            if api is not None:
                api.close()
            self._snapshot = replace(self._snapshot, state=STOPPED)

    def _cycle(self, api: KubeApi, watch: _Watch) -> None:
        """List if needed, then one watch request until the server ends it."""
        from overhead_service.kube.client import KUBEVIRTS

        if watch.version is None:
            listing = api.list_objects(KUBEVIRTS, self.namespace, timeout=self.request_timeout)
            items = listing.get("items") or []
            watch.objects = {_key(kv): kv for kv in items if isinstance(kv, Mapping)}
            watch.version = str(_metadata(listing).get("resourceVersion") or "")
            self._publish(watch)
        window = int(self.watch_seconds * (1 + random.random()))  # spread replicas' reconnects
        stream = api.watch_objects(
            KUBEVIRTS,
            self.namespace,
            resource_version=watch.version,
            timeout_seconds=max(window, 1),
            connect_timeout=self.request_timeout,
        )
        self._stream = stream
        try:
            if self._stop.is_set():
                return
            for event in stream:
                self._apply(watch, event, stream.operation)
                watch.expired = 0
        finally:
            self._stream = None
        # The server ended the window: everything up to now has been seen.
        self._snapshot = replace(self._snapshot, state=WATCHING, synced_at=_now())

    def _apply(self, watch: _Watch, event: Mapping[str, Any], operation: str) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            raise KubeApiError(operation, 200, "BadResponse", f"a {kind} event without an object")
        version = _metadata(obj).get("resourceVersion")
        if version:
            watch.version = str(version)
        if kind == "BOOKMARK":
            self._snapshot = replace(self._snapshot, state=WATCHING, synced_at=_now())
            return
        if kind in ("ADDED", "MODIFIED"):
            watch.objects[_key(obj)] = obj
        elif kind == "DELETED":
            watch.objects.pop(_key(obj), None)
        else:
            raise KubeApiError(operation, 200, "BadResponse", f"unknown event type {kind!r}")
        self._publish(watch)

    def _publish(self, watch: _Watch) -> None:
        """The snapshot from the chosen CR; with none, the last one's configuration stays in force
        (KubeVirt's components keep their last valid configuration too)."""
        previous = self._snapshot
        chosen = choose_kubevirt(watch.objects.values())
        now = _now()
        if chosen is None:
            if previous.name is not None and previous.state == WATCHING:
                log.warning("no active KubeVirt CR any more; keeping the configuration of %s", previous.name)
            self._snapshot = replace(previous, state=WATCHING, synced_at=now)
            return
        metadata = _metadata(chosen)
        configuration = (chosen.get("spec") or {}).get("configuration")
        if not isinstance(configuration, dict):
            configuration = {}
        generation = metadata.get("generation")
        snapshot = KubeVirtConfig(
            configuration=configuration,
            state=WATCHING,
            source="cluster",
            name=str(metadata.get("name") or "") or None,
            namespace=str(metadata.get("namespace") or "") or None,
            resource_version=str(metadata.get("resourceVersion") or "") or None,
            generation=generation if isinstance(generation, int) else None,
            synced_at=now,
        )
        if (snapshot.namespace, snapshot.name, snapshot.resource_version) != (
            previous.namespace,
            previous.name,
            previous.resource_version,
        ) or previous.state != WATCHING:
            log.info("KubeVirt configuration: %s", snapshot.describe())
        self._snapshot = snapshot

    def _failed(self, watch: _Watch, message: str) -> None:
        """Keep the last configuration, say why it may be stale, and wait before trying again."""
        watch.failures += 1
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (watch.failures - 1))
        delay *= 0.5 + random.random() / 2  # jitter: replicas do not retry in step
        self._snapshot = replace(self._snapshot, state=ERROR_PREFIX + message)
        log.warning("KubeVirt watch: %s; retrying in %.1f s", message, delay)
        self._stop.wait(delay)


def _after_fork() -> None:
    for source in list(_SOURCES):
        source._after_fork()


os.register_at_fork(after_in_child=_after_fork)
