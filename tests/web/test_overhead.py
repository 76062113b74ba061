"""POST /v1/overhead and /v1/overhead/batch: answers, and a problem document for every kind of error."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from overhead_service.errors import PROBLEM_BASE
from overhead_service.extensions import SERVICE
from overhead_service.model.service import OverheadService
from overhead_service.web import overhead as overhead_views

RATIO_PATH = "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"


def assert_problem(
    response: TestResponse, status: int, path: str | None = None, kind: str | None = None
) -> Any:
    """``response`` is an RFC 9457 problem with ``status`` (and its first error at ``path``)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    if kind is not None:
        assert body["type"] == PROBLEM_BASE + kind
    if path is not None:
        assert body["errors"][0]["path"] == path
        assert body["errors"][0]["message"]
    return body


# --- answers ----------------------------------------------------------------------------------


def test_good_request(client: FlaskClient, vmi: dict[str, Any]) -> None:
    response = client.post("/v1/overhead", json={"vmi": vmi})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["overhead"]["bytes"] == sum(c["bytes"] for c in body["components"])
    assert body["overhead"]["bytes"] > 2 * 1024 * 1024  # at least the page tables of 1Gi
    assert body["nodeOverhead"]["bytes"] == sum(c["bytes"] for c in body["nodeComponents"])
    assert body["table"] == {"id": "kubevirt-v1.9.0", "provisional": False}
    assert body["cpuArch"] == "amd64"
    assert body["hypervisor"]["name"] == "kvm"


@pytest.mark.parametrize(
    ("table", "ratio", "quantity", "bytes_"),
    [
        # KubeVirt's own numbers for a VMI with only requests.memory: 1Gi on amd64 (GetMemoryOverhead,
        # worked by hand).
        ("kubevirt-v1.9.0", None, "283115520", 283115520),
        ("kubevirt-main", None, "304087040", 304087040),
        ("kubevirt-main", "1.5", "456131040", 456131040),
        ("kubevirt-main", "", "304087040", 304087040),  # "" means unset
    ],
)
def test_upstream_numbers(
    client: FlaskClient, table: str, ratio: str | None, quantity: str, bytes_: int
) -> None:
    body: dict[str, Any] = {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}}
    body["table"] = table
    if ratio is not None:
        body["kubevirtConfiguration"] = {RATIO_PATH.split(".")[1]: ratio}
    answer = client.post("/v1/overhead", json=body).get_json()
    assert answer["overhead"] == {"quantity": quantity, "bytes": bytes_}


def test_json_numbers_keep_their_exact_value(client: FlaskClient) -> None:
    def overhead(memory: str) -> Any:
        raw = '{"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": ' + memory + "}}}}}}"
        response = client.post("/v1/overhead", data=raw, content_type="application/json")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["overhead"]

    as_string = overhead('"1073741824"')
    assert overhead("1073741824") == as_string
    assert overhead("1073741824.0") == as_string
    assert overhead("1.073741824e9") == as_string
    # A float detour would round 1e18 + 0.0001 to 1e18 and lose one kB of page-table input.
    exact = overhead("1000000000000000000.0001")
    assert exact == overhead('"1000000000000000000.0001"')
    assert exact["bytes"] > overhead("1000000000000000000")["bytes"]


def test_nulls_are_accepted_where_kubernetes_accepts_them(client: FlaskClient, vmi: dict[str, Any]) -> None:
    vmi["spec"]["domain"]["cpu"] = {"cores": None, "sockets": 2, "dedicatedCpuPlacement": None}
    vmi["spec"]["domain"]["devices"] = {"autoattachGraphicsDevice": None, "gpus": None, "tpm": None}
    vmi["spec"]["volumes"] = None
    body = {"vmi": vmi, "cpuArch": None, "hypervisor": None, "table": None, "node": None}
    assert client.post("/v1/overhead", json=body).status_code == 200


def test_lone_surrogates_are_echoed_as_escapes(client: FlaskClient) -> None:
    """A lone surrogate escape is valid JSON but has no UTF-8 form; answers and problems still go out."""
    answer = client.post(
        "/v1/overhead", data=r'{"vmi": {}, "cpuArch": "\ud800"}', content_type="application/json"
    )
    assert answer.status_code == 200
    assert rb'"cpuArch":"\ud800"' in answer.data
    problem = client.post("/v1/overhead", data=r'{"vmi": {}, "x\udfff": 1}', content_type="application/json")
    assert_problem(problem, 422, path="x\udfff")


