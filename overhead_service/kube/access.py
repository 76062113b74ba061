"""Which credentials to use for the Kubernetes API (a plain description; nothing is loaded here).

:func:`overhead_service.kube.client.connect` resolves an :class:`Access` in this order:

1. ``api_server`` given: that URL, with the bearer token in ``token_file`` (read again before each
   request, as bound service-account tokens rotate) and ``ca_file`` (else the system's CAs);
2. neither ``kubeconfig`` nor ``context`` given, and running in a pod (``$KUBERNETES_SERVICE_HOST``
   set and a service-account token in ``service_account_dir``): the pod's service account;
3. a kubeconfig: ``kubeconfig``, else ``$KUBECONFIG`` (a list of files, merged as kubectl does),
   else ``~/.kube/config``; its current context or ``context``; anything the ``kubernetes`` client
   library supports: bearer tokens and token files, client certificates (files or ``-data``),
   exec plugins (``client.authentication.k8s.io``), OIDC, basic auth, ``insecure-skip-tls-verify``,
   ``tls-server-name`` and ``proxy-url``.

Explicit options win over the environment: an operator who names a server or a kubeconfig means it,
even inside a pod.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SERVICE_ACCOUNT_DIR", "Access"]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class Access:
    """Where the credentials come from (see the module docstring for the order)."""

    api_server: str = ""
    token_file: str = ""
    ca_file: str = ""
    kubeconfig: str = ""
    context: str = ""
    environ: Mapping[str, str] | None = None  # None: os.environ
    service_account_dir: Path = SERVICE_ACCOUNT_DIR

    def env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def in_pod(self) -> bool:
        """Whether the pod's service account is the source (rule 2)."""
        env = self.env()
        return (
            not (self.api_server or self.kubeconfig or self.context)
            and bool(env.get("KUBERNETES_SERVICE_HOST"))
            and (self.service_account_dir / "token").is_file()
        )

    def kubeconfig_paths(self) -> str:
        """The kubeconfig files of rule 3, ``os.pathsep``-separated."""
        home = Path.home() / ".kube" / "config"
        return self.kubeconfig or self.env().get("KUBECONFIG", "") or str(home)

    def available(self) -> bool:
        """Whether any source applies (nothing is read but the files' existence): an explicit
        server, the pod's service account, or an existing kubeconfig file."""
        if self.api_server or self.in_pod():
            return True
        return any(Path(p).expanduser().is_file() for p in self.kubeconfig_paths().split(os.pathsep) if p)
