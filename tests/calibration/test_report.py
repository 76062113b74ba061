"""The HTML report of a table: its content and numbers, escaping, the route and the CLI command."""

from __future__ import annotations

import base64
import copy
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from benchmarks.harness.records import qemu_records as shared_qemu_records
from benchmarks.harness.records import record
from overhead_service import calibration, cli
from overhead_service.calibration import report
from overhead_service.calibration.report import data as report_data
from overhead_service.errors import InputError, NotInTable
from overhead_service.model.tables import TableRegistry

MIB, GIB = 1024**2, 1024**3
REGISTRY = TableRegistry.builtin()
UPSTREAM = REGISTRY.document("kubevirt-v1.9.0")
SECTIONS = ("table", "fit", "measurements", "evaluation", "plots")
PLOTS = ("plot-measured-vs-predicted", "plot-residuals-vcpus", "plot-residuals-ram", "plot-over-provisioning")
EVIL = "<script>alert('x')</script>"


def qemu_records(count: int, run: str = "bench-1", seed: int = 11) -> list[dict[str, Any]]:
    """The shared synthetic records, every tenth on a node with a hostile name."""
    return shared_qemu_records(count, run, seed, node=lambda index: EVIL if index % 10 == 0 else "worker-3")


def data_values(page: str, key: str) -> dict[str | None, str]:
    """The ``data-value`` of every element with ``data-key=key``, by its ``data-table`` (or None)."""
    found: dict[str | None, str] = {}
    for tag in re.findall(r"<[^>]*\bdata-key=\"" + re.escape(html.escape(key)) + r"\"[^>]*>", page):
        table = re.search(r'data-table="([^"]*)"', tag)
        value = re.search(r'data-value="([^"]*)"', tag)
        assert value is not None, tag
        found[html.unescape(table.group(1)) if table else None] = html.unescape(value.group(1))
    return found


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


# --- the page, from the domain function ----------------------------------------------------------


class Rendered:
    """One fitted table (with a hostile id, title and host fact), its samples and its report."""

    table_id = 'fit-<b>"&$1$'

    def __init__(self) -> None:
        self.records = qemu_records(300)
        pod = [record(runId="other", sampleId=f"p-{i}", scope="pod") for i in range(7)]
        self.samples = [calibration.sample_from_record(r) for r in self.records]
        self.document, self.fit = calibration.fit(
            self.samples,
            UPSTREAM,
            hypervisor="kvm",
            arch="amd64",
            scope="qemu",
            new_id=self.table_id,
            requested_by=EVIL,
            host_facts={"node": [EVIL, "worker-3"], "qemu": ["7.2.22"]},
        )
        self.document["title"] = f"measured {EVIL}"
        self.page = report.render_report(
            self.document,
            [*self.records, *pod],
            hypervisor="kvm",
            arch="amd64",
            scope="qemu",
            upstream_document=UPSTREAM,
            source=f"file {EVIL}",
            max_plot_samples=200,
        )


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return Rendered()


def test_the_page_has_every_section_and_plot(rendered: Rendered) -> None:
    page = rendered.page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for anchor in (*SECTIONS, *PLOTS):
        assert f'id="{anchor}"' in page, anchor
    pngs = images(page)
    assert len(pngs) == len(PLOTS)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in pngs)
    assert "http://" not in page.replace("http://www.w3.org", "") and "<link" not in page  # self-contained


