"""What the cluster benchmark asks the Kubernetes API, with its retry policy.

The talking is :mod:`overhead_service.kube` (the official ``kubernetes`` client library: REST, and
``pods/exec`` over its WebSocket), with any credentials it supports: the pod's service account, a
kubeconfig (tokens, client certificates, exec plugins), or ``--api-server`` with ``--token-file``.
This module adds the benchmark's policy: transient failures (no answer, 429, 5xx) are retried with
exponential backoff and jitter (``Retry-After`` wins when the server sends one), up to ``retries``
times; anything else is raised at once as :class:`ApiError` (the Kubernetes ``Status``: HTTP status,
reason, message) or, for a command that could not run, :class:`ExecError`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from overhead_service.kube import Access, KubeApiError, KubeError
from overhead_service.kube.client import KUBEVIRTS, VMIS, ExecOutput, KubeApi, connect

__all__ = ["MAX_EXEC_OUTPUT", "ApiError", "ExecError", "ExecResult", "KubeClient", "KubeError", "open_client"]

log = logging.getLogger(__name__)

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF: Final = 30.0
MAX_EXEC_OUTPUT: Final = 16 * 1024 * 1024
USER_AGENT: Final = "overhead-service-cluster-benchmark/1"

ApiError = KubeApiError
"""The API server answered with an error (after retries), or could not be reached (status 0)."""
ExecResult = ExecOutput
"""A command's stdout, stderr and final ``Status`` (``ok`` when it succeeded)."""

T = TypeVar("T")


class ExecError(Exception):
    """A ``pods/exec`` command could not run (refused, unreachable, timed out, too much output)."""


def open_client(access: Access, **options: Any) -> KubeClient:
    """A :class:`KubeClient` on the credentials ``access`` names; :class:`KubeError` if there are none."""
    return KubeClient(connect(access, user_agent=USER_AGENT), **options)


class KubeClient:
    """The requests the benchmark makes, each retried as the module docstring says."""

    def __init__(
        self,
        api: KubeApi,
        *,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._sleep = sleep

    def close(self) -> None:
        self.api.close()

    # --- nodes -----------------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any]:
        return self._retry(lambda: self.api.get_node(name, timeout=self.timeout_seconds))

    def nodes(self, label_selector: str = "") -> dict[str, Any]:
        return self._retry(
            lambda: self.api.list_nodes(label_selector=label_selector, timeout=self.timeout_seconds)
        )

    def stats_summary(self, node: str) -> dict[str, Any]:
        """The kubelet's memory and CPU summary, through the API server's node proxy."""
        return self._retry(
            lambda: self.api.node_proxy(
                node, "stats/summary", [("only_cpu_and_memory", "true")], timeout=self.timeout_seconds
            )
        )

    # --- KubeVirt --------------------------------------------------------------------------------

    def kubevirt(self, namespace: str, name: str) -> dict[str, Any]:
        return self._retry(
            lambda: self.api.get_object(KUBEVIRTS, namespace, name, timeout=self.timeout_seconds)
        )

    def vmis(self, namespace: str, label_selector: str) -> dict[str, Any]:
        return self._retry(
            lambda: self.api.list_objects(
                VMIS, namespace, label_selector=label_selector, timeout=self.timeout_seconds
            )
        )

    def vmi(self, namespace: str, name: str) -> dict[str, Any]:
        return self._retry(lambda: self.api.get_object(VMIS, namespace, name, timeout=self.timeout_seconds))

    def create_vmi(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._retry(
            lambda: self.api.create_object(VMIS, namespace, manifest, timeout=self.timeout_seconds)
        )

    def delete_vmi(self, namespace: str, name: str) -> bool:
        """Delete the VMI; False if it was already gone (404)."""
        try:
            self._retry(lambda: self.api.delete_object(VMIS, namespace, name, timeout=self.timeout_seconds))
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    # --- pods ------------------------------------------------------------------------------------

    def pods(self, namespace: str, label_selector: str) -> dict[str, Any]:
        return self._retry(
            lambda: self.api.list_pods(namespace, label_selector=label_selector, timeout=self.timeout_seconds)
        )

    def pod_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        return self._retry(
            lambda: self.api.pod_log(
                namespace, pod, container=container, tail_lines=tail_lines, timeout=self.timeout_seconds
            )
        )

    def exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        timeout_seconds: float | None = None,
    ) -> ExecResult:
        """Run ``command`` in ``container`` (no stdin, no TTY) and collect its output.

        Transient failures (no connection, 429/5xx before the upgrade) are retried; a command that
        runs and fails is not (see :attr:`ExecResult.ok`), nor one that timed out.
        """
        timeout = timeout_seconds or self.timeout_seconds
        try:
            return self._retry(
                lambda: self.api.exec(
                    namespace, pod, container, command, timeout=timeout, max_output=MAX_EXEC_OUTPUT
                ),
                exec_=True,
            )
        except ApiError as err:
            raise ExecError(str(err)) from None

    # --- retries ---------------------------------------------------------------------------------

    def _retry(self, call: Callable[[], T], *, exec_: bool = False) -> T:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except ApiError as err:
                # No answer is worth another try, unless a command ran out of time or output.
                transient = err.status in RETRY_STATUSES or (
                    err.status == 0 and not (exec_ and err.reason in ("Timeout", "OutputTooLarge"))
                )
                if not transient or attempt == self.retries:
                    raise
                delay = self._backoff(attempt, err.retry_after)
                log.warning("%s; retrying in %.1f s", err, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_BACKOFF)
        base = min(self.backoff_seconds * 2.0**attempt, MAX_BACKOFF)
        return float(base * (0.5 + random.random() / 2))  # jitter, so retrying clients do not align
