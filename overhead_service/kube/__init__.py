"""Talking to Kubernetes: the project's one way, built on the official ``kubernetes`` client library.

An infrastructure shell like :mod:`overhead_service.store`: no domain code lives here, and the domain
never imports it. The service uses it for the KubeVirt configuration; the cluster benchmark
(``benchmarks/cluster``) for everything it asks the API server.

- :mod:`~overhead_service.kube.access`: which credentials (an explicit API server and token file,
  the pod's service account, or a kubeconfig with whatever the library supports: client
  certificates, exec plugins, tokens).
- :mod:`~overhead_service.kube.client`: the only module importing the library, a narrow typed
  surface over it (REST, watches, ``pods/exec``). Importing it costs a worker about 110 ms and
  19 MiB, so nothing on the service's request path imports it (nor does this package's
  ``__init__``): the watch thread does, off the request path, and only without the setting.
- :mod:`~overhead_service.kube.kubevirt`: :class:`KubeVirtConfigSource`, the KubeVirt CR's
  ``spec.configuration``.

The KubeVirt configuration
--------------------------
With the setting ``KUBEVIRT_CONFIGURATION`` (the CR's ``spec.configuration`` as JSON), that object
is the configuration, in state ``configured``, and the cluster is never asked (nor the library
imported). Otherwise a daemon thread lists ``kubevirts.kubevirt.io/v1`` (in ``KUBEVIRT_NAMESPACE``,
or all namespaces: RBAC ``list`` and ``watch`` on ``kubevirts``), then watches from the list's
``resourceVersion`` with bookmarks, one request of 5 to 10 minutes after another (the server ends
each; the spread keeps replicas apart), resuming from the last version seen. A version too old to
resume from (410 Gone) means listing again. Any other failure (no credentials yet, API server
down, 5xx, a dropped connection) keeps the last configuration and retries after an exponential
backoff with jitter (1 s doubling to 60 s), resuming the watch where it stopped.

:meth:`KubeVirtConfigSource.current` never waits: it answers the last configuration with its
state:

- ``not-yet-synced``: no list has succeeded yet; the configuration is ``{}`` (KubeVirt's defaults);
- ``watching``: the configuration is the cluster's, confirmed at ``synced_at``;
- ``error: <why>``: the last attempt failed; the configuration is the last one seen (``{}`` if none:
  check ``usable``), and the thread is retrying;
- ``stopped``: :meth:`~KubeVirtConfigSource.stop` was called.

The snapshot also names the CR (namespace, name, ``resourceVersion``, ``generation``). Which CR
counts is :func:`choose_kubevirt`'s rule, KubeVirt's own: one virt-operator has taken on
(``status.phase`` set) and not being deleted; should several qualify, the oldest, then by namespace
and name. With none (KubeVirt not installed yet), ``{}``; after the CR goes, its configuration stays,
as it does in KubeVirt's running components.

Processes: the thread belongs to the process that started it, and starts on the first
:meth:`~KubeVirtConfigSource.start` or :meth:`~KubeVirtConfigSource.current` in a process. Under
gunicorn, where each worker builds its own application after the fork, each worker runs its own
watch (one cheap watch connection per worker). Should a process with a running watch fork, the
child's copy resets itself (``os.register_at_fork``) and starts its own thread on first use rather
than inheriting a lock or a socket. :meth:`~KubeVirtConfigSource.stop` ends the thread (closing the
watch's socket) within its timeout.
"""

from __future__ import annotations

from overhead_service.kube.access import SERVICE_ACCOUNT_DIR, Access
from overhead_service.kube.errors import KubeApiError, KubeError
from overhead_service.kube.kubevirt import KubeVirtConfig, KubeVirtConfigSource, choose_kubevirt

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "Access",
    "KubeApiError",
    "KubeError",
    "KubeVirtConfig",
    "KubeVirtConfigSource",
    "choose_kubevirt",
]
