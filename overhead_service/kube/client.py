"""The project's one door to the Kubernetes API: the official ``kubernetes`` client library, typed.

This is the only module that imports ``kubernetes`` (checked by ``lint-imports``). The library is
large (kubernetes 37: about 140 ms and 36 MiB to import into a fresh interpreter, 110 ms and 19 MiB
into a worker that has the application loaded) and, to mypy, untyped, so it is imported only when a
caller needs the cluster, and only through the narrow typed surface below: credentials
(:func:`connect`), REST reads and writes, watches (:class:`WatchStream`) and ``pods/exec``.

Answers are the JSON the API server sent, as dicts: the library's generated models are bypassed
(``_preload_content=False``), so no field is lost or converted. Every failure is a
:class:`~overhead_service.kube.errors.KubeApiError` (or a :class:`~overhead_service.kube.errors.KubeError`
for credentials), never a library exception. Nothing here retries on status codes: callers decide
(the benchmark retries 429 and 5xx, the KubeVirt watch backs off and relists).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import urllib3
import websocket  # websocket-client, the library's transport for pods/exec
import yaml
from kubernetes import client as k8s
from kubernetes.config import ConfigException, load_kube_config
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.stream import stream as websocket_request
from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL
from kubernetes.watch import Watch

from overhead_service.kube.access import Access
from overhead_service.kube.errors import KubeApiError, KubeError

__all__ = ["KUBEVIRTS", "VMIS", "ExecOutput", "KubeApi", "Resource", "WatchStream", "connect"]

USER_AGENT: Final = "overhead-service"


@dataclass(frozen=True, slots=True)
class Resource:
    """A custom resource: ``/apis/<group>/<version>/[namespaces/<ns>/]<plural>``."""

    group: str
    version: str
    plural: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}"

    def at(self, namespace: str | None) -> tuple[str, ...]:
        """The positional arguments of the library's custom-object calls, in a namespace or all."""
        if namespace is None:
            return (self.group, self.version, self.plural)
        return (self.group, self.version, namespace, self.plural)


KUBEVIRTS: Final = Resource("kubevirt.io", "v1", "kubevirts")
VMIS: Final = Resource("kubevirt.io", "v1", "virtualmachineinstances")


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """What a command run through ``pods/exec`` wrote, and the ``Status`` it ended with."""

    stdout: str
    stderr: str
    status: dict[str, Any]  # {"status": "Success"}, or a Failure with the exit code in details

    @property
    def ok(self) -> bool:
        return self.status.get("status") == "Success"


def connect(access: Access, *, user_agent: str = USER_AGENT) -> KubeApi:
    """A client for the API server ``access`` names; :class:`KubeError` (one line) if it cannot be set up.

    An exec plugin named by a kubeconfig runs here (and again when its credential expires).
    """
    configuration = k8s.Configuration()
    configuration.retries = 0  # urllib3 retries nothing: each caller has its own policy
    try:
        where = _configure(configuration, access)
    except KubeError:
        raise
    except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError, KeyError) as exc:
        raise KubeError(f"Kubernetes credentials: {type(exc).__name__}: {exc}") from None
    api_client = k8s.ApiClient(configuration)
    api_client.user_agent = user_agent
    return KubeApi(api_client, where)


def _configure(configuration: Any, access: Access) -> str:
    """Fill the library's Configuration from the first source that applies; describe it."""
    if access.api_server:
        configuration.host = access.api_server.rstrip("/")
        if access.ca_file:
            configuration.ssl_ca_cert = access.ca_file
        if access.token_file:
            token_file = Path(access.token_file)
            configuration.api_key["BearerToken"] = _bearer(token_file)

            def reread(config: Any) -> None:  # the library calls this before every request
                config.api_key["BearerToken"] = _bearer(token_file)

            configuration.refresh_api_key_hook = reread
        return f"API server {configuration.host}"
    if access.in_pod():
        account = access.service_account_dir
        loader = InClusterConfigLoader(
            token_filename=str(account / "token"), cert_filename=str(account / "ca.crt"), environ=access.env()
        )
        loader.load_and_set(configuration)
        return f"service account at {configuration.host}"
    paths = access.kubeconfig_paths()
    if not access.available():
        raise KubeError(
            f"no Kubernetes credentials: no kubeconfig at {paths}, and not in a pod with a service "
            "account (give an API server and a token file, or a kubeconfig)"
        )
    load_kube_config(
        config_file=paths,
        context=access.context or None,
        client_configuration=configuration,
        persist_config=False,  # never rewrite the user's kubeconfig
    )
    return f"kubeconfig {paths}" + (f" context {access.context}" if access.context else "")


