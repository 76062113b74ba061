"""Request bodies with a schema (fits, evaluations, activations, rollbacks): the first bad field, in
the API's words; null and absent optional fields; the schemas and openapi.yaml name the same fields."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from marshmallow import Schema

from overhead_service.web.bodies import (
    ACTIVATION,
    EVALUATION,
    FIT_OPTIONS,
    FIT_SELECTION,
    ROLLBACK,
    field_names,
)
from tests.support import ROOT

SELECTOR = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu"}
TARGET = {"hypervisor": "kvm", "arch": "amd64"}
FIT, EVALUATE = "/v1/fits", "/v1/tables/kubevirt-v1.9.0/evaluate"
ACTIVATE, ROLL_BACK = "/v1/tables/kubevirt-main/activate", "/v1/tables/kubevirt-main/rollback"


@pytest.mark.parametrize(
    ("url", "body", "path", "message"),
    [
        (FIT, [], "", "the request must be a JSON object"),
        (
            FIT,
            {**SELECTOR, "target": 2, "folds": "x", "Runs": []},
            "Runs",
            "unknown field; allowed: arch, folds",
        ),
        (FIT, {}, "hypervisor", "must be kvm or mshv"),
        (FIT, {"hypervisor": None, "arch": 1}, "hypervisor", "must be kvm or mshv"),
        (FIT, {**SELECTOR, "arch": "a" * 65, "scope": "vm"}, "arch", "must be an architecture such as amd64"),
        (
            FIT,
            {**SELECTOR, "scope": "vm"},
            "scope",
            "must be one of qemu, pod, node, virtqemud, virtlogd, or an array of distinct ones but node",
        ),
        (FIT, {**SELECTOR, "runs": []}, "runs", "must be a non-empty array of run ids"),
        (FIT, {**SELECTOR, "runs": ["a", ""]}, "runs", "must be a non-empty array of run ids"),
        (FIT, {**SELECTOR, "since": "yesterday"}, "since", "such as 2026-11-20T10:31:00Z"),
        (FIT, {**SELECTOR, "until": 5}, "until", "must be an RFC 3339 date-time string with a time zone"),
        (FIT, {**SELECTOR, "parent": 7, "target": 2}, "parent", "must be a table id"),
        (FIT, {**SELECTOR, "parent": "nope", "target": 2}, "table", "no table 'nope'"),  # before the options
        (FIT, {**SELECTOR, "target": True}, "target", "must be a number between 0.5 and 0.9999"),
        (FIT, {**SELECTOR, "target": 0.49}, "target", "must be a number between 0.5 and 0.9999"),
        (FIT, {**SELECTOR, "folds": 21, "seed": -1}, "folds", "must be an integer between 2 and 20"),
        (FIT, {**SELECTOR, "folds": 5.0}, "folds", "must be an integer between 2 and 20"),
        (FIT, {**SELECTOR, "seed": 2**31}, "seed", "must be an integer between 0 and 2147483647"),
        # null and empty mean the defaults; the selection is then empty: not enough data
        (
            FIT,
            {**SELECTOR, "parent": "", "target": None, "folds": None, "seed": None},
            "measurements",
            "0 samples",
        ),
        (EVALUATE, {**SELECTOR, "runs": "r1"}, "runs", "must be a non-empty array of run ids"),
        (
            EVALUATE,
            {**SELECTOR, "measurements": {}},
            "measurements",
            "must be an array of measurement records",
        ),
        (
            EVALUATE,
            {**SELECTOR, "target": 0.9},
            "target",
            "unknown field; allowed: arch, hypervisor, launcher, measurements",
        ),
        (EVALUATE, {**SELECTOR, "measurements": None}, "measurements", "no measurements match"),
        (ACTIVATE, {"arch": ""}, "hypervisor", "must be kvm or mshv"),
        (
            ACTIVATE,
            {**TARGET, "arch": ""},
            "arch",
            "must be an architecture such as amd64, or * for every one",
        ),
        (ACTIVATE, {**TARGET, "force": None}, "force", "must be a boolean"),
        (ACTIVATE, {**TARGET, "force": 1, "reason": 1}, "force", "must be a boolean"),
        (ACTIVATE, {**TARGET, "reason": "r" * 1001}, "reason", "must be a string of at most 1000 characters"),
        (ROLL_BACK, {**TARGET, "force": True}, "force", "unknown field; allowed: arch, hypervisor, reason"),
        (
            ROLL_BACK,
            {**TARGET, "arch": None},
            "arch",
            "must be an architecture such as amd64, or * for every one",
        ),
        (ROLL_BACK, {**TARGET, "reason": ["why"]}, "reason", "must be a string of at most 1000 characters"),
    ],
)
def test_the_first_bad_field_is_named(
    client: FlaskClient, admin_auth: dict[str, str], url: str, body: Any, path: str, message: str
) -> None:
    response = client.post(url, json=body, headers=admin_auth)
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["errors"]
    assert len(errors) == 1 and errors[0]["path"] == path
    assert message in errors[0]["message"]


def test_a_null_reason_is_no_reason(client: FlaskClient, admin_auth: dict[str, str]) -> None:
    body = {**TARGET, "force": True, "reason": "moving on"}
    assert client.post(ACTIVATE, json=body, headers=admin_auth).status_code == 200
    response = client.post(ROLL_BACK, json={**TARGET, "reason": None}, headers=admin_auth)
    assert response.status_code == 200
    assert response.get_json()["activation"]["reason"] is None


def _documented(name: str) -> tuple[set[str], set[str]]:
    """The properties and the required ones of a request schema in openapi.yaml (all branches)."""
    schema = yaml.safe_load((ROOT / "openapi.yaml").read_text())["components"]["schemas"][name]
    branches = schema.get("oneOf", [schema])
    return (
        {key for branch in branches for key in branch["properties"]},
        set.intersection(*(set(branch.get("required", ())) for branch in branches)),
    )


def _required(*schemas: Schema) -> set[str]:
    return {
        field.data_key or name
        for schema in schemas
        for name, field in schema.fields.items()
        if field.required
    }


@pytest.mark.parametrize(
    ("name", "schemas"),
    [
        ("FitRequest", (FIT_SELECTION, FIT_OPTIONS)),
        ("EvaluateRequest", (EVALUATION,)),
        ("ActivationRequest", (ACTIVATION,)),
        ("RollbackRequest", (ROLLBACK,)),
    ],
)
def test_the_schemas_name_the_documented_fields(name: str, schemas: tuple[Schema, ...]) -> None:
    properties, required = _documented(name)
    assert field_names(*schemas) == properties
    assert _required(*schemas) == required
