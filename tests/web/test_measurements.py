"""``POST /v1/measurements`` and ``GET /v1/measurements`` over the Flask test client."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from benchmarks.harness.records import record, sample
from overhead_service.calibration.records import MAX_BATCH

PROBLEM = "urn:overhead-service:problem:"


@pytest.fixture
def upload(client: FlaskClient, ingest_auth: dict[str, str]) -> Any:
    def send(body: Any, **kwargs: Any) -> Any:
        return client.post("/v1/measurements", json=body, headers=ingest_auth, **kwargs)

    return send


def _everything(client: FlaskClient, query: str = "") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url = f"/v1/measurements?limit=7{query}"
    while True:
        response = client.get(url)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        items += page["items"]
        if page["next"] is None:
            return items
        url = f"/v1/measurements?limit=7{query}&cursor={page['next']}"


def test_upload_then_read_back(client: FlaskClient, upload: Any) -> None:
    batch = [sample(i) for i in range(20)]
    response = upload({"records": batch})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"stored": 20, "duplicates": 0, "duplicateKeys": []}
    items = _everything(client)
    stripped = [
        {k: v for k, v in item.items() if k not in ("id", "ingestedAt", "ingestedBy")} for item in items
    ]
    key = lambda r: r["sampleId"]  # noqa: E731
    assert sorted(stripped, key=key) == sorted(batch, key=key)
    assert all(item["ingestedBy"] == "bench-ci" for item in items)


def test_resending_a_batch_changes_nothing(client: FlaskClient, upload: Any) -> None:
    batch = [sample(i) for i in range(5)]
    assert upload({"records": batch}).get_json()["stored"] == 5
    before = client.get("/v1/measurements").get_json()
    again = upload({"records": batch})
    assert again.status_code == 200
    assert again.get_json() == {
        "stored": 0,
        "duplicates": 5,
        "duplicateKeys": [{"runId": "run-1", "sampleId": f"sample-{i}"} for i in range(5)],
    }
    assert client.get("/v1/measurements").get_json() == before


def test_a_batch_with_bad_records_stores_nothing_and_lists_each(client: FlaskClient, upload: Any) -> None:
    batch = [sample(i) for i in range(6)]
    batch[1]["vm"]["vcpus"] = True
    batch[4]["overheadBytes"] += 1
    response = upload({"records": batch})
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"] == PROBLEM + "invalid-records"
    assert body["title"] == "Invalid measurement records"
    assert [error["path"] for error in body["errors"]] == ["records[1].vm.vcpus", "records[4].overheadBytes"]
    assert body["errors"][0]["message"] == "must be an integer between 1 and 1024"
    assert body["detail"].startswith("records: 2 invalid records, nothing stored")
    assert client.get("/v1/measurements").get_json() == {"items": [], "next": None}


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ([sample(1)], "", "the request must be a JSON object with a 'records' array"),
        ({}, "records", "is required"),
        ({"records": [], "dryRun": True}, "dryRun", "unknown field; allowed: records"),
        ({"records": {"0": sample(1)}}, "records", "must be an array of measurement records"),
        ({"records": None}, "records", "must be an array of measurement records"),
    ],
)
def test_bad_bodies(upload: Any, body: Any, path: str, message: str) -> None:
    response = upload(body)
    assert response.status_code == 422
    assert response.get_json()["errors"] == [{"path": path, "message": message}]


def test_too_many_records(upload: Any) -> None:
    response = upload({"records": [record()] * (MAX_BATCH + 1)})
    assert response.status_code == 422
    assert response.get_json()["errors"] == [
        {"path": "records", "message": "at most 10000 records per batch, got 10001"}
    ]


def test_the_largest_batch_is_stored(client: FlaskClient, upload: Any) -> None:
    response = upload({"records": [sample(i) for i in range(MAX_BATCH)]})
    assert response.get_json()["stored"] == MAX_BATCH
    assert len(client.get("/v1/measurements?limit=1000").get_json()["items"]) == 1000


def test_an_empty_batch_stores_nothing(upload: Any) -> None:
    assert upload({"records": []}).get_json() == {"stored": 0, "duplicates": 0, "duplicateKeys": []}


def test_malformed_and_undeclared_bodies(client: FlaskClient, ingest_auth: dict[str, str]) -> None:
    response = client.post("/v1/measurements", data="{", content_type="application/json", headers=ingest_auth)
    assert response.status_code == 400 and response.get_json()["errors"][0]["path"] == ""
    response = client.post("/v1/measurements", data="{}", content_type="text/plain", headers=ingest_auth)
    assert response.status_code == 415


def test_too_large_bodies(app_factory: Any, ingest_auth: dict[str, str]) -> None:
    client = app_factory(MAX_CONTENT_LENGTH=1000).test_client()
    response = client.post(
        "/v1/measurements", json={"records": [sample(i) for i in range(5)]}, headers=ingest_auth
    )
    assert response.status_code == 413


def test_filters_and_pages(client: FlaskClient, upload: Any) -> None:
    batch = [
        *(sample(i, run="a") for i in range(10)),
        *(sample(i, run="b", hypervisor="mshv", host={"accelerator": "mshv"}) for i in range(10)),
        *(sample(i, run="c", arch="arm64") for i in range(10)),
    ]
    assert upload({"records": batch}).get_json()["stored"] == 30

    def keys(query: str) -> set[tuple[str, str]]:
        return {(item["runId"], item["sampleId"]) for item in _everything(client, query)}

    def expected(predicate: Any) -> set[tuple[str, str]]:
        return {(r["runId"], r["sampleId"]) for r in batch if predicate(r)}

    assert keys("") == expected(lambda r: True)
    assert keys("&hypervisor=mshv") == expected(lambda r: r["runId"] == "b")
    assert keys("&arch=arm64") == expected(lambda r: r["runId"] == "c")
    assert keys("&scope=qemu&hypervisor=kvm") == expected(
        lambda r: r["scope"] == "qemu" and r["runId"] != "b"
    )
    assert keys("&runId=a&runId=c") == expected(lambda r: r["runId"] in ("a", "c"))
    assert keys("&since=2026-11-05T00:00:00Z&until=2026-11-08T00:00:00%2B00:00") == expected(
        lambda r: "2026-11-05" <= r["measuredAt"][:10] < "2026-11-08"
    )
    assert keys("&runId=zzz") == set()


@pytest.mark.parametrize(
    ("query", "path", "message"),
    [
        ("hypervisor=xen", "hypervisor", "must be one of: kvm, mshv"),
        ("scope=vm", "scope", "must be one of: qemu, pod, node, virtqemud, virtlogd"),
        ("arch=", "arch", "non-empty string"),
        ("arch=a%00b", "arch", "NUL"),
        ("runId=", "runId", "non-empty string"),
        ("since=yesterday", "since", "RFC 3339"),
        ("until=2026-11-20T10:00:00", "until", "time zone"),
        ("limit=0", "limit", "between 1 and 1000"),
        ("limit=1001", "limit", "between 1 and 1000"),
        ("limit=ten", "limit", "between 1 and 1000"),
        ("limit=1.5", "limit", "between 1 and 1000"),
        ("cursor=abc", "cursor", "is not a cursor returned by a previous page"),
        ("cursor=-3", "cursor", "is not a cursor"),
        ("hypervsior=kvm", "hypervsior", "unknown query parameter"),
        ("limit=5&limit=6", "limit", "may be given once"),
        ("hypervisor=kvm&hypervisor=mshv", "hypervisor", "may be given once"),
    ],
)
def test_bad_query_parameters_are_named(client: FlaskClient, query: str, path: str, message: str) -> None:
    response = client.get(f"/v1/measurements?{query}")
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    errors = response.get_json()["errors"]
    assert len(errors) == 1 and errors[0]["path"] == path
    assert message in errors[0]["message"]


def test_too_many_run_ids(client: FlaskClient) -> None:
    query = "&".join(f"runId=r{i}" for i in range(101))
    response = client.get(f"/v1/measurements?{query}")
    assert response.status_code == 422 and response.get_json()["errors"][0]["path"] == "runId"


def test_listing_is_open_and_has_a_default_page_size(client: FlaskClient, upload: Any) -> None:
    upload({"records": [sample(i) for i in range(120)]})
    page = client.get("/v1/measurements").get_json()
    assert len(page["items"]) == 100 and page["next"] is not None
    rest = client.get(f"/v1/measurements?cursor={page['next']}").get_json()
    assert len(rest["items"]) == 20 and rest["next"] is None
    assert {i["id"] for i in page["items"]}.isdisjoint(i["id"] for i in rest["items"])


def test_a_negative_overhead_is_refused_at_its_path(client: FlaskClient, upload: Any) -> None:
    """Decided at ingestion, by field: a fit or report on the selection could not use the record."""
    negative = sample(3)
    negative["rawBytes"] = negative["guestTouchedBytes"] - 1024**2
    negative["overheadBytes"] = -(1024**2)
    response = upload({"records": [sample(1), negative]})
    assert response.status_code == 422
    assert response.get_json()["errors"] == [
        {"path": "records[1].overheadBytes", "message": "must be an integer between 0 and 1099511627776"}
    ]
    assert client.get("/v1/measurements").get_json() == {"items": [], "next": None}
