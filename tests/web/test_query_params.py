"""Query parameters are checked the same way on every route: an unknown one is a 422 problem at
its name everywhere (routes that read none take none), every value is bounded, the whole query
string too (414), and no message shows Python's ``None``."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from benchmarks.harness.reviews import admission_review, defaulted_vmi
from overhead_service.errors import PROBLEM_BASE
from overhead_service.web.parsing import MAX_QUERY_STRING


def _routes(app: Flask) -> list[tuple[str, str]]:
    """Every (method, URL) the API serves, a table id filled in where the rule takes one."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = re.sub(r"<[^>]+>", "kubevirt-v1.9.0", rule.rule)
        found += [(method, url) for method in sorted(rule.methods or ()) if method in ("GET", "POST")]
    return found


def test_the_api_has_the_routes_this_test_expects(app: Flask) -> None:
    routes = _routes(app)
    assert ("POST", "/v1/overhead") in routes and ("GET", "/healthz") in routes
    assert len(routes) >= 17


def test_an_unknown_query_parameter_is_refused_on_every_route(app: Flask, client: FlaskClient) -> None:
    for method, url in _routes(app):
        response = client.open(f"{url}?bogus=1", method=method, json={})
        assert response.status_code == 422, (method, url, response.get_data(as_text=True))
        problem = response.get_json()
        assert problem["type"] == PROBLEM_BASE + "invalid-input"
        assert problem["errors"][0]["path"] == "bogus", (method, url)
        assert "unknown query parameter" in problem["detail"]
        assert "None" not in problem["detail"]


def test_a_route_without_parameters_says_it_takes_none(client: FlaskClient) -> None:
    response = client.post("/v1/overhead?table=kubevirt-main", json={"vmi": {}})
    assert response.status_code == 422
    assert response.get_json()["errors"] == [
        {"path": "table", "message": "unknown query parameter; this endpoint takes none"}
    ]


def test_without_a_query_string_nothing_changes(client: FlaskClient) -> None:
    assert client.post("/v1/overhead?", json={"vmi": {}}).status_code == 200
    assert client.get("/v1/activations?limit=5&hypervisor=kvm&arch=amd64").status_code == 200


def test_a_query_string_over_the_limit_is_a_414_problem(client: FlaskClient) -> None:
    response = client.get("/v1/measurements?arch=" + "a" * MAX_QUERY_STRING)
    assert response.status_code == 414
    assert response.mimetype == "application/problem+json"
    assert str(MAX_QUERY_STRING) in response.get_json()["detail"]
    # The longest query the contract takes fits: 100 run ids of 200 characters, percent-encoded.
    run = "%C3%A9" * 100
    longest = "&".join(f"runId={run}" for _ in range(100))
    assert len(longest) < MAX_QUERY_STRING
    assert client.get(f"/v1/measurements?{longest}").status_code == 200


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("/v1/activations?arch=" + "a" * 65, "arch"),
        ("/v1/activations?limit=99999999999999999999", "limit"),
        ("/v1/activations?hypervisor=qemu", "hypervisor"),
        ("/v1/activations?limit=1&limit=2", "limit"),
        ("/v1/measurements?cursor=" + "a" * 65, "cursor"),
        ("/v1/measurements?since=" + "2026" * 40, "since"),
        ("/v1/tables/kubevirt-v1.9.0/report?until=" + "9" * 100, "until"),
    ],
)
def test_every_value_is_bounded(client: FlaskClient, url: str, path: str) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["errors"][0]["path"] == path


def test_the_webhook_takes_the_api_servers_timeout_parameter(client: FlaskClient) -> None:
    """The API server calls a webhook with ``?timeout=10s`` (client-go's Request.URL)."""
    review = admission_review(defaulted_vmi())
    answer = client.post("/v1/admission/vmi?timeout=10s", json=review)
    assert answer.status_code == 200 and answer.get_json()["response"]["allowed"] is True
    assert client.post("/v1/admission/vmi?timeout=" + "9" * 40, json=review).status_code == 422


def test_a_rollback_with_nothing_active_does_not_say_none(
    client: FlaskClient, admin_auth: dict[str, str]
) -> None:
    response = client.post(
        "/v1/tables/kubevirt-v1.9.0/rollback", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert response.status_code == 409
    detail = response.get_json()["detail"]
    assert "None" not in detail and "none is activated" in detail
