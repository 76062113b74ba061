"""POST /v1/admission/vmi in-process: AdmissionReview round trips in every mode, the documented
answer for every kind of bad input (never a 500, never a denial), metrics and log lines."""

from __future__ import annotations

import base64
import copy
import json
import logging
from typing import Any

import jsonpatch
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from benchmarks.harness.reviews import admission_review, defaulted_vmi
from overhead_service import config
from overhead_service.clusterconfig import ConfigSource, config_source
from overhead_service.extensions import get_admission, get_service
from overhead_service.model.admission import ANNOTATIONS, LABEL
from overhead_service.model.headroom import MIB
from overhead_service.model.quantity import parse_quantity
from tests.conftest import AppFactory

CONFIGURATION = {
    "additionalGuestMemoryOverheadRatio": "1.5",
    "developerConfiguration": {"featureGates": ["ReservedOverheadMemlock"]},
}


@pytest.fixture
def webhook_app(app_factory: AppFactory) -> Flask:
    """The KubeVirt configuration from the setting; kvm answered from kubevirt-main (T > B)."""
    app = app_factory(KUBEVIRT_CONFIGURATION=json.dumps(CONFIGURATION))
    get_service(app).set_active({("kvm", "*"): "kubevirt-main"})
    return app


@pytest.fixture
def webhook(webhook_app: Flask) -> FlaskClient:
    return webhook_app.test_client()


def _response(answer: Any, uid: str) -> dict[str, Any]:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response: dict[str, Any] = body["response"]
    assert response["uid"] == uid
    assert response["allowed"] is True  # always
    return response


def _patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        assert "patchType" not in response
        return []
    assert response["patchType"] == "JSONPatch"
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    return patch


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("via", ["setting", "path"])
@pytest.mark.parametrize("mode", ["shadow", "headroom", "reserved-overhead", "off"])
def test_round_trip_in_every_mode(app_factory: AppFactory, mode: str, via: str) -> None:
    app = app_factory(
        KUBEVIRT_CONFIGURATION=json.dumps(CONFIGURATION), ADMISSION_MODE=mode if via == "setting" else "off"
    )
    get_service(app).set_active({("kvm", "*"): "kubevirt-main"})
    vmi = defaulted_vmi({"requests": {"memory": "2Gi"}, "limits": {"memory": "3Gi"}})
    review = admission_review(vmi, uid="b7f0c5e2-1d3a-4c1e-9a7b-2f1e0d9c8b7a")
    path = "/v1/admission/vmi" + (f"/{mode}" if via == "path" else "")
    response = _response(app.test_client().post(path, json=review), review["request"]["uid"])
    patch = _patch(response)
    if mode == "off":
        assert patch == [] and "warnings" not in response
        return
    patched = jsonpatch.apply_patch(vmi, patch)
    annotations = patched["metadata"]["annotations"]
    assert annotations[ANNOTATIONS["mode"]] == mode
    t, b = int(annotations[ANNOTATIONS["predicted-bytes"]]), int(annotations[ANNOTATIONS["upstream-bytes"]])
    assert t - b == 31457520  # 20Mi more QEMU, x1.5 in whole kB
    assert annotations[ANNOTATIONS["table"]] == "kubevirt-main"
    resources = patched["spec"]["domain"]["resources"]
    if mode == "shadow":
        assert patched["spec"] == vmi["spec"]
    elif mode == "headroom":
        raise_ = parse_quantity(resources["requests"]["memory"]).value() - 2 * 1024 * MIB
        assert 0 < raise_ < t - b
        assert parse_quantity(resources["limits"]["memory"]).value() - 3 * 1024 * MIB == raise_
        assert int(annotations[ANNOTATIONS["delta-bytes"]]) == t - b
    else:
        assert "addedOverhead" in patched["spec"]["domain"]["memory"]["reservedOverhead"]
        assert t <= b + int(annotations[ANNOTATIONS["delta-bytes"]]) < t + MIB
    # The mutated VMI is still a valid request for the service's own schema.
    assert app.test_client().post("/v1/overhead", json={"vmi": patched}).status_code == 200


def test_the_label_beats_the_registration_and_the_setting(webhook: FlaskClient) -> None:
    vmi = defaulted_vmi(labels={LABEL: "shadow"})
    review = admission_review(vmi)
    patch = _patch(
        _response(webhook.post("/v1/admission/vmi/headroom", json=review), review["request"]["uid"])
    )
    assert [op["path"] for op in patch] == ["/metadata/annotations"]


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        ("UPDATE", None),
        ("DELETE", None),
        ("CREATE", {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}),
        ("CREATE", {"group": "", "version": "v1", "kind": "Pod"}),
        ("CREATE", "VirtualMachineInstance"),
    ],
)
def test_another_kind_or_operation_is_allowed_unchanged(
    webhook: FlaskClient, operation: str, kind: Any
) -> None:
    review = admission_review(defaulted_vmi(), operation=operation, kind=kind)
    response = _response(webhook.post("/v1/admission/vmi/headroom", json=review), review["request"]["uid"])
    assert _patch(response) == [] and "warnings" not in response


