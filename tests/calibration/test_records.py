"""Measurement records: strict validation with one problem per bad record, at its path; the one
definition (RecordSchema) that the fast path, the fit's columns and openapi.yaml agree with."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from benchmarks.harness.records import GIB, MIB, record, sample
from overhead_service.calibration import SampleArrays, sample_from_record, samples
from overhead_service.calibration.record_fields import Integer, RecordField
from overhead_service.calibration.records import (
    LEAVES,
    MAX_BATCH,
    RecordSchema,
    parse_timestamp,
    validate_batch,
    validate_record,
)
from overhead_service.errors import InputError, InvalidRecords, problem
from tests.support import ROOT

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _problem_of(bad: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(InvalidRecords) as caught:
        validate_batch([bad], now=NOW)
    assert len(caught.value.errors) == 1
    error = caught.value.errors[0]
    return error.path, error.detail


def test_valid_records_are_returned_unchanged() -> None:
    records = [record(), *(sample(i) for i in range(50))]
    assert validate_batch(records, now=NOW) is records
    assert validate_record(record(), now=NOW) == record()


def test_every_optional_field_is_accepted() -> None:
    full = record(
        vm={
            "tpm": True,
            "sev": False,
            "dedicatedCpu": True,
            "downwardMetrics": False,
            "execProbes": 2,
            "deviceSet": "minimal",
            "touchedShare": 1,
            "vcpusOnline": True,
        },
        host={"libvirt": "10.0.0", "kubevirt": "v1.9.0"},
        raw={"rss": 1, "pss": 0, "pageTables": 4096, "cgroupAnon": 7},
    )
    assert validate_batch([full], now=NOW) == [full]


BAD_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({"runId": ""}, "runId", "non-empty string"),
    ({"runId": "x" * 201}, "runId", "at most 200"),
    ({"sampleId": 7}, "sampleId", "non-empty string"),
    ({"hypervisor": "xen"}, "hypervisor", "one of: kvm, mshv"),
    ({"hypervisor": "hyperv-direct"}, "hypervisor", "one of: kvm, mshv"),
    ({"arch": "a" * 65}, "arch", "at most 64"),
    ({"scope": "vm"}, "scope", "one of: qemu, pod, node, virtqemud, virtlogd"),
    ({"overheadBytes": 1.0}, "overheadBytes", "must be an integer"),
    ({"overheadBytes": True}, "overheadBytes", "must be an integer"),
    ({"overheadBytes": "283115520"}, "overheadBytes", "must be an integer"),
    ({"overheadBytes": 2**40 + 1, "rawBytes": GIB + 2**40 + 1}, "overheadBytes", "between"),
    ({"rawBytes": -1}, "rawBytes", "between 0 and"),
    ({"guestTouchedBytes": None}, "guestTouchedBytes", "must be an integer"),
    ({"vm": {"vcpus": 0}}, "vm.vcpus", "between 1 and 1024"),
    ({"vm": {"vcpus": 1025}}, "vm.vcpus", "between 1 and 1024"),
    ({"vm": {"vcpus": True}}, "vm.vcpus", "between 1 and 1024"),
    ({"vm": {"guestMemoryBytes": MIB - 1}}, "vm.guestMemoryBytes", "between 1048576"),
    ({"vm": {"guestMemoryBytes": 16 * 1024**4 + 1}}, "vm.guestMemoryBytes", "between"),
    ({"vm": {"graphics": 1}}, "vm.graphics", "true or false"),
    ({"vm": {"vfio": "false"}}, "vm.vfio", "true or false"),
    ({"vm": {"ioThreads": 257}}, "vm.ioThreads", "between 0 and 256"),
    ({"vm": {"tpm": None}}, "vm.tpm", "true or false"),
    ({"vm": {"execProbes": 3}}, "vm.execProbes", "between 0 and 2"),
    ({"vm": {"deviceSet": "full"}}, "vm.deviceSet", "minimal, kubevirt"),
    ({"vm": {"touchedShare": 1.5}}, "vm.touchedShare", "between 0 and 1"),
    ({"vm": {"touchedShare": False}}, "vm.touchedShare", "between 0 and 1"),
    ({"vm": {"vcpusOnline": 1}}, "vm.vcpusOnline", "true or false"),
    ({"vm": {"cores": 2}}, "vm.cores", "unknown field"),
    ({"vm": []}, "vm", "must be an object"),
    ({"host": {"kernel": ""}}, "host.kernel", "non-empty string"),
    ({"host": {"libvirt": 10}}, "host.libvirt", "non-empty string"),
    ({"host": {"accelerator": "hvf"}}, "host.accelerator", "one of: kvm, tcg, mshv"),
    ({"host": {"node": "a\x00b"}}, "host.node", "NUL"),
    ({"host": {"cpuModel": "\ud800"}}, "host.cpuModel", "surrogates"),
    ({"host": {"os": "linux"}}, "host.os", "unknown field"),
    ({"host": "worker-3"}, "host", "must be an object"),
    ({"measuredAt": "2026-11-20T10:31:00"}, "measuredAt", "time zone"),
    ({"measuredAt": "2026-11-20"}, "measuredAt", "time zone"),
    ({"measuredAt": "2026-02-30T10:31:00Z"}, "measuredAt", "not a valid date-time"),
    ({"measuredAt": 1764000000}, "measuredAt", "RFC 3339"),
    ({"measuredAt": "2026-11-26T12:05:01Z"}, "measuredAt", "in the future"),
    ({"measuredAt": "1999-12-31T23:59:59Z"}, "measuredAt", "before 2000"),
    ({"raw": {"rss": -1}}, "raw.rss", "between 0 and"),
    ({"raw": {"rss": 1.5}}, "raw.rss", "between 0 and"),
    ({"raw": [1, 2]}, "raw", "must be an object"),
    ({"raw": {f"f{i}": 1 for i in range(65)}}, "raw", "at most 64"),
    ({"notes": "hello"}, "notes", "unknown field"),
    ({"id": 3}, "id", "unknown field"),
]


@pytest.mark.parametrize(("change", "path", "message"), BAD_FIELDS)
def test_a_bad_field_is_named(change: dict[str, Any], path: str, message: str) -> None:
    got_path, got_message = _problem_of(record(**change))
    assert got_path == f"records[0].{path}"
    assert message in got_message


@pytest.mark.parametrize(("change", "path", "message"), BAD_FIELDS)
def test_the_schema_names_the_same_problem(change: dict[str, Any], path: str, message: str) -> None:
    """validate_record is marshmallow's load of RecordSchema; validate_batch its fast path."""
    with pytest.raises(InputError) as caught:
        validate_record(record(**change), now=NOW)
    assert (f"records[0].{caught.value.path}", caught.value.detail) == _problem_of(record(**change))


