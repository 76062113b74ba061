"""Libvirt-path measurements over HTTP: uploaded as they are, fitted several scopes at once, never
mixing QEMU started directly with libvirt-launched QEMU unless told which, evaluated and reported
scope by scope."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from benchmarks.harness.records import libvirt_record, qemu_records

SCOPES = ["qemu", "virtqemud", "virtlogd"]
FIT: dict[str, Any] = {"hypervisor": "kvm", "arch": "amd64", "scope": SCOPES, "target": 0.9}


def _store(client: FlaskClient, auth: dict[str, str], records: list[dict[str, Any]]) -> None:
    answer = client.post("/v1/measurements", json={"records": records}, headers=auth)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["stored"] == len(records)


def _libvirt_records(points: int = 40) -> list[dict[str, Any]]:
    return [libvirt_record(scope, index) for index in range(points) for scope in SCOPES]


def test_one_fit_of_qemu_and_both_daemons(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    _store(client, ingest_auth, _libvirt_records())
    response = client.post(
        "/v1/fits", json={**FIT, "scope": ["virtlogd", "virtqemud", "qemu"]}, headers=admin_auth
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    table_id = response.get_json()["table"]["id"]
    assert table_id.startswith("fit-kvm-amd64-qemu-virtqemud-virtlogd-")
    report = response.get_json()["report"]
    assert report["scope"] == SCOPES and report["samples"] == 120
    assert set(report["heldOut"]["perScope"]) == set(SCOPES)
    assert report["hostFacts"]["libvirt"] == ["9.0.0 (Debian 9.0.0-4+deb12u2)"]
    # The same scopes in another order are the same fit.
    again = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert again.status_code == 200 and again.get_json()["table"]["id"] == table_id
    page = client.get(f"/v1/tables/{table_id}/report")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    for scope in SCOPES:
        assert f'id="evaluation-{scope}"' in text and f'id="measurements-{scope}"' in text
    assert 'data-key="medianRatio" data-scope="virtqemud"' in text
    evaluated = client.post(
        f"/v1/tables/{table_id}/evaluate", json={"hypervisor": "kvm", "arch": "amd64", "scope": "virtlogd"}
    )
    assert evaluated.status_code == 200 and evaluated.get_json()["n"] == 40


def test_qemu_records_of_both_launchers_are_not_mixed_unless_chosen(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    _store(client, ingest_auth, _libvirt_records() + qemu_records(40, run="bare-1"))
    mixed = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert mixed.status_code == 422
    (error,) = mixed.get_json()["errors"]
    assert error["path"] == "launcher"
    assert "40 started directly and 40 started by libvirt" in error["message"]
    chosen = client.post("/v1/fits", json={**FIT, "launcher": "libvirt"}, headers=admin_auth)
    assert chosen.status_code == 201, chosen.get_data(as_text=True)
    fit = chosen.get_json()["report"]
    assert fit["launcher"] == "libvirt" and fit["heldOut"]["perScope"]["qemu"]["samples"] == 40
    direct = client.post("/v1/fits", json={**FIT, "scope": "qemu", "launcher": "direct"}, headers=admin_auth)
    assert direct.status_code == 201 and direct.get_json()["report"]["samples"] == 40
    # A selection naming the runs of one launcher needs no launcher.
    one_run = client.post("/v1/fits", json={**FIT, "scope": "qemu", "runs": ["bare-1"]}, headers=admin_auth)
    assert one_run.status_code == 201 and "launcher" not in one_run.get_json()["report"]
    # Evaluations and reports select by launcher too, among qemu records only.
    table_id = chosen.get_json()["table"]["id"]
    body = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "launcher": "direct"}
    assert client.post(f"/v1/tables/{table_id}/evaluate", json=body).get_json()["n"] == 40
    page = client.get(f"/v1/tables/{table_id}/report?scope=qemu&scope=virtqemud&launcher=libvirt")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "QEMU started by libvirt" in text
    assert 'data-key="measurements" data-scope="qemu" data-value="40"' in text


def test_scope_arrays_are_checked(client: FlaskClient, admin_auth: dict[str, str]) -> None:
    for scope in (["qemu", "qemu"], ["node", "qemu"], [], "vm", [1]):
        response = client.post("/v1/fits", json={**FIT, "scope": scope}, headers=admin_auth)
        assert response.status_code == 422
        assert response.get_json()["errors"][0]["path"] == "scope", scope
    response = client.post("/v1/fits", json={**FIT, "launcher": "bare"}, headers=admin_auth)
    assert response.get_json()["errors"][0] == {"path": "launcher", "message": "must be direct or libvirt"}