def test_evaluation_numbers_are_evaluate_on_the_same_samples(rendered: Rendered) -> None:
    ours = calibration.evaluate_table(
        rendered.document, rendered.samples, hypervisor="kvm", arch="amd64", scope="qemu"
    )
    theirs = calibration.evaluate_table(
        UPSTREAM, rendered.samples, hypervisor="kvm", arch="amd64", scope="qemu"
    )
    page, tid = rendered.page, rendered.table_id
    assert data_values(page, "n") == {tid: "300", "kubevirt-v1.9.0": "300"}
    coverage = data_values(page, "coverage")
    assert float(coverage[tid]) == ours["coverage"]
    assert float(coverage["kubevirt-v1.9.0"]) == theirs["coverage"] == 1.0
    assert int(data_values(page, "underProvisioned")[tid]) == ours["underProvisioned"]["count"]
    for level in ("p50", "p90", "p99", "max"):
        over = data_values(page, f"over:{level}")
        assert int(over[tid]) == ours["overProvisioning"]["bytes"][level]
        assert int(over["kubevirt-v1.9.0"]) == theirs["overProvisioning"]["bytes"][level]
        percent = data_values(page, f"overPercent:{level}")
        assert float(percent[tid]) == ours["overProvisioning"]["percentOfMeasured"][level]
    ratio = float(data_values(page, "medianRatio")[None])
    expected = ours["overProvisioning"]["bytes"]["p50"] / theirs["overProvisioning"]["bytes"]["p50"]
    assert ratio == pytest.approx(expected) and ratio < 0.1  # the fit hugs the data; upstream does not


def test_the_fit_report_is_shown(rendered: Rendered) -> None:
    page, fit = rendered.page, rendered.fit
    assert float(data_values(page, "heldOutCoverage")[None]) == fit.held_out["coverage"]
    assert data_values(page, "samples")[None] == "300"
    for name in ("qemu", "vcpus", "pagetables"):
        entry = fit.component(name)
        assert entry.status == "fitted" and entry.standard_error is not None
        key = f"se:{name}.{entry.parameter}"
        assert float(data_values(page, key)[None]) == entry.standard_error
    assert isinstance(fit.margin_bytes, int)  # one scope
    assert f"{fit.margin_bytes / MIB:,.2f} MiB" in page  # the margin
    assert "target 99.50 %" in page
    assert "constant in the samples: not separable from the fixed part" in page  # why ioThread was kept
    assert "Host facts of the measurements fitted on" in page and "7.2.22" in page


def test_records_of_other_scopes_are_left_out_and_facts_listed(rendered: Rendered) -> None:
    page = rendered.page
    assert data_values(page, "measurements")[None] == "300"
    assert "7 of the 307 given (another hypervisor, arch or scope)" in page
    assert "Intel Xeon Gold 6338" in page and "worker-3" in page  # facts of the records judged on


def test_plots_use_a_seeded_subset_above_the_cap(rendered: Rendered) -> None:
    assert 'id="sampled"' in rendered.page
    assert "The plots show 200 of the 300 samples" in rendered.page
    first = report_data.plot_subset(300, 200)
    assert first is not None and len(first) == 200 and len(set(first.tolist())) == 200
    again = report_data.plot_subset(300, 200)
    assert again is not None and first.tolist() == again.tolist()
    assert report_data.plot_subset(200, 200) is None


def test_everything_from_documents_and_records_is_escaped(rendered: Rendered) -> None:
    page = rendered.page
    assert "<script" not in page and "<b>" not in page
    assert html.escape(EVIL) in page  # the host fact, the requester, the source, the title
    assert page.count(html.escape(EVIL)) >= 4
    assert "<title>Report: fit-&lt;b&gt;&quot;&amp;$1$</title>" in page