# --- errors about the body as a whole -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"vmi": {}', b"{'vmi': {}}", b'{"vmi": NaN}', b'{"vmi": {"x": Infinity}}', b"\xff\xfe{"],
    ids=["empty", "open-brace", "unterminated", "single-quotes", "NaN", "Infinity", "not-utf8"],
)
@pytest.mark.parametrize("url", ["/v1/overhead", "/v1/overhead/batch"])
def test_malformed_json_is_400(client: FlaskClient, url: str, raw: bytes) -> None:
    body = assert_problem(
        client.post(url, data=raw, content_type="application/json"), 400, path="", kind="malformed-json"
    )
    assert "not valid JSON" in body["detail"]


def test_deeply_nested_json_is_400_not_500(client: FlaskClient) -> None:
    raw = "[" * 100_000 + "]" * 100_000
    body = assert_problem(
        client.post("/v1/overhead", data=raw, content_type="application/json"), 400, path=""
    )
    assert "nested too deeply" in body["detail"]


@pytest.mark.parametrize("raw", ["[]", '"vmi"', "1", "null", "true"])
def test_non_object_body_is_422(client: FlaskClient, raw: str) -> None:
    assert_problem(client.post("/v1/overhead", data=raw, content_type="application/json"), 422, path="")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    response = client.post("/v1/overhead", data=json.dumps({"vmi": {}}), content_type=content_type)
    body = assert_problem(response, 415, path="", kind="unsupported-media-type")
    assert "application/json" in body["detail"]


def test_json_suffix_media_types_are_json(client: FlaskClient) -> None:
    response = client.post(
        "/v1/overhead", data=json.dumps({"vmi": {}}), content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 200


def test_oversize_body_is_413(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(MAX_CONTENT_LENGTH=1024).test_client()
    small = {"vmi": {"metadata": {"name": "x" * 100}}}
    assert client.post("/v1/overhead", json=small).status_code == 200
    big = {"vmi": {"metadata": {"name": "x" * 2000}}}
    body = assert_problem(client.post("/v1/overhead", json=big), 413, path="", kind="payload-too-large")
    assert "1024" in body["detail"]


def _post_chunked(client: FlaskClient, raw: bytes, *, terminated: bool = True) -> TestResponse:
    # gunicorn frames a chunked body itself and says so with wsgi.input_terminated.
    return client.post(
        "/v1/overhead",
        input_stream=io.BytesIO(raw),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True} if terminated else {},
    )


@pytest.mark.parametrize(("size", "status"), [(1024, 200), (1025, 413), (50_000, 413)])
def test_chunked_body_limit_is_exact(app_factory: Callable[..., Flask], size: int, status: int) -> None:
    """A chunked body has no Content-Length; the limit still holds, to the byte."""
    client = app_factory(MAX_CONTENT_LENGTH=1024).test_client()
    envelope = json.dumps({"vmi": {"metadata": {"name": ""}}})
    raw = envelope.replace('""', '"' + "x" * (size - len(envelope)) + '"').encode()
    assert len(raw) == size
    response = _post_chunked(client, raw)
    if status == 200:
        assert response.status_code == 200, response.get_data(as_text=True)
    else:
        assert_problem(response, 413, path="", kind="payload-too-large")


def test_chunked_body_without_server_framing_is_not_read(client: FlaskClient) -> None:
    """Without wsgi.input_terminated, reading to the end could block: the body counts as empty."""
    assert _post_chunked(client, b'{"vmi": {}}').status_code == 200
    assert_problem(_post_chunked(client, b'{"vmi": {}}', terminated=False), 400, kind="malformed-json")


# --- errors at a path ---------------------------------------------------------------------------


def test_unknown_top_level_key_is_422(client: FlaskClient) -> None:
    assert_problem(client.post("/v1/overhead", json={"vmi": {}, "vmiSpec": {}}), 422, path="vmiSpec")


def test_missing_vmi_is_422(client: FlaskClient) -> None:
    assert_problem(client.post("/v1/overhead", json={}), 422, path="vmi")
    assert_problem(client.post("/v1/overhead", json={"vmi": None}), 422, path="vmi")


def _set(document: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document.setdefault(key, {})
    document[last] = value


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("spec.domain.cpu.cores", "2", "vmi.spec.domain.cpu.cores"),
        ("spec.domain.cpu.cores", 2.5, "vmi.spec.domain.cpu.cores"),
        ("spec.domain.cpu.cores", -1, "vmi.spec.domain.cpu.cores"),
        ("spec.domain.cpu.cores", 4294967296, "vmi.spec.domain.cpu.cores"),
        ("spec.domain.cpu.cores", True, "vmi.spec.domain.cpu.cores"),
        ("spec.domain.cpu.threads", [], "vmi.spec.domain.cpu.threads"),
        ("spec.domain.cpu.dedicatedCpuPlacement", 1, "vmi.spec.domain.cpu.dedicatedCpuPlacement"),
        ("spec.domain.cpu.dedicatedCpuPlacement", "true", "vmi.spec.domain.cpu.dedicatedCpuPlacement"),
        ("spec.domain.cpu", 4, "vmi.spec.domain.cpu"),
        (
            "spec.domain.devices.autoattachGraphicsDevice",
            0,
            "vmi.spec.domain.devices.autoattachGraphicsDevice",
        ),
        ("spec.domain.devices.interfaces", {"name": "eth0"}, "vmi.spec.domain.devices.interfaces"),
        ("spec.domain.devices.interfaces", ["eth0"], "vmi.spec.domain.devices.interfaces[0]"),
        ("spec.domain.devices.tpm", True, "vmi.spec.domain.devices.tpm"),
        # gpus is checked even when hostDevices already decided that the VMI uses VFIO.
        ("spec.domain.devices", {"hostDevices": [{}], "gpus": "bad"}, "vmi.spec.domain.devices.gpus"),
        ("spec.domain.devices.tpm.enabled", "no", "vmi.spec.domain.devices.tpm.enabled"),
        ("spec.domain.resources.requests", [], "vmi.spec.domain.resources.requests"),
        ("spec.volumes", [{"name": "v", "downwardMetrics": 1}], "vmi.spec.volumes[0].downwardMetrics"),
        ("spec.livenessProbe.exec", "ls", "vmi.spec.livenessProbe.exec"),
        ("spec", "none", "vmi.spec"),
    ],
)
def test_wrong_types_name_the_path(
    client: FlaskClient, vmi: dict[str, Any], field: str, value: Any, path: str
) -> None:
    _set(vmi, field, value)
    assert_problem(client.post("/v1/overhead", json={"vmi": vmi}), 422, path=path)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("spec.domain.resources.requests.memory", "1Gb", "vmi.spec.domain.resources.requests.memory"),
        ("spec.domain.resources.requests.memory", "", "vmi.spec.domain.resources.requests.memory"),
        ("spec.domain.resources.requests.memory", True, "vmi.spec.domain.resources.requests.memory"),
        ("spec.domain.resources.requests.memory", "1" * 101, "vmi.spec.domain.resources.requests.memory"),
        ("spec.domain.resources.limits.cpu", "two", "vmi.spec.domain.resources.limits.cpu"),
        ("spec.domain.memory.guest", "1e", "vmi.spec.domain.memory.guest"),
        (
            "spec.domain.memory.reservedOverhead.addedOverhead",
            {"value": 1},
            "vmi.spec.domain.memory.reservedOverhead.addedOverhead",
        ),
    ],
)
def test_bad_quantity_is_422(
    client: FlaskClient, vmi: dict[str, Any], field: str, value: Any, path: str
) -> None:
    _set(vmi, field, value)
    assert_problem(client.post("/v1/overhead", json={"vmi": vmi}), 422, path=path, kind="invalid-quantity")


