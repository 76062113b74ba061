"""The errors of :mod:`overhead_service.kube`: one type for "cannot talk to Kubernetes", one line each."""

from __future__ import annotations

__all__ = ["KubeApiError", "KubeError"]


class KubeError(Exception):
    """Kubernetes cannot be reached as configured: no or bad credentials, an unreadable kubeconfig,
    or (as :class:`KubeApiError`) an API request that failed. The message is one line."""

    def __init__(self, message: str) -> None:
        lines = message.strip().splitlines() or ["unknown error"]
        super().__init__(lines[0] if len(lines) == 1 else f"{lines[0]} ({' '.join(lines[1:])[:300]})")


class KubeApiError(KubeError):
    """An API request failed: the server's answer (a Kubernetes ``Status``), or none at all.

    ``status`` is the HTTP status, 0 when no answer came (``reason`` then says why: ``Unreachable``
    or ``Timeout``); ``reason`` and ``message`` come from the ``Status`` body when there is one.
    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        operation: str,
        status: int,
        reason: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.reason = reason
        self.message = " ".join(message.split())[:500]
        self.retry_after = retry_after
        code = f"{status} " if status else ""
        super().__init__(f"{operation}: {code}{reason}: {self.message}".rstrip(": "))
