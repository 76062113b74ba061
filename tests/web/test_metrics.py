"""Prometheus metrics as GET /metrics shows them: what each request, answer, upload and fit counts,
and the active-table gauges. The counters are process-wide, so each test compares a scrape after
with a scrape before."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.records import qemu_records, record
from overhead_service.extensions import SERVICE, get_sync
from overhead_service.web import metrics
from overhead_service.web.observe import observe_answer, observe_batch

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

VMI = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}}}
L1VH = {"developerConfiguration": {"featureGates": ["HyperVL1VH"]}}
FIT = {
    "hypervisor": "kvm",
    "arch": "amd64",
    "scope": "qemu",
    "parent": "kubevirt-v1.9.0",
    "runs": ["bench-1"],
}

AGREED = {
    "kubevirt_vmi_hypervisor_type": "counter",
    "kubevirt_l1vh_fallback": "counter",
    "overhead_http_requests": "counter",
    "overhead_http_request_duration_seconds": "histogram",
    "overhead_answers": "counter",
    "overhead_provisional_answers": "counter",
    "overhead_warnings": "counter",
    "overhead_measurements": "counter",
    "overhead_fits": "counter",
    "overhead_fit_duration_seconds": "histogram",
    "overhead_active_table_info": "gauge",
    "overhead_active_table_coverage_ratio": "gauge",
    "overhead_active_table_coverage_target_ratio": "gauge",
}


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def overhead(client: FlaskClient, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/overhead", json={"vmi": VMI, **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def test_metrics_are_prometheus_text_with_every_agreed_metric(client: FlaskClient) -> None:
    overhead(client)  # so that labelled series exist
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f.type for f in text_string_to_metric_families(response.get_data(as_text=True))}
    for name, kind in AGREED.items():
        assert families.get(name) == kind, name


def test_an_overhead_answer_counts_its_request_decision_and_table(client: FlaskClient) -> None:
    before = scrape(client)
    overhead(client)
    overhead(client)
    after = scrape(client)
    http = {"route": "/v1/overhead", "method": "POST", "status": "200"}
    assert delta(before, after, "overhead_http_requests_total", **http) == 2
    assert delta(before, after, "overhead_http_request_duration_seconds_count", **http) == 2
    assert delta(before, after, "overhead_http_request_duration_seconds_sum", **http) > 0
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == 2
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="mshv") == 0
    assert delta(before, after, "overhead_answers_total", table="kubevirt-v1.9.0", hypervisor="kvm") == 2
    assert (
        delta(before, after, "overhead_provisional_answers_total", table="kubevirt-v1.9.0", hypervisor="kvm")
        == 0
    )
    assert sum(delta(before, after, "kubevirt_l1vh_fallback_total", reason=r) for r in _REASONS) == 0
    # The scrape before is counted by the scrape after (it was answered in between).
    assert (
        delta(before, after, "overhead_http_requests_total", route="/metrics", method="GET", status="200")
        == 1
    )


_REASONS = ("mshv-device-unavailable", "emulation-no-device")


def test_fallbacks_are_counted_by_reason(client: FlaskClient) -> None:
    before = scrape(client)
    no_mshv = overhead(client, kubevirtConfiguration=L1VH, node={"mshvAvailable": False})
    assert no_mshv["hypervisor"]["reason"] == "mshv-device-unavailable"
    emulated = overhead(
        client,
        kubevirtConfiguration={"developerConfiguration": {"featureGates": [], "useEmulation": True}},
        node={"kvmAvailable": False},
    )
    assert emulated["hypervisor"]["reason"] == "emulation-no-device"
    on_mshv = overhead(client, kubevirtConfiguration=L1VH)
    assert on_mshv["hypervisor"]["name"] == "mshv"
    after = scrape(client)
    assert delta(before, after, "kubevirt_l1vh_fallback_total", reason="mshv-device-unavailable") == 1
    assert delta(before, after, "kubevirt_l1vh_fallback_total", reason="emulation-no-device") == 1
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == 2
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="mshv") == 1


def test_provisional_answers_are_counted(client: FlaskClient) -> None:
    before = scrape(client)
    answer = overhead(client, hypervisor="mshv")
    assert answer["table"] == {"id": "kubevirt-v1.9.0", "provisional": True}
    after = scrape(client)
    labels = {"table": "kubevirt-v1.9.0", "hypervisor": "mshv"}
    assert delta(before, after, "overhead_provisional_answers_total", **labels) == 1
    assert delta(before, after, "overhead_answers_total", **labels) == 1


def test_a_batch_counts_each_answer_and_no_problem(client: FlaskClient) -> None:
    items = [
        {"vmi": VMI},
        {"vmi": VMI, "hypervisor": "mshv"},
        {"vmi": VMI, "kubevirtConfiguration": L1VH, "node": {"mshvAvailable": False}},
        {"vmi": {"spec": {"domain": {"cpu": {"cores": -1}}}}},
        {"vmi": VMI, "table": "kubevirt-main"},
    ]
    before = scrape(client)
    response = client.post("/v1/overhead/batch", json={"items": items})
    assert response.status_code == 200
    assert response.get_json()["items"][3]["status"] == 422
    after = scrape(client)
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == 3
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="mshv") == 1
    assert delta(before, after, "kubevirt_l1vh_fallback_total", reason="mshv-device-unavailable") == 1
    assert delta(before, after, "overhead_answers_total", table="kubevirt-v1.9.0", hypervisor="kvm") == 2
    assert delta(before, after, "overhead_answers_total", table="kubevirt-main", hypervisor="kvm") == 1
    assert (
        delta(before, after, "overhead_provisional_answers_total", table="kubevirt-v1.9.0", hypervisor="mshv")
        == 1
    )
    http = {"route": "/v1/overhead/batch", "method": "POST", "status": "200"}
    assert delta(before, after, "overhead_http_requests_total", **http) == 1


def test_observe_answer_counts_an_answer_from_elsewhere(client: FlaskClient, app: Flask) -> None:
    """What another endpoint (e.g. /v1/render) calls with an answer shaped like compute's."""
    answer = app.extensions[SERVICE].compute(
        {"vmi": VMI, "kubevirtConfiguration": L1VH, "node": {"mshvAvailable": False}}
    )
    before = scrape(client)
    observe_answer(answer)  # outside a request: metrics only
    observe_batch([answer, {"type": "about:blank", "status": 422}])
    after = scrape(client)
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == 2
    assert delta(before, after, "kubevirt_l1vh_fallback_total", reason="mshv-device-unavailable") == 2
    assert delta(before, after, "overhead_answers_total", table="kubevirt-v1.9.0", hypervisor="kvm") == 2