@pytest.mark.parametrize(
    "missing", ["runId", "sampleId", "hypervisor", "arch", "scope", "vm", "host", "measuredAt"]
)
def test_required_record_fields(missing: str) -> None:
    bad = record()
    del bad[missing]
    assert _problem_of(bad) == (f"records[0].{missing}", "is required")


@pytest.mark.parametrize(
    ("group", "missing"),
    [
        ("vm", "vcpus"),
        ("vm", "guestMemoryBytes"),
        ("vm", "ioThreads"),
        ("host", "qemu"),
        ("host", "accelerator"),
    ],
)
def test_required_nested_fields(group: str, missing: str) -> None:
    bad = record()
    del bad[group][missing]
    assert _problem_of(bad) == (f"records[0].{group}.{missing}", "is required")


def test_overhead_must_be_raw_minus_touched() -> None:
    path, message = _problem_of(record(overheadBytes=283_115_521))
    assert path == "records[0].overheadBytes"
    assert "must equal rawBytes - guestTouchedBytes" in message


def test_the_guest_cannot_touch_more_than_its_ram_and_slack() -> None:
    touched = GIB + 64 * MIB
    assert validate_batch([record(guestTouchedBytes=touched, rawBytes=touched + 283_115_520)], now=NOW)
    path, message = _problem_of(record(guestTouchedBytes=touched + 1, rawBytes=touched + 1 + 283_115_520))
    assert path == "records[0].guestTouchedBytes" and "64 MiB" in message


def test_a_negative_overhead_is_refused_at_ingestion() -> None:
    # A fit needs the scope's memory: refused here, by field, rather than by every later fit.
    negative = record(overheadBytes=-MIB, rawBytes=GIB - MIB)
    assert _problem_of(negative) == (
        "records[0].overheadBytes",
        "must be an integer between 0 and 1099511627776",
    )
    with pytest.raises(InputError) as caught:
        validate_record(negative, now=NOW)
    assert (caught.value.path, caught.value.detail) == (
        "overheadBytes",
        "must be an integer between 0 and 1099511627776",
    )
    zero = record(overheadBytes=0, rawBytes=GIB)
    assert validate_batch([zero], now=NOW) == [zero]


