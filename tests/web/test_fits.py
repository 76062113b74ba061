"""From measurements to an active table and back, over HTTP: fit, evaluate, activate, roll back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from benchmarks.harness.records import qemu_records
from overhead_service import create_app
from overhead_service.extensions import get_store, get_sync

MIB, GIB = 1024**2, 1024**3
VMI = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "2Gi"}}}}}


FIT = {
    "hypervisor": "kvm",
    "arch": "amd64",
    "scope": "qemu",
    "parent": "kubevirt-v1.9.0",
    "runs": ["bench-1"],
}


@pytest.fixture
def fitted(client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]) -> dict[str, Any]:
    stored = client.post("/v1/measurements", json={"records": qemu_records(400)}, headers=ingest_auth)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert stored.get_json()["stored"] == 400
    response = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert response.headers["Location"] == f"/v1/tables/{body['table']['id']}"
    return body


def _overhead(client: FlaskClient, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/overhead", json={"vmi": VMI, **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def test_a_fit_is_a_new_immutable_draft(
    client: FlaskClient, fitted: dict[str, Any], admin_auth: dict[str, str]
) -> None:
    table_id = fitted["table"]["id"]
    assert table_id.startswith("fit-kvm-amd64-qemu-")
    assert fitted["table"]["createdBy"] == "alice"
    assert fitted["table"]["parentId"] == "kubevirt-v1.9.0"
    document = client.get(f"/v1/tables/{table_id}").get_json()
    assert document["id"] == table_id and document["fit"]["samples"] == 400
    assert document["fit"]["heldOut"]["coverage"] >= 0.99
    # The same inputs name the same table: nothing new is stored.
    again = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert again.status_code == 200
    assert again.get_json()["table"]["id"] == table_id
    listed = [t["id"] for t in client.get("/v1/tables").get_json()["tables"]]
    assert listed.count(table_id) == 1
    # A draft changes nothing until it is activated.
    assert _overhead(client)["table"] == {"id": "kubevirt-v1.9.0", "provisional": False}


def test_the_fit_recovers_the_formula(client: FlaskClient, fitted: dict[str, Any]) -> None:
    document = client.get(f"/v1/tables/{fitted['table']['id']}").get_json()
    model = next(m for m in document["models"] if (m["hypervisor"], m["arch"]) == ("kvm", "amd64"))
    components = {c["name"]: c for c in model["components"]}
    per_byte = float(components["pagetables"]["coefficient"])
    assert per_byte * GIB == pytest.approx(2.1 * MIB, rel=0.02)
    assert components["pagetables"]["term"] == "perGuestByte"


def test_activate_use_and_roll_back(
    client: FlaskClient, fitted: dict[str, Any], admin_auth: dict[str, str]
) -> None:
    table_id = fitted["table"]["id"]
    before = _overhead(client)
    activated = client.post(
        f"/v1/tables/{table_id}/activate", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert activated.status_code == 200, activated.get_data(as_text=True)
    record_ = activated.get_json()["activation"]
    assert (record_["tableId"], record_["previousTableId"], record_["actor"]) == (
        table_id,
        None,
        "alice",
    )
    after = _overhead(client)
    assert after["table"] == {"id": table_id, "provisional": False}
    assert after["overhead"]["bytes"] != before["overhead"]["bytes"]
    # Only kvm on amd64 changed.
    assert _overhead(client, cpuArch="arm64")["table"]["id"] == "kubevirt-v1.9.0"
    assert _overhead(client, hypervisor="mshv")["table"]["id"] == "kubevirt-v1.9.0"

    # An upstream table has no held-out coverage: forcing needs a reason, and is recorded.
    refused = client.post(
        "/v1/tables/kubevirt-main/activate", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert refused.status_code == 409
    assert refused.get_json()["type"].endswith("activation-refused")
    forced = client.post(
        "/v1/tables/kubevirt-main/activate",
        json={"hypervisor": "kvm", "arch": "amd64", "force": True, "reason": "match the cluster's KubeVirt"},
        headers=admin_auth,
    )
    assert forced.status_code == 200
    assert forced.get_json()["activation"]["previousTableId"] == table_id
    assert _overhead(client)["table"]["id"] == "kubevirt-main"

    wrong = client.post(
        f"/v1/tables/{table_id}/rollback", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert wrong.status_code == 409  # not the active table
    back = client.post(
        "/v1/tables/kubevirt-main/rollback",
        json={"hypervisor": "kvm", "arch": "amd64", "reason": "oops"},
        headers=admin_auth,
    )
    assert back.status_code == 200
    assert _overhead(client)["table"]["id"] == table_id
    client.post(
        f"/v1/tables/{table_id}/rollback", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert _overhead(client)["table"]["id"] == "kubevirt-v1.9.0"
    nothing = client.post(
        "/v1/tables/kubevirt-v1.9.0/rollback", json={"hypervisor": "kvm", "arch": "amd64"}, headers=admin_auth
    )
    assert nothing.status_code == 409

    history = client.get("/v1/activations?hypervisor=kvm").get_json()
    assert history["active"] == []
    assert [(h["action"], h["tableId"]) for h in history["history"]] == [
        ("rollback", None),
        ("rollback", table_id),
        ("activate", "kubevirt-main"),
        ("activate", table_id),
    ]
    assert history["history"][2]["forced"] is True
    assert history["history"][2]["reason"] == "match the cluster's KubeVirt"


def test_a_fit_for_kvm_is_refused_for_mshv(
    client: FlaskClient, fitted: dict[str, Any], admin_auth: dict[str, str]
) -> None:
    response = client.post(
        f"/v1/tables/{fitted['table']['id']}/activate",
        json={"hypervisor": "mshv", "arch": "amd64"},
        headers=admin_auth,
    )
    assert response.status_code == 409
    assert "fitted for kvm/amd64" in response.get_json()["detail"]


def test_evaluate_shows_drift(client: FlaskClient, fitted: dict[str, Any]) -> None:
    selector = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "runs": ["bench-1"]}
    fitted_eval = client.post(f"/v1/tables/{fitted['table']['id']}/evaluate", json=selector).get_json()
    assert fitted_eval["n"] == 400 and fitted_eval["coverage"] >= 0.99
    # After a "QEMU upgrade" that costs 30 MiB more, inline measurements show the table falls short.
    drifted = qemu_records(50, run="after-upgrade", seed=8)
    for r in drifted:
        r["overheadBytes"] += 30 * MIB
        r["rawBytes"] += 30 * MIB
    report = client.post(
        f"/v1/tables/{fitted['table']['id']}/evaluate",
        json={**selector, "runs": None, "measurements": drifted},
    ).get_json()
    assert report["n"] == 50
    assert report["coverage"] < 0.1
    assert report["underProvisioned"]["count"] > 45


def test_fits_need_enough_samples(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    client.post("/v1/measurements", json={"records": qemu_records(20)}, headers=ingest_auth)
    response = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "measurements"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/fits", FIT),
        ("post", "/v1/tables/kubevirt-main/activate", {"hypervisor": "kvm", "arch": "amd64"}),
        ("post", "/v1/tables/kubevirt-main/rollback", {"hypervisor": "kvm", "arch": "amd64"}),
    ],
)
def test_table_changes_need_the_admin_role(
    client: FlaskClient, ingest_auth: dict[str, str], method: str, path: str, body: dict[str, Any]
) -> None:
    assert getattr(client, method)(path, json=body).status_code == 401
    assert getattr(client, method)(path, json=body, headers=ingest_auth).status_code == 403


def test_other_workers_follow_through_the_database(
    app_factory: Callable[..., Flask], tmp_path: Any, admin_auth: dict[str, str]
) -> None:
    """Two apps on one database (two workers or replicas): B sees A's activation after it polls."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = app_factory(DATABASE_URL=url), app_factory(DATABASE_URL=url)
    client_a, client_b = a.test_client(), b.test_client()
    assert _overhead(client_b)["table"]["id"] == "kubevirt-v1.9.0"
    forced = {"hypervisor": "kvm", "arch": "amd64", "force": True, "reason": "test"}
    assert (
        client_a.post("/v1/tables/kubevirt-main/activate", json=forced, headers=admin_auth).status_code == 200
    )
    assert _overhead(client_a)["table"]["id"] == "kubevirt-main"
    assert _overhead(client_b)["table"]["id"] == "kubevirt-v1.9.0"  # B has not polled yet
    assert get_sync(b).refresh() is True
    assert _overhead(client_b)["table"]["id"] == "kubevirt-main"
    assert get_sync(b).refresh() is False  # nothing new


def test_a_database_without_a_schema_leaves_the_built_in_tables(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """As ``overhead-service compute`` runs before ``init-db``: one clear warning line, answers still."""
    with caplog.at_level(logging.WARNING, logger="overhead_service"):
        app = create_app(
            {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "SYNC_SECONDS": 0}
        )
    failures = [r.getMessage() for r in caplog.records if "table sync failed" in r.getMessage()]
    assert failures == ["table sync failed (answering with the tables already loaded): no such table: state"]
    try:
        assert _overhead(app.test_client())["table"]["id"] == "kubevirt-v1.9.0"
    finally:
        get_store(app).dispose()