def test_unknown_table_in_body_is_422_naming_table(client: FlaskClient) -> None:
    body = assert_problem(
        client.post("/v1/overhead", json={"vmi": {}, "table": "kubevirt-v0.1"}),
        422,
        path="table",
        kind="unknown-table",
    )
    assert "kubevirt-v0.1" in body["detail"]


@pytest.mark.parametrize("hypervisor", ["xen", "KVM", "", 1])
def test_unknown_hypervisor_is_422(client: FlaskClient, hypervisor: Any) -> None:
    assert_problem(
        client.post("/v1/overhead", json={"vmi": {}, "hypervisor": hypervisor}), 422, path="hypervisor"
    )


@pytest.mark.parametrize("ratio", ["abc", " 1.5", "NaN", "Inf", "1e400", 1.5])
def test_bad_ratio_is_422_naming_the_ratio(client: FlaskClient, ratio: Any) -> None:
    body = {"vmi": {}, "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": ratio}}
    assert_problem(client.post("/v1/overhead", json=body), 422, path=RATIO_PATH)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"node": {"kvmAvailable": 0}}, "node.kvmAvailable"),
        ({"node": []}, "node"),
        ({"cpuArch": "x" * 65}, "cpuArch"),
        ({"cpuArch": 64}, "cpuArch"),
        (
            {"kubevirtConfiguration": {"hypervisors": [{"name": "xen"}]}},
            "kubevirtConfiguration.hypervisors[0].name",
        ),
        (
            {"kubevirtConfiguration": {"hypervisors": [{"name": {}}]}},
            "kubevirtConfiguration.hypervisors[0].name",
        ),
        (
            {"kubevirtConfiguration": {"hypervisors": [{"name": "KVM"}]}},
            "kubevirtConfiguration.hypervisors[0].name",
        ),
        (
            {"kubevirtConfiguration": {"developerConfiguration": {"featureGates": "ConfigurableHypervisor"}}},
            "kubevirtConfiguration.developerConfiguration.featureGates",
        ),
    ],
)
def test_other_fields_are_checked(client: FlaskClient, body: dict[str, Any], path: str) -> None:
    assert_problem(client.post("/v1/overhead", json={"vmi": {}, **body}), 422, path=path)


