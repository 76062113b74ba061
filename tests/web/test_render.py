"""POST /v1/render: the domain's answer over HTTP, and a problem document for every kind of error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from overhead_service.errors import PROBLEM_BASE
from overhead_service.model.render import render
from overhead_service.web.common import service
from tests.support import DATA


def assert_problem(response: TestResponse, status: int, path: str, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert (body["status"], body["type"]) == (status, PROBLEM_BASE + kind)
    assert body["errors"][0]["path"] == path
    return body


def test_answer_is_the_domain_render(app: Flask, client: FlaskClient, vmi: dict[str, Any]) -> None:
    body = {
        "vmi": vmi,
        "kubevirtConfiguration": {"developerConfiguration": {"cpuAllocationRatio": 4}},
        "namespace": {
            "labels": {"alpha.kubevirt.io/auto-memory-limits-ratio": "1.5"},
            "resourceQuotaLimitsMemory": True,
        },
    }
    response = client.post("/v1/render", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    with app.app_context():
        expected = render(body, service())
    assert response.get_json() == expected
    got = response.get_json()
    assert got["resources"]["requests"]["cpu"] == "500m"  # 2 cores / 4
    assert got["resources"]["limits"]["memory"] == "1953Mi"  # (1Gi + 291,504,128) x 1.5
    assert got["annotations"]["kubevirt.io/memory-overhead-bytes"] == str(got["overhead"]["bytes"])


def test_quantity_as_a_json_number_is_read_exactly(client: FlaskClient, vmi: dict[str, Any]) -> None:
    # 1.5e9 decodes to a float on the fast path; the request is decoded again exactly.
    vmi["spec"]["domain"]["resources"] = {"requests": {"memory": "1Gi", "example.com/x": 1.5e9}}
    raw = '{"vmi": ' + json.dumps(vmi).replace("1500000000.0", "1.5e9") + "}"
    response = client.post("/v1/render", data=raw, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    # Kubernetes keeps the exponent form (DecimalExponent), printed with a multiple of 3
    assert response.get_json()["resources"]["requests"]["example.com/x"] == "1500e6"


def test_bad_field_is_422_with_its_path(client: FlaskClient, vmi: dict[str, Any]) -> None:
    body = {"vmi": vmi, "kubevirtConfiguration": {"developerConfiguration": {"memoryOvercommit": -5}}}
    problem = assert_problem(
        client.post("/v1/render", json=body),
        422,
        "kubevirtConfiguration.developerConfiguration.memoryOvercommit",
        "rejected-by-kubevirt",
    )
    assert "must not be negative" in problem["errors"][0]["message"]


def test_unknown_table_is_422(client: FlaskClient, vmi: dict[str, Any]) -> None:
    assert_problem(
        client.post("/v1/render", json={"vmi": vmi, "table": "nope"}), 422, "table", "unknown-table"
    )


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/v1/render", data=b"{", content_type="application/json")
    assert_problem(response, 400, "", "malformed-json")


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    response = client.post("/v1/render", data=b"{}", content_type=content_type)
    assert_problem(response, 415, "", "unsupported-media-type")


def test_oversize_body_is_413(app_factory: Callable[..., Flask], vmi: dict[str, Any]) -> None:
    client = app_factory(MAX_CONTENT_LENGTH=1024).test_client()
    vmi["metadata"]["annotations"] = {"padding": "x" * 2000}
    assert_problem(client.post("/v1/render", json={"vmi": vmi}), 413, "", "payload-too-large")


def test_get_is_405(client: FlaskClient) -> None:
    response = client.get("/v1/render")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "POST" in response.headers["Allow"]


def test_render_vectors_answer_the_same_over_http(client: FlaskClient) -> None:
    """A sample of upstream's render cases (every quirk case, every 10th other one), posted as raw
    JSON lines: the HTTP answer has the expected resources and annotation."""
    lines = (DATA / "vectors" / "render-kubevirt-v1.9.0.public.jsonl").read_text().splitlines()
    sample = [
        case
        for index, case in enumerate(map(json.loads, lines))
        if index % 10 == 0 or {"shared-quantity", "cpu-allocation-ratio-zero"} & set(case["tags"])
    ]
    assert len(sample) > 50
    for case in sample:
        raw = json.dumps(case["request"])
        response = client.post("/v1/render", data=raw, content_type="application/json")
        assert response.status_code == 200, (case["id"], response.get_data(as_text=True))
        got = response.get_json()
        expected = case["expected"]
        assert got["resources"] == {"requests": expected["requests"], "limits": expected["limits"]}
        assert got["annotations"] == case["expected"]["annotations"], case["id"]
        assert type(got["warnings"]) is list
