"""Measurement records: strict validation with one problem per bad record, at its path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from benchmarks.harness.records import GIB, MIB, record, sample
from overhead_service.calibration.records import MAX_BATCH, parse_timestamp, validate_batch, validate_record
from overhead_service.errors import InputError, InvalidRecords, problem

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


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"runId": ""}, "runId", "non-empty string"),
        ({"runId": "x" * 201}, "runId", "at most 200"),
        ({"sampleId": 7}, "sampleId", "non-empty string"),
        ({"hypervisor": "xen"}, "hypervisor", "one of: kvm, mshv"),
        ({"hypervisor": "hyperv-direct"}, "hypervisor", "one of: kvm, mshv"),
        ({"arch": "a" * 65}, "arch", "at most 64"),
        ({"scope": "vm"}, "scope", "one of: qemu, pod, node"),
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
    ],
)
def test_a_bad_field_is_named(change: dict[str, Any], path: str, message: str) -> None:
    got_path, got_message = _problem_of(record(**change))
    assert got_path == f"records[0].{path}"
    assert message in got_message


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


def test_a_negative_overhead_is_plausible_within_bounds() -> None:
    # Sharing (KSM, page cache attributed elsewhere) can make a scope smaller than the touched RAM.
    ok = record(overheadBytes=-MIB, rawBytes=GIB - MIB)
    assert validate_batch([ok], now=NOW) == [ok]


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
        ("records[2].scope", "must be one of: qemu, pod, node"),
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
        {"path": "measurements[1].scope", "message": "must be one of: qemu, pod, node"}
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