def _bearer(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KubeError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise KubeError(f"the token file {path} is empty")
    return f"Bearer {token}"


class KubeApi:
    """One API server, through the library's ``ApiClient``. Safe to share between threads, except
    :meth:`exec` (the library swaps a method of its client for the duration of the upgrade)."""

    def __init__(self, api_client: Any, where: str) -> None:
        self.where = where
        self.host: str = api_client.configuration.host
        self._client = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._exec_core: Any = None

    def close(self) -> None:
        self._client.close()
        if self._exec_core is not None:
            self._exec_core.api_client.close()

    # --- core ------------------------------------------------------------------------------------

    def get_node(self, name: str, *, timeout: float) -> dict[str, Any]:
        return self._json(f"get nodes/{name}", lambda: self._core.read_node(name, **_raw(timeout)))

    def list_nodes(self, *, label_selector: str = "", timeout: float) -> dict[str, Any]:
        selector = label_selector or None
        return self._json(
            "list nodes", lambda: self._core.list_node(label_selector=selector, **_raw(timeout))
        )

    def node_proxy(
        self, node: str, path: str, query: Sequence[tuple[str, str]] = (), *, timeout: float
    ) -> dict[str, Any]:
        """GET ``/api/v1/nodes/<node>/proxy/<path>?<query>`` (e.g. the kubelet's ``stats/summary``).

        The generated ``connect_get_node_proxy_with_path`` takes no query and escapes the slashes
        of ``path``, so the request is built with the library's own serializer instead.
        """
        segments = "/".join(quote(part, safe="") for part in path.split("/"))

        def call() -> Any:
            request = self._client.param_serialize(
                method="GET",
                resource_path=f"/api/v1/nodes/{{name}}/proxy/{segments}",
                path_params={"name": node},
                query_params=list(query),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*request, _request_timeout=timeout)
            response.read()
            if not 200 <= response.status <= 299:
                raise k8s.ApiException(http_resp=response)
            return response

        return self._json(f"get nodes/{node}/proxy/{path}", call)

    def list_pods(self, namespace: str, *, label_selector: str = "", timeout: float) -> dict[str, Any]:
        selector = label_selector or None
        return self._json(
            f"list pods -n {namespace}",
            lambda: self._core.list_namespaced_pod(namespace, label_selector=selector, **_raw(timeout)),
        )

    def pod_log(self, namespace: str, name: str, *, container: str, tail_lines: int, timeout: float) -> str:
        response = self._call(
            f"get pods/{name}/log -n {namespace}",
            lambda: self._core.read_namespaced_pod_log(
                name, namespace, container=container, tail_lines=tail_lines, **_raw(timeout)
            ),
        )
        return bytes(response.data).decode("utf-8", errors="replace")

    # --- custom resources ------------------------------------------------------------------------

    def get_object(self, resource: Resource, namespace: str, name: str, *, timeout: float) -> dict[str, Any]:
        return self._json(
            f"get {resource}/{name} -n {namespace}",
            lambda: self._custom.get_namespaced_custom_object(*resource.at(namespace), name, **_raw(timeout)),
        )

    def list_objects(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", timeout: float
    ) -> dict[str, Any]:
        """The list (``items`` and ``metadata.resourceVersion``), in one namespace or (None) all."""
        selector = label_selector or None
        if namespace is None:
            list_all = self._custom.list_cluster_custom_object
            return self._json(
                f"list {resource} -A",
                lambda: list_all(*resource.at(None), label_selector=selector, **_raw(timeout)),
            )
        list_in = self._custom.list_namespaced_custom_object
        return self._json(
            f"list {resource} -n {namespace}",
            lambda: list_in(*resource.at(namespace), label_selector=selector, **_raw(timeout)),
        )

    def create_object(
        self, resource: Resource, namespace: str, body: Mapping[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        return self._json(
            f"create {resource} -n {namespace}",
            lambda: self._custom.create_namespaced_custom_object(
                *resource.at(namespace), dict(body), **_raw(timeout)
            ),
        )

    def delete_object(
        self, resource: Resource, namespace: str, name: str, *, timeout: float
    ) -> dict[str, Any]:
        return self._json(
            f"delete {resource}/{name} -n {namespace}",
            lambda: self._custom.delete_namespaced_custom_object(
                *resource.at(namespace), name, **_raw(timeout)
            ),
        )

    def watch_objects(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int,
        connect_timeout: float,
    ) -> WatchStream:
        """Events after ``resource_version`` until the server ends the watch (``timeout_seconds``).

        Bookmarks are asked for. A resource version too old to resume from ends the stream with a
        :class:`KubeApiError` of status 410: list again, then watch from the list's version.
        """
        if namespace is None:
            func: Callable[..., Any] = self._custom.list_cluster_custom_object
            where = "-A"
        else:
            func = self._custom.list_namespaced_custom_object
            where = f"-n {namespace}"
        kwargs = {
            "resource_version": resource_version,
            "timeout_seconds": timeout_seconds,  # also turns off the library's own 410 retry
            "allow_watch_bookmarks": True,
            # Connect, then each read: a silent connection is dead a little after the server's end.
            "_request_timeout": (connect_timeout, timeout_seconds + 30.0),
        }
        return WatchStream(f"watch {resource} {where}", func, resource.at(namespace), kwargs)

    # --- pods/exec -------------------------------------------------------------------------------

    def exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        timeout: float,
        max_output: int,
    ) -> ExecOutput:
        """Run ``command`` (no stdin, no TTY) over the library's WebSocket and collect its output.

        :class:`KubeApiError`: the upgrade was refused (the API server's status), the connection
        failed or broke (status 0, ``Unreachable``), no end within ``timeout`` (``Timeout``), or
        more than ``max_output`` bytes (``OutputTooLarge``).
        """
        operation = f"exec {' '.join(command)} in pods/{pod} -n {namespace}"
        if self._exec_core is None:  # its own ApiClient: stream() patches the client it is given
            self._exec_core = k8s.CoreV1Api(k8s.ApiClient(self._client.configuration))
            self._exec_core.api_client.user_agent = self._client.user_agent
        previous = websocket.getdefaulttimeout()
        websocket.setdefaulttimeout(timeout)  # the library connects without a timeout of its own
        try:
            ws = websocket_request(
                self._exec_core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=list(command),
                container=container,
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        except k8s.ApiException as exc:
            raise _upgrade_error(operation, exc) from None
        finally:
            websocket.setdefaulttimeout(previous)
        try:
            result = _collect(ws, operation, time.monotonic() + timeout, max_output)
            ws.close()  # the close handshake, unless the server closed first
        finally:
            if ws.sock is not None:  # closed by the server, or given up on: no handshake
                ws.sock.shutdown()
        return result

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except k8s.ApiException as exc:
            raise _api_error(operation, exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _no_answer(operation, exc) from None

    def _json(self, operation: str, call: Callable[[], Any]) -> dict[str, Any]:
        response = self._call(operation, call)
        try:
            value = json.loads(response.data)
        except (ValueError, urllib3.exceptions.HTTPError):
            raise KubeApiError(operation, response.status, "BadResponse", "not JSON") from None
        if not isinstance(value, dict):
            raise KubeApiError(operation, response.status, "BadResponse", "not a JSON object")
        return value


class WatchStream:
    """The events of one watch request: ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}``.

    Iterate it once; :meth:`stop` (from any thread) ends the iteration promptly, closing the socket.
    """

    def __init__(
        self, operation: str, func: Callable[..., Any], args: tuple[str, ...], kwargs: dict[str, Any]
    ):
        self.operation = operation
        self._watch = Watch()
        self._func = func
        self._args = args
        self._kwargs = kwargs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for event in self._watch.stream(self._func, *self._args, **self._kwargs):
                yield {"type": str(event.get("type", "")), "object": event.get("raw_object")}
        except k8s.ApiException as exc:
            raise _api_error(self.operation, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _no_answer(self.operation, exc) from None
        except ValueError as exc:  # a line that is not a watch event
            raise KubeApiError(self.operation, 200, "BadResponse", str(exc)) from None

    def stop(self) -> None:
        self._watch.stop()


def _raw(timeout: float) -> dict[str, Any]:
    """The JSON as sent (no models), within ``timeout`` seconds."""
    return {"_preload_content": False, "_request_timeout": timeout}


def _collect(ws: Any, operation: str, deadline: float, max_output: int) -> ExecOutput:
    """Read the exec channels until the final status (or the close), within the deadline."""
    out, err, status = bytearray(), bytearray(), bytearray()
    try:
        while ws.is_open() and not status:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KubeApiError(operation, 0, "Timeout", "the command did not end in time")
            ws.update(timeout=remaining)
            out += ws.read_channel(STDOUT_CHANNEL)
            err += ws.read_channel(STDERR_CHANNEL)
            status += ws.read_channel(ERROR_CHANNEL)
            if len(out) + len(err) > max_output:
                raise KubeApiError(operation, 0, "OutputTooLarge", f"more than {max_output} bytes")
    except websocket.WebSocketTimeoutException:
        raise KubeApiError(operation, 0, "Timeout", "the command did not end in time") from None
    except (websocket.WebSocketException, OSError) as exc:
        raise KubeApiError(operation, 0, "Unreachable", f"{type(exc).__name__}: {exc}") from None
    try:
        final = json.loads(bytes(status)) if status else {"status": "Unknown"}
    except ValueError:
        final = {"status": "Failure", "message": bytes(status).decode(errors="replace")}
    return ExecOutput(
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        status=final if isinstance(final, dict) else {"status": "Unknown"},
    )


def _status_fields(body: str | bytes | None, reason: str, fallback: str) -> tuple[str, str]:
    """(reason, message) from a Kubernetes ``Status`` body, else the HTTP reason and the raw body."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        status = json.loads(text)
    except ValueError:
        return reason, text[:500] or fallback
    if isinstance(status, dict) and status.get("kind") == "Status":
        return str(status.get("reason") or reason), str(status.get("message") or fallback)
    return reason, text[:500] or fallback


def _api_error(operation: str, exc: Any) -> KubeApiError:
    status = int(exc.status or 0)
    if status == 0:  # the library's wrapper for a TLS or transport failure
        return KubeApiError(operation, 0, "Unreachable", str(exc.reason or exc))
    reason, message = _status_fields(exc.body, str(exc.reason or ""), str(exc.reason or ""))
    headers = exc.headers or {}
    retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
    delay = float(retry_after) if retry_after and str(retry_after).isdigit() else None
    return KubeApiError(operation, status, reason, message, retry_after=delay)


def _upgrade_error(operation: str, exc: Any) -> KubeApiError:
    """The library reports a failed WebSocket upgrade as ApiException(status=0, reason=text), with
    websocket-client's exception (which has the HTTP status and body) as its context."""
    cause = exc.__context__
    if isinstance(cause, websocket.WebSocketBadStatusException):
        message = str(cause.status_message or "")
        reason, message = _status_fields(cause.resp_body, message, message)
        return KubeApiError(operation, int(cause.status_code), reason, message)
    if isinstance(cause, websocket.WebSocketTimeoutException | TimeoutError):
        return KubeApiError(operation, 0, "Timeout", str(cause))
    return KubeApiError(operation, 0, "Unreachable", str(cause or exc.reason or exc))


def _no_answer(operation: str, exc: BaseException) -> KubeApiError:
    """No answer: ``Timeout`` when a deadline passed, else ``Unreachable``, with the root cause."""
    cause = getattr(exc, "reason", None) or exc  # urllib3's MaxRetryError wraps the real error
    errors = urllib3.exceptions
    timed_out = isinstance(cause, errors.ReadTimeoutError | TimeoutError) or (
        isinstance(cause, errors.ConnectTimeoutError) and not isinstance(cause, errors.NewConnectionError)
    )
    return KubeApiError(
        operation, 0, "Timeout" if timed_out else "Unreachable", f"{type(cause).__name__}: {cause}"
    )