@pytest.mark.parametrize(
    ("hypervisor", "accelerator", "ok"),
    [("kvm", "kvm", True), ("kvm", "tcg", True), ("mshv", "mshv", True), ("mshv", "tcg", True),
     ("kvm", "mshv", False), ("mshv", "kvm", False)],
)  # fmt: skip
def test_the_accelerator_belongs_to_the_hypervisor(hypervisor: str, accelerator: str, ok: bool) -> None:
    candidate = record(hypervisor=hypervisor, host={"accelerator": accelerator})
    if ok:
        assert validate_batch([candidate], now=NOW) == [candidate]
    else:
        assert _problem_of(candidate) == (
            "records[0].host.accelerator",
            f"accelerator {accelerator} does not run hypervisor {hypervisor} (only tcg runs either)",
        )


def test_every_bad_record_is_reported_once_with_its_index() -> None:
    records: list[Any] = [sample(i) for i in range(10)]
    records[2]["vm"]["vcpus"] = 0
    records[2]["scope"] = "bogus"  # a second problem in the same record: only the first is reported
    records[5] = "not a record"
    records[9]["measuredAt"] = "yesterday"
    with pytest.raises(InvalidRecords) as caught:
        validate_batch(records, now=NOW)
    error = caught.value
    assert [(e.path, e.detail) for e in error.errors] == [
        ("records[2].scope", "must be one of: qemu, pod, node, virtqemud, virtlogd"),
        ("records[5]", "must be an object"),
        (
            "records[9].measuredAt",
            "must be an RFC 3339 date-time with a time zone, such as 2026-11-20T10:31:00Z",
        ),
    ]
    document = problem(error)
    assert document["status"] == 422
    assert document["type"] == "urn:overhead-service:problem:invalid-records"
    assert document["errors"] == [{"path": e.path, "message": e.detail} for e in error.errors]
    assert document["detail"].startswith(
        "records: 3 invalid records, nothing stored; first: records[2].scope"
    )


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (None, "must be an array"),
        ({"runId": "x"}, "must be an array"),
        ([record()] * (MAX_BATCH + 1), f"at most {MAX_BATCH} records"),
    ],
)
def test_the_batch_itself(records: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_batch(records, now=NOW)
    assert not isinstance(caught.value, InvalidRecords)
    assert caught.value.path == "records"
    assert message in caught.value.detail


def test_the_batch_may_have_another_name() -> None:
    with pytest.raises(InvalidRecords) as caught:
        validate_batch([record(), record(scope="x")], now=NOW, path="measurements")
    assert caught.value.path == "measurements"
    assert caught.value.problems() == [
        {"path": "measurements[1].scope", "message": "must be one of: qemu, pod, node, virtqemud, virtlogd"}
    ]
    with pytest.raises(InputError) as not_a_list:
        validate_batch({}, path="measurements")
    assert not_a_list.value.path == "measurements"


def test_a_full_batch_is_accepted() -> None:
    records = [sample(i) for i in range(MAX_BATCH)]
    assert len(validate_batch(records, now=NOW)) == MAX_BATCH


def test_the_clock_bounds_measured_at() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    assert validate_batch([record(measuredAt=soon)])  # the real clock, 4 minutes of skew allowed
    with pytest.raises(InvalidRecords):
        validate_batch([record(measuredAt=(datetime.now(UTC) + timedelta(minutes=6)).isoformat())])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T10:31:00Z", datetime(2026, 11, 20, 10, 31, tzinfo=UTC)),
        ("2026-11-20t10:31:00z", datetime(2026, 11, 20, 10, 31, tzinfo=UTC)),
        ("2026-11-20 10:31:00+00:00", datetime(2026, 11, 20, 10, 31, tzinfo=UTC)),
        ("2026-11-20T12:31:00+02:00", datetime(2026, 11, 20, 10, 31, tzinfo=UTC)),
        ("2026-11-20T05:01:00-05:30", datetime(2026, 11, 20, 10, 31, tzinfo=UTC)),
        ("2026-11-20T10:31:00.5Z", datetime(2026, 11, 20, 10, 31, 0, 500000, tzinfo=UTC)),
        ("2026-11-20T10:31:00.123456789Z", datetime(2026, 11, 20, 10, 31, 0, 123456, tzinfo=UTC)),
        ("0001-01-01T00:00:00+05:00", datetime.min.replace(tzinfo=UTC)),  # clamped, not an overflow
        ("9999-12-31T23:00:00-05:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "since") == expected


@pytest.mark.parametrize(
    "text",
    ["2026-11-20T10:31:60Z", "2026-11-20T24:00:00Z", "2026-11-20T10:31:00+24:00", "2026-11-20T10:31Z", ""],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_timestamp(text, "until")
    assert caught.value.path == "until"


# --- one definition: the two validators, the fit and the API contract agree -------------------------

_PATHS = [leaf.path for leaf in LEAVES] + ["vm", "host", "notes", "vm.cores", "host.os", "raw.rss"]
_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 1.5, 1025, 2**40 + 1, 2**63, "", "x", "x" * 201, "a\x00b",
    "\ud800", "kvm", "mshv", "tcg", "qemu", "minimal", "2026-11-20T10:31:00Z", "2026-11-26T12:05:01Z",
    "1999-12-31T23:59:59Z", "2026-02-30T10:31:00Z", [], {}, {"rss": -1}, {"": 1.5}, {"a\x00": 1},
    {f"f{i}": 1 for i in range(65)}, GIB, GIB + 283_115_520, 283_115_520,
]  # fmt: skip
_DELETE = object()


def _mutated(mutations: list[tuple[str, Any]]) -> Any:
    candidate: Any = sample(7)
    for path, value in mutations:
        if path == "":
            return value
        *parents, name = path.split(".")
        target = candidate
        for parent in parents:
            target = target.get(parent) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if value is _DELETE:
            target.pop(name, None)
        else:
            target[name] = copy.deepcopy(value)
    return candidate


def _outcome_of_batch(candidate: Any) -> tuple[str, str] | None:
    try:
        validate_batch([candidate], now=NOW)
    except InvalidRecords as err:
        (error,) = err.errors
        return error.path.removeprefix("records[0]").removeprefix("."), error.detail
    return None


def _outcome_of_record(candidate: Any) -> tuple[str, str] | None:
    try:
        validate_record(candidate, now=NOW)
    except InputError as err:
        return err.path, err.detail
    return None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*_PATHS, ""]), st.sampled_from([*_VALUES, _DELETE])),
        min_size=1,
        max_size=4,
    )
)
def test_marshmallow_and_the_fast_path_agree(mutations: list[tuple[str, Any]]) -> None:
    """Any record, however broken: the same verdict and the same first problem from both drivers."""
    candidate = _mutated(mutations)
    assert _outcome_of_batch(candidate) == _outcome_of_record(candidate)


