"""The admission webhook's manifests, offline: overlays/single-webhook and overlays/ha-webhook
rendered by kustomize, validated strictly against the Kubernetes schemas; cert-manager's objects
(no schema offline) checked by hand; and the wiring between them: webhook configuration, Service,
container, certificate Secret, routes, settings, RBAC and NetworkPolicy.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner
from flask import Flask

from overhead_service import cli, config, multiproc
from overhead_service.model.admission import LABEL, MODES
from tests.integration.test_deploy import (
    DEPLOY,
    VERSIONS,
    Doc,
    _all,
    _assert_restricted,
    _matches,
    _one,
    _render,
)

TARGETS = {
    "single-webhook": DEPLOY / "overlays" / "single-webhook",
    "ha-webhook": DEPLOY / "overlays" / "ha-webhook",
}
UNVALIDATED = {"ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"}  # CRDs: checked by hand
NAME = "overhead-service"
KUBEVIRT_MUTATOR = "virt-api-mutator"  # KubeVirt's own MutatingWebhookConfiguration (virt-operator)
_SEGMENT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: _render(path) for name, path in TARGETS.items()}


def _pod(docs: list[Doc]) -> Doc:
    return dict(_one(docs, "Deployment", NAME)["spec"]["template"]["spec"])


def _containers(docs: list[Doc]) -> dict[str, Doc]:
    return {container["name"]: container for container in _pod(docs)["containers"]}


def _environ(docs: list[Doc], container: Doc) -> dict[str, str]:
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        environ[item["name"]] = item.get("value", "postgresql+psycopg://from-a-secret/overhead")
    return environ


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_document_validates_strictly(rendered: dict[str, list[Doc]], target: str, version: str) -> None:
    unvalidated = set()
    for doc in rendered[target]:
        try:
            assert kubernetes_validate.validate(doc, version, strict=True) == version
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(doc["kind"])
    assert unvalidated == UNVALIDATED


@pytest.mark.parametrize("target", TARGETS)
def test_the_pod_still_meets_the_restricted_standard(rendered: dict[str, list[Doc]], target: str) -> None:
    pod = _pod(rendered[target])
    _assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False  # only the webhook container gets a token
    mounted = {c["name"]: {m["name"] for m in c["volumeMounts"]} for c in pod["containers"]}
    assert "kube-api-access" in mounted["webhook"] and "kube-api-access" not in mounted[NAME]


def _certificates(docs: list[Doc]) -> tuple[dict[str, Doc], dict[str, Doc]]:
    issuers = {doc["metadata"]["name"]: doc for doc in _all(docs, "Issuer")}
    certificates = {doc["metadata"]["name"]: doc for doc in _all(docs, "Certificate")}
    for doc in [*issuers.values(), *certificates.values()]:
        assert doc["apiVersion"] == "cert-manager.io/v1"
        assert doc["metadata"]["namespace"] == NAME
    return issuers, certificates


_CERTIFICATE_FIELDS = {
    "isCA", "commonName", "secretName", "duration", "renewBefore", "privateKey", "issuerRef", "dnsNames",
    "usages",
}  # fmt: skip


@pytest.mark.parametrize("target", TARGETS)
def test_cert_manager_objects_chain_up_to_the_injected_ca(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    docs = rendered[target]
    issuers, certificates = _certificates(docs)
    for issuer in issuers.values():
        assert len(issuer["spec"]) == 1 and set(issuer["spec"]) <= {"selfSigned", "ca"}
    for certificate in certificates.values():
        spec = certificate["spec"]
        assert set(spec) <= _CERTIFICATE_FIELDS, set(spec) - _CERTIFICATE_FIELDS
        assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuers
        assert spec["privateKey"]["rotationPolicy"] == "Always"
    # The serving certificate is signed by the CA issuer, whose Secret the CA certificate fills.
    webhook_config = _one(docs, "MutatingWebhookConfiguration")
    namespace, name = webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    serving = certificates[name]
    assert namespace == serving["metadata"]["namespace"]
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    ca_certificate = next(c for c in certificates.values() if c["spec"].get("isCA"))
    assert ca_issuer["spec"]["ca"]["secretName"] == ca_certificate["spec"]["secretName"]
    assert "selfSigned" in issuers[ca_certificate["spec"]["issuerRef"]["name"]]["spec"]
    service = _one(docs, "Service", NAME)
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert host in serving["spec"]["dnsNames"]
    assert "server auth" in serving["spec"]["usages"]
    # The webhook container serves that Secret's files.
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    webhook = _containers(docs)["webhook"]
    tls_mount = next(m for m in webhook["volumeMounts"] if "secret" in volumes[m["name"]])
    assert volumes[tls_mount["name"]]["secret"]["secretName"] == serving["spec"]["secretName"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in webhook["args"])
    assert args["certfile"] == f"{tls_mount['mountPath']}/tls.crt"
    assert args["keyfile"] == f"{tls_mount['mountPath']}/tls.key"


def test_the_container_args_are_what_serve_accepts(
    rendered: dict[str, list[Doc]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook = _containers(rendered["single-webhook"])["webhook"]
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    args = [arg.replace("=/etc/overhead-service/webhook-tls", f"={tmp_path}") for arg in webhook["args"]]
    monkeypatch.setenv(multiproc.ENV, str(tmp_path))  # serve keeps an operator's directory
    seen: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: seen.append(list(argv)))
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 0, result.output
    (argv,) = seen
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8443"
    assert argv[argv.index("--certfile") + 1] == str(tmp_path / "tls.crt")
    assert argv[argv.index("--keyfile") + 1] == str(tmp_path / "tls.key")


@pytest.mark.parametrize("target", TARGETS)
def test_webhooks_call_the_route_through_the_service(
    rendered: dict[str, list[Doc]], target: str, app: Flask
) -> None:
    docs = rendered[target]
    configuration = _one(docs, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] > KUBEVIRT_MUTATOR  # called after KubeVirt's defaults
    service = _one(docs, "Service", NAME)
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    webhook = _containers(docs)["webhook"]
    (container_port,) = webhook["ports"]
    assert ports["webhook"]["targetPort"] == container_port["name"]
    assert f"--bind=0.0.0.0:{container_port['containerPort']}" in webhook["args"]
    routes = {rule.rule: rule for rule in app.url_map.iter_rules()}
    adapter = app.url_map.bind("localhost")
    for hook in configuration["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 2
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"] == [
            {
                "apiGroups": ["kubevirt.io"],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["virtualmachineinstances"],
                "scope": "Namespaced",
            }
        ]
        target_service = hook["clientConfig"]["service"]
        assert (target_service["name"], target_service["namespace"]) == (
            NAME,
            service["metadata"]["namespace"],
        )
        assert target_service["port"] == ports["webhook"]["port"]
        path = target_service["path"]
        assert all(_SEGMENT.fullmatch(segment) for segment in path.strip("/").split("/"))  # API server's rule
        endpoint, values = adapter.match(path, method="POST")
        assert endpoint == "admission.review" and values.get("mode") in (None, *MODES)
    assert routes  # the app was built


_NAMESPACE_LABELS = [None, "off", "shadow", "headroom", "reserved-overhead", "something-else"]


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    if not _matches(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        if (
            expression["operator"] == "NotIn"
            and present
            and labels[expression["key"]] in expression["values"]
        ):
            return False
        if expression["operator"] == "In" and not (
            present and labels[expression["key"]] in expression["values"]
        ):
            return False
    return True


@pytest.mark.parametrize("namespace_label", _NAMESPACE_LABELS)
@pytest.mark.parametrize("object_label", [None, "off", "headroom"])
def test_each_vmi_meets_at_most_one_webhook_in_the_namespaces_mode(
    rendered: dict[str, list[Doc]], namespace_label: str | None, object_label: str | None
) -> None:
    configuration = _one(rendered["ha-webhook"], "MutatingWebhookConfiguration")
    namespace = {} if namespace_label is None else {LABEL: namespace_label}
    vmi = {} if object_label is None else {LABEL: object_label}
    called = [
        hook["clientConfig"]["service"]["path"]
        for hook in configuration["webhooks"]
        if _selects(hook["namespaceSelector"], namespace) and _selects(hook["objectSelector"], vmi)
    ]
    if namespace_label == "off" or object_label == "off":
        assert called == []  # both opt-outs
    elif namespace_label in MODES:
        assert called == [f"/v1/admission/vmi/{namespace_label}"]
    else:
        assert called == ["/v1/admission/vmi"]  # the ADMISSION_MODE setting


@pytest.mark.parametrize("target", TARGETS)
def test_the_webhook_server_has_its_settings_database_and_metrics(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    docs = rendered[target]
    containers = _containers(docs)
    api, webhook = containers[NAME], containers["webhook"]
    assert webhook["image"] == api["image"]
    settings = {name: _environ(docs, container) for name, container in containers.items()}
    for name, environ in settings.items():
        keys = [k for k in environ if k != "PROMETHEUS_MULTIPROC_DIR"]
        assert all(k.removeprefix(config.ENV_PREFIX) in config.KEYS for k in keys), name
        resolved = config.resolve({}, environ)
        assert resolved["ADMISSION_MODE"] in MODES
    # The same database as the API container; its own metrics directory on tmpfs.
    assert settings["webhook"]["OVERHEAD_DATABASE_URL"] == settings[NAME]["OVERHEAD_DATABASE_URL"]
    mounts = {name: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for name, c in containers.items()}
    database = settings[NAME]["OVERHEAD_DATABASE_URL"]
    if database.startswith("sqlite:"):
        directory = str(Path(database.removeprefix("sqlite:///")).parent)
        assert mounts["webhook"][directory] == mounts[NAME][directory]
    directories = {name: environ["PROMETHEUS_MULTIPROC_DIR"] for name, environ in settings.items()}
    assert directories["webhook"] != directories[NAME]
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    assert volumes[mounts["webhook"][directories["webhook"]]]["emptyDir"]["medium"] == "Memory"
    assert mounts["webhook"][directories["webhook"]] != mounts[NAME][directories[NAME]]
    assert "OVERHEAD_TOKENS_FILE" not in settings["webhook"]  # no writes on the webhook's port
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = webhook[kind]["httpGet"]
        assert (probe["port"], probe["scheme"]) == ("webhook", "HTTPS")


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_reads_the_kubevirt_cr_and_nothing_else(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    role = _one(docs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["kubevirt.io"], "resources": ["kubevirts"], "verbs": ["get", "list", "watch"]}
    ]
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    deployment = _one(docs, "Deployment", NAME)
    assert (subject["kind"], subject["name"], subject["namespace"]) == (
        "ServiceAccount",
        _pod(docs)["serviceAccountName"],
        deployment["metadata"]["namespace"],
    )


@pytest.mark.parametrize("target", TARGETS)
def test_the_api_server_may_reach_the_webhook_port(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    labels = _one(docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    policy = _one(docs, "NetworkPolicy", "overhead-service-webhook")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {("webhook", "TCP")}
    egress = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(443, "TCP"), (6443, "TCP")} <= egress  # the Kubernetes API, for the KubeVirt CR


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_scrapes_the_webhook_server_over_https(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    docs = rendered[target]
    monitor = _one(docs, "ServiceMonitor", NAME)
    endpoints = {endpoint["port"]: endpoint for endpoint in monitor["spec"]["endpoints"]}
    webhook = endpoints["webhook"]
    assert webhook["scheme"] == "https" and webhook["path"] == "/metrics"
    _, certificates = _certificates(docs)
    serving = next(c for c in certificates.values() if not c["spec"].get("isCA"))
    assert webhook["tlsConfig"]["ca"]["secret"] == {"name": serving["spec"]["secretName"], "key": "ca.crt"}
    assert webhook["tlsConfig"]["serverName"] in serving["spec"]["dnsNames"]


def test_the_documented_path_without_cert_manager_renders(tmp_path: Path) -> None:
    """docs/admission.md's patches, in an overlay of ha-webhook: no cert-manager object is left."""
    text = (DEPLOY.parent / "docs" / "admission.md").read_text()
    block = text.split("Without cert-manager")[1].split("```yaml\n")[1].split("```")[0]
    overlay = tmp_path / "manual"
    overlay.mkdir()
    base = os.path.relpath(TARGETS["ha-webhook"], overlay)
    (overlay / "kustomization.yaml").write_text(f"resources:\n  - {base}\n" + textwrap.dedent(block))
    docs = _render(overlay)
    assert not [doc for doc in docs if doc["apiVersion"].startswith("cert-manager.io/")]
    configuration = _one(docs, "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in configuration["metadata"].get("annotations", {})
    assert _containers(docs)["webhook"]  # the rest is unchanged
