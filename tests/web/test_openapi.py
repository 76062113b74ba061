"""openapi.yaml is a valid OpenAPI 3.0.3 document, it is what GET /openapi.yaml serves, and the
application keeps it: schemathesis drives every operation in-process with generated requests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from benchmarks.harness.tokens import ADMIN_TOKEN, TOKENS, create_schema
from overhead_service import create_app, jsonio
from overhead_service.extensions import get_store
from overhead_service.web.spec import load_spec
from tests.support import ROOT, semantic_problem

SPEC = ROOT / "openapi.yaml"


def test_spec_is_valid_openapi_3_0_3() -> None:
    document = yaml.safe_load(SPEC.read_text())
    validate(document)
    # 3.0.3, not 3.1: under 3.1 generators send 5.0 for an integer, which strict fields reject.
    assert document["openapi"] == "3.0.3"


def test_served_and_packaged_spec_is_the_file(client: FlaskClient) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.data == SPEC.read_bytes() == load_spec()


def test_every_route_is_in_the_spec_and_back(app: Flask) -> None:
    documented = {
        (path, method.upper())
        for path, operations in yaml.safe_load(SPEC.read_text())["paths"].items()
        for method in operations
    }
    served = {
        (
            re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{id}" if m[1] == "table_id" else f"{{{m[1]}}}", rule.rule),
            method,
        )
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    assert served == documented


# --- schemathesis -------------------------------------------------------------------------------

schema = schemathesis.openapi.from_path(SPEC, config=SchemathesisConfig.from_dict({"seed": 20260101}))


@schemathesis.check
def valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' positive_data_acceptance, except for the semantic 422s (tests/support/__init__.py)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code < 400 or response.status_code == 404:  # 404: GET /v1/tables/{unknown}
        return None
    if response.status_code == 409:  # a state conflict (activation not earned, nothing to roll back)
        return None
    if response.status_code == 422 and semantic_problem(jsonio.loads(response.content)):
        return None
    raise AssertionError(f"Valid data rejected with {response.status_code}: {response.text[:1000]}")


@pytest.fixture(scope="module")
def contract_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    # Module-scoped: hypothesis runs many examples per test, and the app holds no request state.
    url = f"sqlite:///{tmp_path_factory.mktemp('contract') / 'overhead.db'}"
    create_schema(url)
    app = create_app({"TESTING": True, "DATABASE_URL": url, "TOKENS": TOKENS})
    yield app
    get_store(app).dispose()


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_conforms_to_spec(
    case: schemathesis.Case,  # type: ignore[type-arg]
    contract_app: Flask,
) -> None:
    """Every check (no 5xx, documented statuses, content types and bodies, negative data rejected),
    with positive-data acceptance narrowed as described above. The admin token (every role) is
    sent; the ignored_auth check also probes each secured operation without it and with a wrong one."""
    case.operation.schema.app = contract_app  # the probes of ignored_auth go through the schema's app
    case.call_and_validate(
        app=contract_app,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_requests_are_accepted],
    )