def test_errors_and_unknown_routes_are_counted_by_status_with_bounded_labels(client: FlaskClient) -> None:
    before = scrape(client)
    bad = client.post("/v1/overhead", json={"vmi": {"spec": {"domain": {"cpu": {"cores": "2"}}}}})
    assert bad.status_code == 422
    assert client.get("/no/such/path/12345").status_code == 404
    assert client.open("/v1/overhead", method="BREW").status_code == 405
    assert client.get("/v1/tables/no-such-table").status_code == 404
    after = scrape(client)
    assert (
        delta(
            before, after, "overhead_http_requests_total", route="/v1/overhead", method="POST", status="422"
        )
        == 1
    )
    assert (
        delta(before, after, "overhead_http_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    assert (
        delta(before, after, "overhead_http_requests_total", route="unmatched", method="other", status="405")
        == 1
    )
    template = {"route": "/v1/tables/<table_id>", "method": "GET", "status": "404"}
    assert delta(before, after, "overhead_http_requests_total", **template) == 1
    assert not any("12345" in dict(labels).get("route", "") for _, labels in after)
    assert not any(dict(labels).get("method") == "BREW" for _, labels in after)
    # A 422 decided no hypervisor.
    assert delta(before, after, "kubevirt_vmi_hypervisor_type_total", hypervisor="kvm") == 0


def test_measurements_are_counted_by_outcome(client: FlaskClient, ingest_auth: dict[str, str]) -> None:
    records = [record(sampleId=f"m-{i}") for i in range(5)]
    before = scrape(client)
    assert (
        client.post("/v1/measurements", json={"records": records[:3]}, headers=ingest_auth).status_code == 200
    )
    again = client.post("/v1/measurements", json={"records": records}, headers=ingest_auth)
    assert again.get_json() | {"duplicateKeys": None} == {"stored": 2, "duplicates": 3, "duplicateKeys": None}
    invalid = [record(sampleId="m-10"), record(sampleId="m-11", vm={"vcpus": 0}), record(sampleId="m-12")]
    refused = client.post("/v1/measurements", json={"records": invalid}, headers=ingest_auth)
    assert refused.status_code == 422
    after = scrape(client)
    assert delta(before, after, "overhead_measurements_total", outcome="ingested") == 5
    assert delta(before, after, "overhead_measurements_total", outcome="duplicate") == 3
    assert delta(before, after, "overhead_measurements_total", outcome="rejected") == 3


def test_fits_are_counted_and_timed(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    stored = client.post("/v1/measurements", json={"records": qemu_records(400)}, headers=ingest_auth)
    assert stored.status_code == 200
    before = scrape(client)
    assert client.post("/v1/fits", json=FIT, headers=admin_auth).status_code == 201
    assert client.post("/v1/fits", json=FIT, headers=admin_auth).status_code == 200
    too_few = client.post("/v1/fits", json=FIT | {"runs": ["no-such-run"]}, headers=admin_auth)
    assert too_few.status_code == 422
    assert client.post("/v1/fits", json=FIT, headers=ingest_auth).status_code == 403  # not a fit at all
    after = scrape(client)
    assert delta(before, after, "overhead_fits_total", outcome="created") == 1
    assert delta(before, after, "overhead_fits_total", outcome="existing") == 1
    assert delta(before, after, "overhead_fits_total", outcome="failed") == 1
    assert delta(before, after, "overhead_fit_duration_seconds_count") == 1
    assert delta(before, after, "overhead_fit_duration_seconds_sum") > 0


def _active(samples: Samples) -> dict[tuple[str, str, str, str], float]:
    return {
        (labels["hypervisor"], labels["arch"], labels["table"], labels["provisional"]): v
        for (name, frozen), v in samples.items()
        if name == "overhead_active_table_info"
        for labels in [dict(frozen)]
    }


def test_active_tables_and_their_coverage(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    # At start-up: the default table for every hypervisor and arch; its mshv model is provisional.
    start = _active(scrape(client))
    assert start[("kvm", "*", "kubevirt-v1.9.0", "false")] == 1
    assert start[("mshv", "*", "kubevirt-v1.9.0", "true")] == 1

    assert (
        client.post("/v1/measurements", json={"records": qemu_records(400)}, headers=ingest_auth).status_code
        == 200
    )
    fitted = client.post("/v1/fits", json=FIT, headers=admin_auth).get_json()
    table_id = fitted["table"]["id"]
    where = {"hypervisor": "kvm", "arch": "amd64"}
    activated = client.post(f"/v1/tables/{table_id}/activate", json=where, headers=admin_auth)
    assert activated.status_code == 200, activated.get_data(as_text=True)
    samples = scrape(client)
    active = _active(samples)
    assert active[("kvm", "amd64", table_id, "false")] == 1
    assert active[("kvm", "*", "kubevirt-v1.9.0", "false")] == 1  # other arches keep the default
    report = client.get(f"/v1/tables/{table_id}").get_json()["fit"]
    labels = {"hypervisor": "kvm", "arch": "amd64", "table": table_id}
    assert value(samples, "overhead_active_table_coverage_ratio", **labels) == report["heldOut"]["coverage"]
    assert (
        value(samples, "overhead_active_table_coverage_target_ratio", **labels) == report["target"] == 0.995
    )
    # Built-in upstream tables have no fit report: no coverage series for them.
    assert not any(
        name == "overhead_active_table_coverage_ratio" and dict(frozen)["table"] == "kubevirt-v1.9.0"
        for name, frozen in samples
    )

    rolled = client.post(f"/v1/tables/{table_id}/rollback", json=where, headers=admin_auth)
    assert rolled.status_code == 200
    samples = scrape(client)
    assert _active(samples)[("kvm", "amd64", table_id, "false")] == 0  # no longer active: back to 0
    assert value(samples, "overhead_active_table_coverage_ratio", **labels) == 0
    assert value(samples, "overhead_active_table_coverage_target_ratio", **labels) == 0


def test_the_gauges_follow_a_change_made_elsewhere(app_factory: Any, admin_auth: dict[str, str]) -> None:
    """Another worker's activation reaches this one's gauges when it syncs."""
    here, there = app_factory(), app_factory()
    forced = {"hypervisor": "mshv", "arch": "*", "force": True, "reason": "try the node-level model"}
    response = there.test_client().post(
        "/v1/tables/mshv-l1vh-provisional/activate", json=forced, headers=admin_auth
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert get_sync(here).refresh() is True
    active = _active(scrape(here.test_client()))
    assert active[("mshv", "*", "mshv-l1vh-provisional", "true")] == 1
    assert active[("mshv", "*", "kubevirt-v1.9.0", "true")] == 0


def test_every_gauge_drops_dead_workers() -> None:
    """livemax: a restarted worker's files replace the dead one's instead of adding to them."""
    for gauge in (metrics.ACTIVE_TABLE, metrics.COVERAGE, metrics.COVERAGE_TARGET):
        assert gauge._multiprocess_mode == "livemax"


# Each warning code and a request that gets it (over HTTP: overhead, or render for the render-only ones).
HEADROOM = {"spec": {"domain": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}}}}}
SHARED = {"spec": {"domain": {"resources": {"limits": {"memory": "1.5Gi"}}}}}


def test_warnings_are_counted_by_code(client: FlaskClient) -> None:
    before = scrape(client)
    overhead(client, hypervisor="mshv")  # provisional-model
    client.post("/v1/overhead", json={"vmi": HEADROOM})  # no-launcher-headroom
    response = client.post("/v1/render", json={"vmi": SHARED})  # no-launcher-headroom + shared
    assert response.status_code == 200
    items = [{"vmi": HEADROOM}, {"vmi": HEADROOM, "hypervisor": "mshv"}, {"vmi": VMI}, {"vmi": []}]
    assert client.post("/v1/overhead/batch", json={"items": items}).status_code == 200
    after = scrape(client)
    assert delta(before, after, "overhead_warnings_total", code="provisional-model") == 2
    assert delta(before, after, "overhead_warnings_total", code="no-launcher-headroom") == 4
    assert delta(before, after, "overhead_warnings_total", code="shared-quantity-double-overhead") == 1
    assert delta(before, after, "overhead_warnings_total", code="request-below-guest-memory") == 0