def test_the_templates_escape_table_ids_and_provenance() -> None:
    """Every template autoescapes: an id, parent, description and provenance (keys, values, nested
    values) full of markup come out as text, once, in element content and in attributes alike."""
    hostile = "x\"><img src=x onerror=alert(1)>&'"
    document = copy.deepcopy(REGISTRY.document("kubevirt-main"))
    document |= {"id": hostile, "parent": f"<i>{hostile}", "description": f"<u>{hostile}"}
    document["provenance"] = {f"<k>{hostile}": f"<v>{hostile}", "nested": {"<n>": hostile}}
    samples = [calibration.sample_from_record(r) for r in qemu_records(12)]
    page = report.render_report(
        document, samples, hypervisor="kvm", arch="amd64", scope="qemu", upstream_document=UPSTREAM
    )
    for raw in ("<img src=x", "<i>", "<u>", "<k>", "<v>", "<n>"):
        assert raw not in page, raw
    assert "&amp;lt;" not in page and "&amp;quot;" not in page  # escaped once, not twice
    escaped = html.escape(hostile)
    assert f"<title>Report: {escaped}</title>" in page
    assert f"<h1>Calibration table report: <code>{escaped}</code></h1>" in page
    assert f"<th>&lt;k&gt;{escaped}</th>" in page and f"&lt;v&gt;{escaped}" in page
    assert f"&lt;i&gt;{escaped}" in page and f"&lt;u&gt;{escaped}" in page
    assert html.escape(json.dumps({"<n>": hostile}, ensure_ascii=False)) in page  # nested: JSON text
    # In attributes: the id is each evaluation cell's data-table, read back whole.
    assert set(data_values(page, "coverage")) == {hostile, "kubevirt-v1.9.0"}
    assert f"<th><code>{escaped}</code></th>" in page
    assert len(images(page)) == len(PLOTS)  # the templates' own markup is intact


def test_no_samples_says_so_and_shows_the_table() -> None:
    page = report.render_report(
        REGISTRY.document("kubevirt-main"),
        [],
        hypervisor="kvm",
        arch="amd64",
        scope="qemu",
        upstream_document=UPSTREAM,
    )
    assert 'id="no-samples"' in page and "nothing to evaluate or plot" in page
    assert "<img" not in page and 'id="evaluation"' not in page
    assert "This table has no fit section" in page and "(provenance kind: upstream)" in page
    assert "kubevirt/kubevirt" in page  # the provenance


def test_a_builtin_table_against_itself_and_samples_of_another_scope() -> None:
    samples = [calibration.sample_from_record(r) for r in qemu_records(12)]
    samples.append(calibration.Sample("pod", 300 * MIB, 2, GIB))
    page = report.render_report(
        UPSTREAM, samples, hypervisor="kvm", arch="amd64", scope="qemu", upstream_document=UPSTREAM
    )
    assert "This is the upstream table kubevirt-v1.9.0 itself" in page
    assert data_values(page, "coverage") == {"kubevirt-v1.9.0": "1.0"}  # one column only
    assert "1 of the 13 given" in page
    assert "Not known (the caller gave samples without their hosts)" in page
    assert len(images(page)) == len(PLOTS)


def test_bad_arguments_raise_input_errors() -> None:
    table = REGISTRY.document("mshv-l1vh-provisional")
    with pytest.raises(NotInTable) as no_model:
        report.render_report(table, [], hypervisor="kvm", arch="amd64", scope="qemu", upstream_document=None)
    assert no_model.value.path == "hypervisor"
    for bad, path in (
        ({"hypervisor": "xen"}, "hypervisor"),
        ({"scope": "vm"}, "scope"),
        ({"arch": ""}, "arch"),
    ):
        arguments: dict[str, Any] = {"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", **bad}
        with pytest.raises(InputError) as error:
            report.render_report(UPSTREAM, [], upstream_document=None, **arguments)
        assert error.value.path == path
    with pytest.raises(InputError) as not_a_table:
        report.render_report(
            {"id": "x"}, [], hypervisor="kvm", arch="amd64", scope="qemu", upstream_document=UPSTREAM
        )
    assert not_a_table.value.path == "table"


def test_default_target() -> None:
    assert report.default_target(UPSTREAM) == ("kvm", "amd64", "qemu")
    assert report.default_target(REGISTRY.document("mshv-l1vh-provisional")) == ("mshv", "amd64", "qemu")
    fitted = {"fit": {"hypervisor": "mshv", "arch": "arm64", "scope": "node"}, "models": []}
    assert report.default_target(fitted) == ("mshv", "arm64", "node")


