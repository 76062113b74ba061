"""JSON logs: the formatter, the request id, exactly one access line per request and what it says."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from overhead_service import config
from overhead_service.logs import CONTEXT, JsonFormatter, gunicorn_logconfig, parse_level
from overhead_service.model.hypervisor import REMEDIATION
from overhead_service.web.observe import ACCESS_LOGGER

VMI = {"spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}}}
L1VH = {"developerConfiguration": {"featureGates": ["HyperVL1VH"]}}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


class Lines:
    """What a JSON handler on the root logger writes, as decoded lines."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    def all(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        assert text.endswith("\n") or not text
        return [json.loads(line) for line in text.splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.all() if line["logger"] == ACCESS_LOGGER]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    root = logging.getLogger()
    root.addHandler(captured.handler)
    try:
        yield captured
    finally:
        root.removeHandler(captured.handler)


def only_access_line(lines: Lines) -> dict[str, Any]:
    access = lines.access()
    assert len(access) == 1, access
    return access[0]


# --- the formatter ----------------------------------------------------------------------------


def test_a_record_is_one_json_line_with_time_level_logger_message() -> None:
    record = logging.LogRecord("some.logger", logging.WARNING, __file__, 1, "%d tables", (3,), None)
    record.fields = {"table": "kubevirt-v1.9.0"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "some.logger"
    assert entry["message"] == "3 tables" and entry["table"] == "kubevirt-v1.9.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "request_id" not in entry  # logged outside a request


def test_a_traceback_stays_on_one_line_and_the_request_id_is_added() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info)
    token = CONTEXT.set({"request_id": "abc-123"})
    try:
        line = JsonFormatter().format(record)
    finally:
        CONTEXT.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "abc-123"
    assert "Traceback" in entry["exception"] and "RuntimeError: boom\nsecond line" in entry["exception"]


def test_unencodable_text_still_makes_a_line() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "lone \udc80 surrogate", (), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "lone \udc80 surrogate"


def test_log_level_setting() -> None:
    assert config.resolve({}, environ={})["LOG_LEVEL"] == "info"
    assert config.resolve({}, environ={"OVERHEAD_LOG_LEVEL": " WARNING "})["LOG_LEVEL"] == "warning"
    with pytest.raises(ValueError, match="OVERHEAD_LOG_LEVEL must be one of"):
        config.resolve({}, environ={"OVERHEAD_LOG_LEVEL": "verbose"})
    with pytest.raises(ValueError, match="config key LOG_LEVEL"):
        parse_level(20, "config key LOG_LEVEL")


def test_gunicorn_logconfig_makes_gunicorn_log_json() -> None:
    settings = gunicorn_logconfig("warning")
    assert settings["root"]["level"] == settings["loggers"]["gunicorn.error"]["level"] == "WARNING"
    assert settings["formatters"]["json"]["()"] is JsonFormatter
    assert settings["loggers"]["gunicorn.access"]["handlers"] == []


# --- request ids ------------------------------------------------------------------------------


def test_a_sane_request_id_is_echoed_and_logged(client: FlaskClient, lines: Lines) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "vm-start/ns1/vm-7:42"})
    assert response.headers["X-Request-ID"] == "vm-start/ns1/vm-7:42"
    assert only_access_line(lines)["request_id"] == "vm-start/ns1/vm-7:42"


@pytest.mark.parametrize(
    "offered",
    [None, "", "x" * 129, "has space", "new\nline", "tab\tid", "caf\u00e9"],
    ids=["absent", "empty", "too-long", "space", "newline", "tab", "non-ascii"],
)
def test_a_missing_or_insane_request_id_is_replaced(
    client: FlaskClient, lines: Lines, offered: str | None
) -> None:
    # As the WSGI server hands it over (the test client refuses to send some of these).
    environ = {} if offered is None else {"HTTP_X_REQUEST_ID": offered}
    response = client.get("/healthz", environ_overrides=environ)
    generated = response.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(generated)
    assert only_access_line(lines)["request_id"] == generated