def test_every_record_ingestion_accepts_a_fit_accepts() -> None:
    """The fit's columns take every value a record may hold (negative overheads were the exception)."""
    by_column = {leaf.column: leaf for leaf in LEAVES}
    for column in samples.COLUMNS:
        field = by_column[column.name].field
        if isinstance(field, Integer):
            assert column.low <= field.low and field.high <= column.high, column
    vm = {"vcpus": 1024, "guestMemoryBytes": 16 * 1024**4, "ioThreads": 256, "execProbes": 2}
    for extreme in (
        record(overheadBytes=0, rawBytes=0, guestTouchedBytes=0, vm={"vcpus": 1, "guestMemoryBytes": MIB}),
        record(overheadBytes=2**40, rawBytes=2**40, guestTouchedBytes=0, vm=vm),
    ):
        validate_record(extreme, now=NOW)
        columns = SampleArrays.from_samples([sample_from_record(extreme)], extreme["scope"])
        assert columns.sample(0, extreme["scope"]) == sample_from_record(extreme)


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A property's schema with ``$ref`` and ``allOf`` followed (descriptions and examples left out)."""
    if "$ref" in schema:
        return _resolve(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec)
    merged = {key: value for key, value in schema.items() if key not in ("allOf", "description", "example")}
    for part in schema.get("allOf", ()):
        merged.update(_resolve(part, spec))
    return merged


def _compare(name: str, documented: dict[str, Any], schema: Schema, spec: dict[str, Any]) -> list[str]:
    """What ``openapi.yaml`` says differently from ``schema`` about the object ``name``."""
    differences: list[str] = []
    uploaded = {key: value for key, value in documented["properties"].items() if not value.get("readOnly")}
    if documented.get("additionalProperties") is not False:
        differences.append(f"{name}: additionalProperties must be false")
    if set(uploaded) != set(schema.fields):
        differences.append(f"{name}: properties {sorted(uploaded)} != fields {sorted(schema.fields)}")
    required = {field_name for field_name, field in schema.fields.items() if field.required}
    if set(documented.get("required", ())) != required:
        differences.append(f"{name}: required {sorted(documented.get('required', ()))} != {sorted(required)}")
    for field_name, field in schema.fields.items():
        if field_name not in uploaded:
            continue
        resolved = _resolve(uploaded[field_name], spec)
        if isinstance(field, fields.Nested):
            assert isinstance(field.schema, Schema)
            differences += _compare(f"{name}.{field_name}", resolved, field.schema, spec)
        else:
            assert isinstance(field, RecordField)
            if resolved != field.json_schema():
                differences.append(f"{name}.{field_name}: {resolved} != {field.json_schema()}")
    return differences


def test_openapi_measurement_record_is_the_schema() -> None:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    documented = spec["components"]["schemas"]["MeasurementRecord"]
    assert _compare("MeasurementRecord", documented, RecordSchema(), spec) == []
