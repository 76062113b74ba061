"""GET /v1/tables and GET /v1/tables/<id>."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from overhead_service.errors import PROBLEM_BASE
from overhead_service.model.tables import TableRegistry


def test_list(client: FlaskClient) -> None:
    response = client.get("/v1/tables")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["default"] == "kubevirt-v1.9.0"
    assert [t["id"] for t in body["tables"]] == [
        "kubevirt-v1.9.0",
        "kubevirt-main",
        "mshv-l1vh-provisional",
        "kvm-measured-pvm-2026-11",
        "kvm-libvirt-measured-pvm-2026-12",
    ]
    assert body["tables"] == TableRegistry.builtin().summaries()
    for summary in body["tables"]:
        assert summary["title"]
        assert summary["provenance"]
        expected = {("mshv", "*")} if summary["id"].startswith("mshv") else {("kvm", "*"), ("mshv", "*")}
        if summary["id"].startswith(("kvm-measured", "kvm-libvirt-measured")):
            expected |= {("kvm", "amd64")}  # the fitted model, next to the parent's
        assert {(m["hypervisor"], m["arch"]) for m in summary["models"]} == expected


def test_list_names_the_configured_default(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(DEFAULT_TABLE="kubevirt-main").test_client()
    assert client.get("/v1/tables").get_json()["default"] == "kubevirt-main"


@pytest.mark.parametrize("table_id", ["kubevirt-v1.9.0", "kubevirt-main"])
def test_get_one(client: FlaskClient, table_id: str) -> None:
    response = client.get(f"/v1/tables/{table_id}")
    assert response.status_code == 200
    document = response.get_json()
    assert document == TableRegistry.builtin().document(table_id)
    assert document["id"] == table_id
    assert document["schemaVersion"] == 1
    assert document["provenance"]["repository"] == "kubevirt/kubevirt"
    assert document["models"]


def test_unknown_table_is_404(client: FlaskClient) -> None:
    response = client.get("/v1/tables/kubevirt-v0.1")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 404
    assert body["type"] == PROBLEM_BASE + "unknown-table"
    assert "kubevirt-v0.1" in body["detail"]


@pytest.mark.parametrize("url", ["/v1/tables", "/v1/tables/kubevirt-main"])
def test_tables_are_read_only(client: FlaskClient, url: str) -> None:
    response = client.post(url, json={})
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