# --- batch ----------------------------------------------------------------------------------------


def test_batch_answers_around_a_bad_item(client: FlaskClient, vmi: dict[str, Any]) -> None:
    good = {"vmi": vmi}
    other = {"vmi": vmi, "table": "kubevirt-main"}
    bad = {"vmi": {"spec": {"domain": {"cpu": {"cores": "many"}}}}}
    response = client.post("/v1/overhead/batch", json={"items": [good, bad, other]})
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert len(items) == 3
    assert items[0] == client.post("/v1/overhead", json=good).get_json()
    assert items[2] == client.post("/v1/overhead", json=other).get_json()
    assert items[1]["status"] == 422
    assert items[1]["errors"][0]["path"] == "items[1].vmi.spec.domain.cpu.cores"


def test_batch_unknown_table_item_is_422(client: FlaskClient) -> None:
    items = client.post("/v1/overhead/batch", json={"items": [{"vmi": {}, "table": "nope"}]}).get_json()[
        "items"
    ]
    assert items[0]["status"] == 422
    assert items[0]["errors"][0]["path"] == "items[0].table"


def test_batch_limit(client: FlaskClient) -> None:
    limit = OverheadService.MAX_BATCH
    assert limit == 10_000
    at_limit = client.post("/v1/overhead/batch", json={"items": [{"vmi": {}}] * limit})
    assert at_limit.status_code == 200
    assert len(at_limit.get_json()["items"]) == limit
    over = client.post("/v1/overhead/batch", json={"items": [{"vmi": {}}] * (limit + 1)})
    body = assert_problem(over, 422, path="items")
    assert "10000" in body["detail"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([{"vmi": {}}], ""),
        ({}, "items"),
        ({"items": {"vmi": {}}}, "items"),
        ({"items": [], "extra": True}, "extra"),
    ],
)
def test_batch_body_errors(client: FlaskClient, body: Any, path: str) -> None:
    assert_problem(client.post("/v1/overhead/batch", json=body), 422, path=path)


def test_empty_batch(client: FlaskClient) -> None:
    assert client.post("/v1/overhead/batch", json={"items": []}).get_json() == {"items": []}


# --- HTTP errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("url", ["/v1/overhead", "/v1/overhead/batch"])
def test_405_keeps_allow(client: FlaskClient, method: str, url: str) -> None:
    response = client.open(url, method=method)
    assert_problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_unknown_route_is_404_problem(client: FlaskClient) -> None:
    body = assert_problem(client.post("/v1/overheads", json={"vmi": {}}), 404)
    assert body["type"] == "about:blank"


def test_unexpected_exception_is_500_problem(
    app_factory: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory()

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaboom")

    body = assert_problem(app.test_client().get("/boom"), 500)
    assert "kaboom" not in json.dumps(body)  # no internals leak to the client
    assert "kaboom" in caplog.text  # but they are logged


class _RecordingLock:
    """A lock that says when somebody had to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waited = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.waited.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_batches_are_answered_one_at_a_time_per_process(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second batch waits (body unread) while one is computed: a worker holds one batch's memory."""
    slot = _RecordingLock()
    monkeypatch.setattr(overhead_views, "BATCH_SLOT", slot)
    service = app.extensions[SERVICE]
    real = service.compute_batch
    events: list[str] = []
    first_inside, release = threading.Event(), threading.Event()

    def compute_batch(items: Any) -> list[dict[str, Any]]:
        events.append("enter")
        first_inside.set()
        assert release.wait(10)
        events.append("exit")
        answers: list[dict[str, Any]] = real(items)
        return answers

    monkeypatch.setattr(service, "compute_batch", compute_batch)
    statuses: list[int] = []

    def post() -> None:
        body = {"items": [{"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}}]}
        statuses.append(app.test_client().post("/v1/overhead/batch", json=body).status_code)

    first = threading.Thread(target=post)
    first.start()
    assert first_inside.wait(10)
    second = threading.Thread(target=post)
    second.start()
    assert slot.waited.wait(10)  # the second batch is at the door...
    assert events == ["enter"]  # ...and not inside
    release.set()
    first.join(10)
    second.join(10)
    assert statuses == [200, 200]
    assert events == ["enter", "exit", "enter", "exit"]
