"""Where the cluster's KubeVirt configuration (the KubeVirt CR's ``spec.configuration``) comes from.

The admission webhook needs it for every VMI (ratio, feature gates, hypervisors, network-binding
plugins, memory overcommit) and must never wait for it: a :class:`ConfigSource` answers from what
it holds, at once. :func:`config_source` picks one from the settings:

- ``KUBEVIRT_CONFIGURATION`` set: that JSON object, fixed (:class:`StaticConfigSource`, state
  ``static``);
- otherwise, with Kubernetes credentials at hand (the pod's service-account token, or a
  kubeconfig): the KubeVirt CR read and watched in the cluster (:class:`WatchedConfigSource`; the
  states are :mod:`overhead_service.kube`'s: ``not-yet-synced``, ``watching``, ``error: <why>``).
  The watch starts here, in the process that builds the application (each gunicorn worker);
  ``KUBEVIRT_NAMESPACE`` narrows it to one namespace;
- otherwise: none (:class:`MissingConfigSource`, state ``unavailable``): the webhook allows
  every VMI unpatched and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # imported when a watch is wanted (config_source), not with this module
    from overhead_service.kube import Access, KubeVirtConfigSource

__all__ = [
    "ConfigSource",
    "MissingConfigSource",
    "StaticConfigSource",
    "WatchedConfigSource",
    "config_source",
]


@runtime_checkable
class ConfigSource(Protocol):
    """The cluster's KubeVirt configuration as last known, never blocking."""

    def current(self) -> tuple[dict[str, Any] | None, str]:
        """``(spec.configuration or None, state)``; the state is for logs and metrics."""
        ...


class StaticConfigSource:
    """A configuration fixed by the settings."""

    __slots__ = ("_configuration",)

    def __init__(self, configuration: dict[str, Any]) -> None:
        self._configuration = configuration

    def current(self) -> tuple[dict[str, Any] | None, str]:
        return self._configuration, "static"


class MissingConfigSource:
    """No configuration: nothing says what the cluster's KubeVirt computes."""

    __slots__ = ()

    def current(self) -> tuple[dict[str, Any] | None, str]:
        return None, "unavailable"


class WatchedConfigSource:
    """The KubeVirt CR in the cluster, watched in a daemon thread: its configuration once listed
    (kept while a later failure stops it from being refreshed; the state says so), else None."""

    __slots__ = ("watch",)

    def __init__(self, watch: KubeVirtConfigSource) -> None:
        self.watch = watch

    def current(self) -> tuple[dict[str, Any] | None, str]:
        snapshot = self.watch.current()
        return (snapshot.configuration if snapshot.usable else None), snapshot.state


def config_source(settings: Mapping[str, Any], access: Access | None = None) -> ConfigSource:
    """The source the settings ask for (``KUBEVIRT_CONFIGURATION``, ``KUBEVIRT_NAMESPACE``, already
    parsed by :func:`overhead_service.config.resolve`) and the credentials allow (``access``,
    default: found as :mod:`overhead_service.kube.access` says)."""
    configuration = settings.get("KUBEVIRT_CONFIGURATION")
    if configuration is not None:
        return StaticConfigSource(configuration)
    from overhead_service.kube import Access, KubeVirtConfigSource

    access = access or Access()
    if not access.available():
        return MissingConfigSource()
    watch = KubeVirtConfigSource.from_settings(settings, access=access)
    watch.start()  # now, so that the first VMIs find the configuration already synced
    return WatchedConfigSource(watch)