# --- GET /v1/tables/{id}/report ------------------------------------------------------------------

FIT = {
    "hypervisor": "kvm",
    "arch": "amd64",
    "scope": "qemu",
    "parent": "kubevirt-v1.9.0",
    "runs": ["bench-1"],
}


@pytest.fixture
def fitted(client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]) -> str:
    """A fitted table's id, with its 300 measurements stored (and 5 of another run)."""
    records = [*qemu_records(300), *qemu_records(5, run="bench-2", seed=3)]
    stored = client.post("/v1/measurements", json={"records": records}, headers=ingest_auth)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert stored.get_json()["stored"] == 305
    response = client.post("/v1/fits", json=FIT, headers=admin_auth)
    assert response.status_code == 201, response.get_data(as_text=True)
    table_id: str = response.get_json()["table"]["id"]
    return table_id


def test_route_answers_html_with_the_evaluate_numbers(client: FlaskClient, fitted: str) -> None:
    response = client.get(f"/v1/tables/{fitted}/report?runs=bench-1")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/html" and response.mimetype_params["charset"] == "utf-8"
    page = response.get_data(as_text=True)
    for anchor in (*SECTIONS, *PLOTS):
        assert f'id="{anchor}"' in page, anchor
    assert len(images(page)) == len(PLOTS)
    # The same numbers as POST /v1/tables/{id}/evaluate on the same selection, for both tables.
    for table_id in (fitted, "kubevirt-v1.9.0"):
        evaluation = client.post(
            f"/v1/tables/{table_id}/evaluate",
            json={"hypervisor": "kvm", "arch": "amd64", "scope": "qemu", "runs": ["bench-1"]},
        ).get_json()
        assert evaluation["n"] == 300
        assert float(data_values(page, "coverage")[table_id]) == evaluation["coverage"]
        assert int(data_values(page, "over:p50")[table_id]) == evaluation["overProvisioning"]["bytes"]["p50"]
    assert "stored measurements of kvm/amd64/qemu; runs bench-1" in page
    # The host facts, stored and fitted on, escaped.
    assert "<script" not in page and page.count(html.escape(EVIL)) >= 2
    # By default, every stored measurement of the fit's own hypervisor, arch and scope.
    everything = client.get(f"/v1/tables/{fitted}/report").get_data(as_text=True)
    assert data_values(everything, "measurements")[None] == "305"


def test_route_with_no_matching_measurements(client: FlaskClient, fitted: str) -> None:
    response = client.get(f"/v1/tables/{fitted}/report", query_string={"runs": ["nope", "never"]})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'id="no-samples"' in page and "<img" not in page
    assert "runs nope, never" in page