def test_generated_ids_differ(client: FlaskClient) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_an_error_answer_echoes_the_id_too(client: FlaskClient) -> None:
    response = client.get("/no/such/path", headers={"X-Request-ID": "r-404"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "r-404"


# --- access lines -----------------------------------------------------------------------------


def test_one_access_line_per_request(client: FlaskClient, lines: Lines) -> None:
    for n in range(3):
        client.post("/v1/overhead", json={"vmi": VMI}, headers={"X-Request-ID": f"req-{n}"})
    client.get("/v1/tables")
    access = lines.access()
    assert [line["request_id"] for line in access[:3]] == ["req-0", "req-1", "req-2"]
    assert len(access) == 4


def test_an_overhead_answer_line(client: FlaskClient, lines: Lines) -> None:
    client.post("/v1/overhead", json={"vmi": VMI}, headers={"X-Request-ID": "r1"})
    line = only_access_line(lines)
    assert line["level"] == "info"
    assert {k: line[k] for k in ("method", "route", "path", "status", "hypervisor", "table")} == {
        "method": "POST",
        "route": "/v1/overhead",
        "path": "/v1/overhead",
        "status": 200,
        "hypervisor": "kvm",
        "table": "kubevirt-v1.9.0",
    }
    assert line["hypervisor_reason"] == "feature-gate-disabled"
    assert line["provisional"] is False
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "remediation" not in line
    assert "warnings" not in line  # nothing to say
    assert line["message"] == "POST /v1/overhead 200"


def test_an_answer_with_warnings_lists_their_codes(client: FlaskClient, lines: Lines) -> None:
    shared = {"spec": {"domain": {"resources": {"limits": {"memory": "1.5Gi"}}}}}
    client.post("/v1/render", json={"vmi": shared, "hypervisor": "mshv"})
    line = only_access_line(lines)
    assert line["warnings"] == [
        "provisional-model",
        "no-launcher-headroom",
        "shared-quantity-double-overhead",
    ]
    assert line["level"] == "info"  # warnings are about the VMI, not the service


def test_a_fallback_line_says_what_to_fix(client: FlaskClient, lines: Lines) -> None:
    body = {"vmi": VMI, "kubevirtConfiguration": L1VH, "node": {"mshvAvailable": False}}
    client.post("/v1/overhead", json=body)
    line = only_access_line(lines)
    assert line["level"] == "warning"
    assert (line["hypervisor"], line["hypervisor_reason"]) == ("kvm", "mshv-device-unavailable")
    assert line["remediation"] == REMEDIATION["mshv-device-unavailable"]
    assert "/dev/mshv" in line["remediation"] and "devices.kubevirt.io/mshv" in line["remediation"]


def test_an_emulation_line_says_what_to_fix(client: FlaskClient, lines: Lines) -> None:
    body = {
        "vmi": VMI,
        "kubevirtConfiguration": {"developerConfiguration": {"featureGates": [], "useEmulation": True}},
        "node": {"kvmAvailable": False},
    }
    client.post("/v1/overhead", json=body)
    line = only_access_line(lines)
    assert line["hypervisor_reason"] == "emulation-no-device"
    assert "TCG" in line["remediation"] and "useEmulation" in line["remediation"]


def test_a_batch_line_has_the_counts(client: FlaskClient, lines: Lines) -> None:
    items = [
        {"vmi": VMI},
        {"vmi": VMI},
        {"vmi": VMI, "hypervisor": "mshv"},
        {"vmi": VMI, "kubevirtConfiguration": L1VH, "node": {"mshvAvailable": False}},
        {"vmi": VMI, "cpuArch": 5},
    ]
    client.post("/v1/overhead/batch", json={"items": items})
    line = only_access_line(lines)
    assert line["route"] == "/v1/overhead/batch" and line["status"] == 200
    assert line["batch"] == {
        "answers": 4,
        "problems": 1,
        "hypervisors": {"kvm": 3, "mshv": 1},
        "reasons": {"feature-gate-disabled": 2, "requested": 1, "mshv-device-unavailable": 1},
        "tables": {"kubevirt-v1.9.0": 4},
        "warnings": {"provisional-model": 1},
    }
    assert line["level"] == "warning"
    assert line["remediation"] == {"mshv-device-unavailable": REMEDIATION["mshv-device-unavailable"]}
    assert "hypervisor" not in line  # a batch has counts, not one decision


def test_a_problem_line_has_the_status_and_field_path(client: FlaskClient, lines: Lines) -> None:
    client.post("/v1/overhead", json={"vmi": {"spec": {"domain": {"cpu": {"cores": "2"}}}}})
    line = only_access_line(lines)
    assert line["status"] == 422 and line["level"] == "info"
    assert line["error_paths"] == ["vmi.spec.domain.cpu.cores"]
    assert line["problem_type"].endswith("invalid-input")
    assert "hypervisor" not in line


def test_a_404_line_names_no_route(client: FlaskClient, lines: Lines) -> None:
    client.get("/v1/nothing/here")
    line = only_access_line(lines)
    assert (line["route"], line["path"], line["status"]) == ("unmatched", "/v1/nothing/here", 404)


def test_an_unhandled_exception_is_logged_once_with_its_traceback(app: Flask, lines: Lines) -> None:
    @app.get("/explode")
    def explode() -> str:
        raise RuntimeError("kaboom")

    response = app.test_client().get("/explode", headers={"X-Request-ID": "r-500"})
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert response.headers["X-Request-ID"] == "r-500"
    everything = lines.all()
    tracebacks = [line for line in everything if "exception" in line]
    assert len(tracebacks) == 1
    assert "RuntimeError: kaboom" in tracebacks[0]["exception"]
    assert tracebacks[0]["request_id"] == "r-500"
    line = only_access_line(lines)
    assert (line["status"], line["level"], line["route"]) == (500, "error", "/explode")
    assert "exception" not in line
    assert len(everything) == 2


def test_no_request_id_leaks_onto_later_lines(client: FlaskClient, lines: Lines) -> None:
    client.get("/healthz")
    logging.getLogger("overhead_service.test").warning("after the request")
    assert "request_id" not in lines.all()[-1]


def test_log_level_warning_keeps_only_fallbacks_and_errors(app_factory: Any, lines: Lines) -> None:
    client = app_factory(LOG_LEVEL="warning").test_client()
    try:
        client.post("/v1/overhead", json={"vmi": VMI})
        client.post(
            "/v1/overhead", json={"vmi": VMI, "kubevirtConfiguration": L1VH, "node": {"mshvAvailable": False}}
        )
        access = lines.access()
        assert [line["hypervisor_reason"] for line in access] == ["mshv-device-unavailable"]
    finally:
        logging.getLogger("overhead_service").setLevel(logging.INFO)
