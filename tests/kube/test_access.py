"""Credentials (explicit server and token, service account, kubeconfig with client certificates and
exec plugins) against a fake API server over TLS, and pods/exec through the library's WebSocket."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.harness.tls import CertificateAuthority
from overhead_service.kube import Access, KubeApiError, KubeError, KubeVirtConfigSource
from overhead_service.kube.client import KUBEVIRTS, KubeApi, connect
from tests.support.kube import (
    TOKEN,
    Exec,
    FakeApiServer,
    FakeKubeVirts,
    FakeRequest,
    Reply,
    Stream,
    kubevirt,
    wait_for,
)

PS_OUTPUT = "  RSS ARGS\n 1024 /usr/bin/virt-launcher\n" * 200  # large enough for several frames


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


def _route(kubevirts: FakeKubeVirts) -> Any:
    def route(request: FakeRequest) -> Reply | Stream | Exec:
        if request.upgrade and request.path == "/api/v1/namespaces/ns/pods/launcher/exec":
            assert request.query["command"] == ["ps", "-e"] and request.query["container"] == ["compute"]
            return Exec(PS_OUTPUT.encode(), b"warning\n", {"metadata": {}, "status": "Success"})
        return kubevirts.route(request)

    return route


@pytest.fixture
def tls_server(ca: CertificateAuthority) -> Iterator[FakeApiServer]:
    """Over TLS; authenticates bearer tokens (TOKEN, exec-token) or client certificates of the CA."""
    kubevirts = FakeKubeVirts()
    kubevirts.put(kubevirt(configuration={"vmRolloutStrategy": "LiveUpdate"}))
    with FakeApiServer(
        _route(kubevirts), tokens={TOKEN, "exec-token"}, tls=ca.server(), client_ca=ca.cert
    ) as server:
        kubevirts.closing = server.closing
        yield server


def _list(api: KubeApi) -> list[str]:
    listing = api.list_objects(KUBEVIRTS, None, timeout=5)
    return [item["metadata"]["name"] for item in listing["items"]]


def _kubeconfig(path: Path, server: str, ca: CertificateAuthority, user: dict[str, Any]) -> Path:
    """A kubeconfig whose current context is broken, and a context ``bench`` that works."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "stale",
        "contexts": [
            {"name": "stale", "context": {"cluster": "gone", "user": "nobody"}},
            {"name": "bench", "context": {"cluster": "test", "user": "tester"}},
        ],
        "clusters": [
            {"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}},
            {
                "name": "test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.cert_pem()).decode(),
                },
            },
        ],
        "users": [{"name": "nobody", "user": {"token": "nope"}}, {"name": "tester", "user": user}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_kubeconfig_with_a_client_certificate(
    tls_server: FakeApiServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    client = ca.client("tester", "overhead-admins")
    user = {
        "client-certificate-data": base64.b64encode(client.cert_pem()).decode(),
        "client-key-data": base64.b64encode(client.key_pem()).decode(),
    }
    kubeconfig = _kubeconfig(tmp_path / "config", tls_server.url, ca, user)
    api = connect(Access(kubeconfig=str(kubeconfig), context="bench", environ={}))
    try:
        assert api.where == f"kubeconfig {kubeconfig} context bench"
        assert _list(api) == ["kubevirt"]
        # pods/exec over the library's WebSocket, with the same client certificate.
        result = api.exec("ns", "launcher", "compute", ["ps", "-e"], timeout=10, max_output=1 << 20)
        assert (result.ok, result.stdout, result.stderr) == (True, PS_OUTPUT, "warning\n")
    finally:
        api.close()
    assert tls_server.users == ["tester", "tester"]
    # The watch thread of the service takes the same path.
    source = KubeVirtConfigSource(access=Access(kubeconfig=str(kubeconfig), context="bench", environ={}))
    try:
        snapshot = wait_for(source, lambda s: s.state == "watching")
        assert snapshot.configuration == {"vmRolloutStrategy": "LiveUpdate"}
    finally:
        assert source.stop()
    # Paths to the files work as well as inline data.
    user = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    kubeconfig = _kubeconfig(tmp_path / "config-files", tls_server.url, ca, user)
    api = connect(Access(kubeconfig=str(kubeconfig), context="bench", environ={}))
    assert _list(api) == ["kubevirt"]
    api.close()


def test_kubeconfig_with_an_exec_plugin(
    tls_server: FakeApiServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    seen = tmp_path / "exec-info.json"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os, sys\n"
        f"open({str(seen)!r}, 'w').write(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "json.dump({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "           'status': {'token': 'exec-token'}}, sys.stdout)\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    kubeconfig = _kubeconfig(tmp_path / "config", tls_server.url, ca, user)
    # $KUBECONFIG names it (a list, as kubectl merges them; the missing one is skipped).
    environ = {"KUBECONFIG": f"{tmp_path / 'missing'}:{kubeconfig}"}
    api = connect(Access(context="bench", environ=environ))
    try:
        assert _list(api) == ["kubevirt"]
    finally:
        api.close()
    assert tls_server.users == ["token"]  # the plugin's token was accepted
    assert json.loads(seen.read_text())["kind"] == "ExecCredential"


def test_in_cluster_service_account(
    tls_server: FakeApiServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "ca.crt").write_bytes(ca.cert_pem())
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(tls_server.port)}
    api = connect(Access(environ=environ, service_account_dir=account))
    try:
        assert api.where == f"service account at {tls_server.url}"
        assert _list(api) == ["kubevirt"]
    finally:
        api.close()
    assert tls_server.users == ["token"]
    # An IPv6 service address is bracketed; nothing is asked to learn that.
    v6 = connect(
        Access(
            environ={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
            service_account_dir=account,
        )
    )
    assert v6.host == "https://[fd00::1]:6443"
    v6.close()
    # A kubeconfig named explicitly wins over the pod's account.
    with pytest.raises(KubeError, match="no Kubernetes credentials: no kubeconfig at /nonexistent"):
        connect(Access(kubeconfig="/nonexistent", environ=environ, service_account_dir=account))


def test_explicit_server_and_token_file_reread_before_each_request(
    tls_server: FakeApiServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("exec-token\n")
    api = connect(Access(api_server=tls_server.url + "/", token_file=str(token), ca_file=str(ca.cert)))
    try:
        assert api.where == f"API server {tls_server.url}"
        assert _list(api) == ["kubevirt"]
        token.write_text("rotated")  # bound service-account tokens rotate
        with pytest.raises(KubeApiError) as caught:
            _list(api)
        assert (caught.value.status, caught.value.reason) == (401, "Unauthorized")
        assert str(caught.value) == "list kubevirts.kubevirt.io -A: 401 Unauthorized: Unauthorized"
    finally:
        api.close()
    # Without the CA the server's certificate is refused: no answer, said on one line.
    api = connect(Access(api_server=tls_server.url, token_file=str(token)))
    with pytest.raises(KubeApiError) as refused:
        _list(api)
    api.close()
    assert refused.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("access", "message"),
    [
        (
            Access(api_server="http://127.0.0.1:9", token_file="/nonexistent/token"),
            "cannot read the token file",
        ),
        (Access(kubeconfig="/nonexistent/config", environ={}), "no Kubernetes credentials"),
        (Access(environ={"KUBECONFIG": "/nonexistent/a:/nonexistent/b"}), "no kubeconfig at /nonexistent/a:"),
    ],
)
def test_missing_credentials_are_one_clear_error(access: Access, message: str) -> None:
    with pytest.raises(KubeError, match=message) as caught:
        connect(access)
    assert "\n" not in str(caught.value)


def test_a_broken_kubeconfig_is_one_clear_error(tmp_path: Path, ca: CertificateAuthority) -> None:
    kubeconfig = _kubeconfig(tmp_path / "config", "https://127.0.0.1:9", ca, {"token": "t"})
    with pytest.raises(
        KubeError, match="Kubernetes credentials: ConfigException: .*no-such-context"
    ) as caught:
        connect(Access(kubeconfig=str(kubeconfig), context="no-such-context"))
    assert "\n" not in str(caught.value)
    (tmp_path / "bad").write_text("clusters: [unclosed\n")
    with pytest.raises(
        KubeError, match="Kubernetes credentials: .*YAML|Kubernetes credentials: .*Error"
    ) as bad:
        connect(Access(kubeconfig=str(tmp_path / "bad")))
    assert "\n" not in str(bad.value)


def test_kubeconfig_with_a_bearer_token_in_its_current_context(
    tls_server: FakeApiServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "config", tls_server.url, ca, {"token": TOKEN})
    document = yaml.safe_load(kubeconfig.read_text())
    document["current-context"] = "bench"
    kubeconfig.write_text(yaml.safe_dump(document))
    api = connect(Access(environ={"KUBECONFIG": str(kubeconfig)}))
    try:
        assert api.where == f"kubeconfig {kubeconfig}"
        assert _list(api) == ["kubevirt"]
    finally:
        api.close()
    assert tls_server.users == ["token"]