def test_route_for_a_builtin_table(client: FlaskClient) -> None:
    response = client.get("/v1/tables/kubevirt-main/report", query_string={"scope": "node"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "This table has no fit section" in page and 'id="no-samples"' in page
    assert "kvm/amd64/node" in page


def test_route_unknown_table_is_404(client: FlaskClient) -> None:
    response = client.get("/v1/tables/no-such-table/report")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "urn:overhead-service:problem:unknown-table"


@pytest.mark.parametrize(
    ("query", "path", "kind"),
    [
        ("hypervisor=xen", "hypervisor", "invalid-input"),
        ("scope=vm", "scope", "invalid-input"),
        ("arch=", "arch", "invalid-input"),
        ("hypervisor=kvm&hypervisor=mshv", "hypervisor", "invalid-input"),
        ("scope=qemu&scope=" + "&scope=".join(["pod"] * 5), "scope", "invalid-input"),
        ("launcher=bare", "launcher", "invalid-input"),
        ("since=yesterday", "since", "invalid-input"),
        ("until=2026-11-20T10:31:00", "until", "invalid-input"),
        ("runs=", "runs", "invalid-input"),
        ("limit=5", "limit", "invalid-input"),
        ("upstream=no-such-table", "upstream", "unknown-table"),
    ],
)
def test_route_bad_parameters_are_422(client: FlaskClient, query: str, path: str, kind: str) -> None:
    response = client.get(f"/v1/tables/kubevirt-v1.9.0/report?{query}")
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == f"urn:overhead-service:problem:{kind}"
    assert problem["errors"][0]["path"] == path


def test_route_table_without_the_model_is_422(client: FlaskClient) -> None:
    response = client.get("/v1/tables/mshv-l1vh-provisional/report?hypervisor=kvm")
    assert response.status_code == 422
    assert response.get_json()["type"] == "urn:overhead-service:problem:not-in-table"


# --- overhead-service report ---------------------------------------------------------------------


@pytest.fixture
def cli_database(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the test application's database (never the checkout's var/)."""
    monkeypatch.setenv("OVERHEAD_DATABASE_URL", app.config["DATABASE_URL"])


@pytest.mark.usefixtures("cli_database")
def test_cli_writes_what_the_route_answers(
    client: FlaskClient, runner: FlaskCliRunner, fitted: str, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(cli.main, ["report", fitted, "--out", str(out), "--runs", "bench-2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    page = out.read_text(encoding="utf-8")
    assert data_values(page, "measurements")[None] == "5"
    served = client.get(f"/v1/tables/{fitted}/report?runs=bench-2")
    assert served.status_code == 200
    assert page == served.get_data(as_text=True)  # the same bytes, plots included


@pytest.mark.usefixtures("cli_database")
def test_cli_reads_a_records_file(runner: FlaskCliRunner, tmp_path: Path) -> None:
    records = qemu_records(20)
    records[3] = {**records[3], "scope": "pod"}  # left out: another scope
    source = tmp_path / "records.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    out = tmp_path / "report.html"
    result = runner.invoke(
        cli.main, ["report", "kubevirt-main", "--records", str(source), "--out", str(out), "--arch", "amd64"]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert data_values(page, "n") == {"kubevirt-main": "19", "kubevirt-v1.9.0": "19"}
    assert "records from records.jsonl" in page and "1 of the 20 given" in page
    samples = [calibration.sample_from_record(r) for r in records if r["scope"] == "qemu"]
    expected = calibration.evaluate_table(
        REGISTRY.document("kubevirt-main"), samples, hypervisor="kvm", arch="amd64", scope="qemu"
    )
    assert float(data_values(page, "coverage")["kubevirt-main"]) == expected["coverage"]
    assert len(images(page)) == len(PLOTS)


@pytest.mark.usefixtures("cli_database")
def test_cli_bad_records_and_options(runner: FlaskCliRunner, tmp_path: Path) -> None:
    source = tmp_path / "records.jsonl"
    good = qemu_records(1)[0]
    bad = {**good, "vm": {**good["vm"], "vcpus": 0}}
    source.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    out = tmp_path / "report.html"
    result = runner.invoke(cli.main, ["report", "kubevirt-main", "--records", str(source), "--out", str(out)])
    assert result.exit_code == 2
    problem = json.loads(result.stderr)
    assert problem["errors"][0]["path"] == "line 2.vm.vcpus"
    assert not out.exists()

    source.write_text("{not json\n", encoding="utf-8")
    result = runner.invoke(cli.main, ["report", "kubevirt-main", "--records", str(source), "--out", str(out)])
    assert result.exit_code == 2 and json.loads(result.stderr)["errors"][0]["path"] == "line 1"

    result = runner.invoke(cli.main, ["report", "no-such-table", "--records", str(source), "--out", str(out)])
    assert result.exit_code == 2 and json.loads(result.stderr)["type"].endswith("unknown-table")

    combined = ["report", "kubevirt-main", "--records", str(source), "--runs", "x", "--out", str(out)]
    result = runner.invoke(cli.main, combined)
    assert result.exit_code == 2 and "--records cannot be combined" in result.output
    assert not out.exists()