def test_a_subresource_is_allowed_unchanged(webhook: FlaskClient) -> None:
    review = admission_review(defaulted_vmi())
    review["request"]["subResource"] = "status"
    assert _patch(_response(webhook.post("/v1/admission/vmi", json=review), review["request"]["uid"])) == []


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], ""),
        ("review", ""),
        ({"kind": "AdmissionReview", "request": {"uid": "u"}}, "apiVersion"),
        (
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}},
            "apiVersion",
        ),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {"uid": "u"}}, "kind"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}, "request"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}, "request.uid"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}},
            "request.uid",
        ),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}},
            "request.uid",
        ),
    ],
)
def test_a_body_that_is_not_an_admission_review_is_a_400_problem(
    webhook: FlaskClient, body: Any, path: str
) -> None:
    answer = webhook.post("/v1/admission/vmi", json=body)
    assert answer.status_code == 400
    assert answer.mimetype == "application/problem+json"
    problem = answer.get_json()
    assert problem["type"].endswith("not-an-admission-review")
    assert problem["errors"] == [{"path": path, "message": problem["errors"][0]["message"]}]


def test_not_json_not_declared_json_and_too_large(app_factory: AppFactory) -> None:
    client = app_factory(MAX_CONTENT_LENGTH=4096).test_client()
    answer = client.post("/v1/admission/vmi", data=b"{not json", content_type="application/json")
    assert (answer.status_code, answer.get_json()["type"].rsplit(":", 1)[1]) == (400, "malformed-json")
    answer = client.post("/v1/admission/vmi", data=b"{}", content_type="text/plain")
    assert answer.status_code == 415
    huge = json.dumps(admission_review(defaulted_vmi(annotations={"x": "y" * 10_000})))
    answer = client.post("/v1/admission/vmi", data=huge, content_type="application/json")
    assert (answer.status_code, answer.mimetype) == (413, "application/problem+json")


def test_an_unknown_mode_is_a_404_problem(webhook: FlaskClient) -> None:
    answer = webhook.post("/v1/admission/vmi/aggressive", json=admission_review(defaulted_vmi()))
    assert (answer.status_code, answer.mimetype) == (404, "application/problem+json")


def test_an_enormous_vmi_within_the_body_limit_is_admitted(webhook: FlaskClient) -> None:
    vmi = defaulted_vmi(annotations={f"note-{i}": "x" * 200 for i in range(5000)})
    vmi["spec"]["volumes"] = [{"name": f"d{i}", "emptyDisk": {"capacity": "1Gi"}} for i in range(20_000)]
    review = admission_review(vmi)
    response = _response(webhook.post("/v1/admission/vmi/headroom", json=review), review["request"]["uid"])
    patched = jsonpatch.apply_patch(vmi, _patch(response))
    assert patched["metadata"]["annotations"][ANNOTATIONS["mode"]] == "headroom"


@pytest.mark.parametrize(
    ("vmi", "path"),
    [
        ("a string", "vmi"),
        (None, "vmi"),
        ({**defaulted_vmi(), "spec": []}, "vmi.spec"),
        (defaulted_vmi({"requests": {"memory": {"bytes": 1}}}), "vmi.spec.domain.resources.requests.memory"),
        (defaulted_vmi(cpu={"cores": -1}), "vmi.spec.domain.cpu.cores"),
        ({**defaulted_vmi(), "metadata": "vm-1"}, "vmi.metadata"),
    ],
)
def test_an_unreadable_vmi_is_allowed_unpatched_with_a_warning_a_log_line_and_a_metric(
    webhook: FlaskClient, caplog: pytest.LogCaptureFixture, vmi: Any, path: str
) -> None:
    before = _sample("overhead_admission_errors_total", reason="invalid-vmi")
    review = admission_review(vmi)
    with caplog.at_level(logging.WARNING, logger="overhead_service.web.admission"):
        response = _response(
            webhook.post("/v1/admission/vmi/headroom", json=review), review["request"]["uid"]
        )
    assert _patch(response) == []
    (warning,) = response["warnings"]
    assert warning.startswith("overhead-service: VMI left unchanged") and path in warning
    assert _sample("overhead_admission_errors_total", reason="invalid-vmi") == before + 1
    assert any("invalid-vmi" in record.getMessage() for record in caplog.records)


def test_a_float_quantity_is_read_exactly(webhook: FlaskClient) -> None:
    """A JSON number with a fraction or exponent is decoded again exactly, as on /v1/overhead."""
    body = json.dumps(admission_review(defaulted_vmi({"requests": {"memory": "X"}}, {"guest": "1Gi"})))
    body = body.replace('"X"', "1.073741824e9")
    answer = webhook.post("/v1/admission/vmi/headroom", data=body, content_type="application/json")
    response = _response(answer, json.loads(body)["request"]["uid"])
    assert "warnings" not in response and _patch(response)


