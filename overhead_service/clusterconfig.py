"""Where the cluster's KubeVirt configuration (the KubeVirt CR's ``spec.configuration``) comes from.

The admission webhook needs it for every VMI (ratio, feature gates, hypervisors, network-binding
plugins, memory overcommit) and must never wait for it: a :class:`ConfigSource` answers from what
it holds, at once. :func:`config_source` picks one from the settings:

- ``KUBEVIRT_CONFIGURATION`` set: that JSON object, fixed (:class:`StaticConfigSource`, state
  ``static``);
- otherwise: none yet (:class:`MissingConfigSource`, state ``unavailable``): the webhook allows
  every VMI unpatched and says why. A source that reads and watches the KubeVirt CR in the cluster
  plugs in here (same protocol).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ConfigSource",
    "MissingConfigSource",
    "StaticConfigSource",
    "config_source",
    "parse_configuration",
]


@runtime_checkable
class ConfigSource(Protocol):
    """The cluster's KubeVirt configuration as last known, never blocking."""

    def current(self) -> tuple[dict[str, Any] | None, str]:
        """``(spec.configuration or None, state)``; the state is for logs and metrics."""
        ...


def parse_configuration(value: Any, source: str) -> dict[str, Any]:
    """A ``spec.configuration`` given as a JSON text (an environment variable) or already decoded."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise ValueError(
                f"{source} must be a JSON object (the KubeVirt CR's spec.configuration): {err}"
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{source} must be a JSON object (the KubeVirt CR's spec.configuration)")
    return value


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


def config_source(settings: Mapping[str, Any]) -> ConfigSource:
    """The source the settings ask for (``KUBEVIRT_CONFIGURATION``, already parsed by
    :func:`overhead_service.config.resolve`)."""
    configuration = settings.get("KUBEVIRT_CONFIGURATION")
    if configuration is not None:
        return StaticConfigSource(configuration)
    return MissingConfigSource()
