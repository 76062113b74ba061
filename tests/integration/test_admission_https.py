"""The admission webhook over real HTTPS: gunicorn serving ``--certfile/--keyfile`` from a throwaway
CA, a client that verifies the certificate (as the API server does with the webhook's caBundle),
AdmissionReview round trips in every mode, a rotated certificate served without a restart, and the
fact that decided the deployment: gunicorn's TLS settings make every address it binds HTTPS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonpatch
import pytest
import requests

from benchmarks.harness.reviews import admission_review, defaulted_vmi
from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tls import TlsFiles, make_tls
from benchmarks.harness.tokens import ADMIN_TOKEN, TOKENS
from overhead_service import gunicorn_conf
from overhead_service.model.admission import ANNOTATIONS
from overhead_service.model.headroom import MIB

pytestmark = pytest.mark.gunicorn

CONFIGURATION = {"developerConfiguration": {"featureGates": ["ReservedOverheadMemlock"]}}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[GunicornServer]:
    directory = tmp_path_factory.mktemp("webhook")
    env = {
        "OVERHEAD_KUBEVIRT_CONFIGURATION": json.dumps(CONFIGURATION),
        "OVERHEAD_SYNC_SECONDS": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
    }
    (directory / "metrics").mkdir()
    with GunicornServer(
        f"sqlite:///{directory / 'store.db'}", tokens=TOKENS, workers=1, env=env, tls=tls
    ) as server:
        # T from kubevirt-main (QEMU 20Mi more than v1.9.0): every mode has something to do.
        activated = requests.post(
            f"{server.base_url}/v1/tables/kubevirt-main/activate",
            json={"hypervisor": "kvm", "arch": "*", "force": True, "reason": "admission test"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=str(tls.ca),
            timeout=10,
        )
        assert activated.status_code == 200, activated.text
        time.sleep(1)  # the worker's table sync (every 0.2 s) picks the activation up
        yield server


def _review(server: GunicornServer, ca: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{server.base_url}{path}", json=body, verify=str(ca), timeout=10)
    assert answer.status_code == 200, answer.text
    response: dict[str, Any] = answer.json()["response"]
    assert response["uid"] == body["request"]["uid"] and response["allowed"] is True
    return response


@pytest.mark.parametrize("mode", ["shadow", "headroom", "reserved-overhead", "off"])
def test_round_trip_over_https_in_every_mode(webhook: GunicornServer, tls: TlsFiles, mode: str) -> None:
    vmi = defaulted_vmi({"requests": {"memory": "4Gi"}, "limits": {"memory": "4Gi"}})
    body = admission_review(vmi)
    response = _review(webhook, tls.ca, f"/v1/admission/vmi/{mode}", body)
    if mode == "off":
        assert "patch" not in response
        return
    patched = jsonpatch.apply_patch(vmi, json.loads(base64.b64decode(response["patch"])))
    annotations = patched["metadata"]["annotations"]
    assert annotations[ANNOTATIONS["mode"]] == mode
    assert annotations[ANNOTATIONS["table"]] == "kubevirt-main"
    delta = int(annotations[ANNOTATIONS["predicted-bytes"]]) - int(annotations[ANNOTATIONS["upstream-bytes"]])
    assert delta == 20 * MIB
    if mode != "shadow":
        assert delta <= int(annotations[ANNOTATIONS["delta-bytes"]]) < delta + MIB


def test_the_client_really_verifies_the_certificate(webhook: GunicornServer, tmp_path: Path) -> None:
    stranger = make_tls(tmp_path / "other", label="other")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{webhook.base_url}/healthz", verify=str(stranger.ca), timeout=10)


def test_tls_applies_to_the_address_so_plain_http_needs_another_process(webhook: GunicornServer) -> None:
    """gunicorn wraps every accepted connection when certfile is set: the same process cannot also
    serve plain HTTP, hence a second server (container) for the webhook."""
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{webhook.port}/healthz", timeout=10)


def test_metrics_over_https_count_the_admissions(webhook: GunicornServer, tls: TlsFiles) -> None:
    _review(webhook, tls.ca, "/v1/admission/vmi/shadow", admission_review(defaulted_vmi()))
    text = requests.get(f"{webhook.base_url}/metrics", verify=str(tls.ca), timeout=10).text
    assert 'overhead_admissions_total{mode="shadow",outcome="annotated"}' in text
    assert 'route="/v1/admission/vmi/<mode>"' in text


def _served_certificate(port: int) -> bytes:
    """The DER certificate the server presents on a new connection (not verified here)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """The files are swapped as the kubelet swaps a Secret volume's (a rename); the next connection
    gets the new certificate, and the old CA no longer verifies it."""
    live = tmp_path / "live"
    first = make_tls(live, label="first")
    with GunicornServer(f"sqlite:///{tmp_path / 'store.db'}", tokens=TOKENS, workers=1, tls=first) as server:
        before = _served_certificate(server.port)
        second = make_tls(tmp_path / "next", label="second")
        for name in ("tls.crt", "tls.key"):
            staged = live / f".{name}.new"
            staged.write_bytes((tmp_path / "next" / name).read_bytes())
            os.replace(staged, live / name)
        assert _served_certificate(server.port) != before
        assert (
            requests.get(f"{server.base_url}/healthz", verify=str(second.ca), timeout=10).status_code == 200
        )
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.base_url}/healthz", verify=str(first.ca), timeout=10)


def test_the_tls_context_is_built_once_per_set_of_files(tmp_path: Path) -> None:
    """gunicorn asks for a context per connection; the settings' hook reuses one until a file
    changes (a new inode, as the kubelet's symlink swap gives)."""
    files = make_tls(tmp_path / "a")
    settings = SimpleNamespace(certfile=str(files.cert), keyfile=str(files.key), ca_certs=None)
    built: list[ssl.SSLContext] = []

    def factory() -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.certfile, settings.keyfile)
        built.append(context)
        return context

    first = gunicorn_conf.ssl_context(settings, factory)
    assert gunicorn_conf.ssl_context(settings, factory) is first
    assert len(built) == 1 and first.minimum_version == ssl.TLSVersion.TLSv1_2
    renewed = make_tls(tmp_path / "b")
    for name in ("tls.crt", "tls.key"):
        os.replace(renewed.cert.parent / name, files.cert.parent / name)
    assert gunicorn_conf.ssl_context(settings, factory) is not first
    assert len(built) == 2