def test_an_internal_error_is_allowed_unpatched(
    webhook_app: Flask,
    webhook: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(get_admission(webhook_app), "review", broken)
    before = _sample("overhead_admission_errors_total", reason="internal")
    review = admission_review(defaulted_vmi())
    with caplog.at_level(logging.ERROR, logger="overhead_service.web.admission"):
        response = _response(webhook.post("/v1/admission/vmi", json=review), review["request"]["uid"])
    assert _patch(response) == [] and response["warnings"] == [
        "overhead-service: VMI left unchanged: internal error (logged)"
    ]
    assert _sample("overhead_admission_errors_total", reason="internal") == before + 1
    assert any(record.exc_info for record in caplog.records)


def test_without_a_kubevirt_configuration_nothing_is_patched(client: FlaskClient) -> None:
    review = admission_review(defaulted_vmi())
    response = _response(client.post("/v1/admission/vmi/headroom", json=review), review["request"]["uid"])
    assert _patch(response) == []
    assert "KubeVirt configuration" in response["warnings"][0]


def test_metrics_count_admissions_bytes_and_latency(webhook: FlaskClient) -> None:
    patched = _sample("overhead_admissions_total", mode="headroom", outcome="patched")
    annotated = _sample("overhead_admissions_total", mode="shadow", outcome="annotated")
    added = _sample(
        "overhead_admission_delta_bytes_total", hypervisor="kvm", direction="added", applied="true"
    )
    recorded = _sample(
        "overhead_admission_delta_bytes_total", hypervisor="kvm", direction="added", applied="false"
    )
    latency = _sample(
        "overhead_http_request_duration_seconds_count",
        route="/v1/admission/vmi/<mode>",
        method="POST",
        status="200",
    )
    webhook.post("/v1/admission/vmi/headroom", json=admission_review(defaulted_vmi()))
    webhook.post("/v1/admission/vmi/shadow", json=admission_review(defaulted_vmi()))
    assert _sample("overhead_admissions_total", mode="headroom", outcome="patched") == patched + 1
    assert _sample("overhead_admissions_total", mode="shadow", outcome="annotated") == annotated + 1
    delta = 31457520
    assert (
        _sample("overhead_admission_delta_bytes_total", hypervisor="kvm", direction="added", applied="true")
        == added + delta
    )
    assert (
        _sample("overhead_admission_delta_bytes_total", hypervisor="kvm", direction="added", applied="false")
        == recorded + delta
    )
    assert (
        _sample(
            "overhead_http_request_duration_seconds_count",
            route="/v1/admission/vmi/<mode>",
            method="POST",
            status="200",
        )
        == latency + 2
    )


def test_a_reinvocation_changes_nothing_more(webhook: FlaskClient) -> None:
    vmi = defaulted_vmi()
    first = _patch(
        _response(webhook.post("/v1/admission/vmi/headroom", json=admission_review(vmi, uid="a")), "a")
    )
    again = admission_review(jsonpatch.apply_patch(copy.deepcopy(vmi), first), uid="b")
    assert _patch(_response(webhook.post("/v1/admission/vmi/headroom", json=again), "b")) == []


# --- settings -----------------------------------------------------------------------------------------


def test_admission_settings_from_the_environment() -> None:
    settings = config.resolve(
        None,
        environ={
            "OVERHEAD_ADMISSION_MODE": "headroom",
            "OVERHEAD_ADMISSION_UPSTREAM_TABLE": "kubevirt-main",
            "OVERHEAD_KUBEVIRT_CONFIGURATION": '{"additionalGuestMemoryOverheadRatio": "2"}',
        },
    )
    assert settings["ADMISSION_MODE"] == "headroom"
    assert settings["ADMISSION_UPSTREAM_TABLE"] == "kubevirt-main"
    assert settings["KUBEVIRT_CONFIGURATION"] == {"additionalGuestMemoryOverheadRatio": "2"}
    source = config_source(settings)
    assert source.current() == ({"additionalGuestMemoryOverheadRatio": "2"}, "static")
    assert isinstance(source, ConfigSource)
    assert config_source(config.resolve(None, environ={})).current() == (None, "unavailable")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ADMISSION_MODE", "aggressive", "must be one of shadow, headroom, reserved-overhead, off"),
        ("ADMISSION_UPSTREAM_TABLE", "", "must be a table id"),
        ("KUBEVIRT_CONFIGURATION", "{not json", "must be a JSON object"),
        ("KUBEVIRT_CONFIGURATION", "[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_admission_settings_are_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"OVERHEAD_{key} {message}"):
        config.resolve(None, environ={f"OVERHEAD_{key}": value})


def test_the_upstream_table_is_checked_at_start_up(app_factory: AppFactory) -> None:
    with pytest.raises(LookupError, match="not a built-in upstream table"):
        app_factory(ADMISSION_UPSTREAM_TABLE="kvm-measured-pvm-2026-11")
    with pytest.raises(LookupError):
        app_factory(ADMISSION_UPSTREAM_TABLE="no-such-table")
