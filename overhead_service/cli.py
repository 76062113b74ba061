"""The ``overhead-service`` command: ``serve``, ``init-db``, ``compute FILE``, ``render FILE``,
``tables``, ``report`` and ``node-check``.

``compute`` prints exactly the JSON that ``POST /v1/overhead`` answers for the same input (``render``
what ``POST /v1/render`` answers), and a bad input prints the same problem document (to stderr,
exit status 2).
"""

from __future__ import annotations

import logging
import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import yaml
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from overhead_service import config as settings
from overhead_service import jsonio, multiproc, nodecheck
from overhead_service.calibration.records import LAUNCHERS, SCOPES, parse_timestamp, validate_record
from overhead_service.calibration.report import UPSTREAM_TABLE, default_target, render_report
from overhead_service.calibration.samples import SampleArrays
from overhead_service.calibration.selection import describe_selection, for_scope
from overhead_service.errors import InputError, UnknownTable, http_status, problem
from overhead_service.logs import JsonFormatter
from overhead_service.model.render import render as render_resources
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry
from overhead_service.store import Store
from overhead_service.sync import TableSync

__all__ = ["gunicorn_argv", "load_document", "main", "read_records", "request_body"]

EXIT_BAD_INPUT = 2


class _KubernetesYamlLoader(yaml.SafeLoader):
    """YAML read as the JSON it stands for: decimals kept exact, timestamps left as strings."""


def _exact_float(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:  # .inf, .nan, sexagesimal 1:30.5
        return loader.construct_yaml_float(node)
    return value if value.is_finite() else loader.construct_yaml_float(node)


_KubernetesYamlLoader.add_constructor("tag:yaml.org,2002:float", _exact_float)
_KubernetesYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_document(text: bytes) -> Any:
    """A JSON document (decoded like the API decodes it) or, failing that, a YAML one."""
    try:
        return jsonio.loads_exact(text)
    except (ValueError, RecursionError):
        pass
    try:
        return yaml.load(text, Loader=_KubernetesYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InputError("", f"not a JSON or YAML document: {exc}") from None
    except RecursionError:
        raise InputError("", "not a JSON or YAML document: nested too deeply") from None


def request_body(
    document: Any,
    *,
    hypervisor: str | None = None,
    table: str | None = None,
    cpu_arch: str | None = None,
    ratio: str | None = None,
) -> Any:
    """The API request for ``document``: a request body (it has ``vmi``) or a bare VMI, plus options."""
    body: Any = document if isinstance(document, dict) and "vmi" in document else {"vmi": document}
    for key, value in (("hypervisor", hypervisor), ("table", table), ("cpuArch", cpu_arch)):
        if value is not None:
            body[key] = value
    if ratio is not None:
        kubevirt = body.setdefault("kubevirtConfiguration", {})
        if not isinstance(kubevirt, dict):
            raise InputError("kubevirtConfiguration", "must be an object")
        kubevirt["additionalGuestMemoryOverheadRatio"] = ratio
    return body


def _settings() -> dict[str, Any]:
    """The ``OVERHEAD_*`` settings; a bad one is a one-line message naming it, exit status 2."""
    try:
        return settings.resolve()
    except ValueError as err:
        _mistake(str(err))


def _url_source() -> str:
    variable = settings.ENV_PREFIX + "DATABASE_URL"
    return f"environment variable {variable}" if variable in os.environ else "the default DATABASE_URL"


def _database_url(url: str, source: str, *, must_exist: bool = True) -> str:
    """``url`` checked (:func:`settings.check_database_url`), its SQLite directory too."""
    try:
        settings.check_database_url(url, source)
    except ValueError as err:
        _mistake(str(err))
    missing = settings.missing_database_directory(url)
    if must_exist and missing is not None:
        _mistake(_missing_directory(missing, source))
    return url


def _missing_directory(directory: Path, source: str) -> str:
    what = "is not a directory" if directory.exists() else "does not exist"
    return (
        f"the SQLite database's directory {directory} {what} ({source}): create it "
        f"(mkdir -p {directory}), or point OVERHEAD_DATABASE_URL elsewhere"
    )


def _mistake(message: str) -> NoReturn:
    """A user mistake outside the input documents: one line on stderr, exit status 2."""
    click.echo(f"overhead-service: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _service() -> OverheadService:
    """The service as the API's workers have it: settings (``OVERHEAD_*``), the stored tables and
    the active ones, read once (a database that cannot be reached leaves the built-in tables and
    the default; one that does not exist is not created)."""
    config = _settings()
    registry = TableRegistry.builtin()
    service = OverheadService(
        registry, default_arch=config["DEFAULT_ARCH"], default_table=config["DEFAULT_TABLE"]
    )
    if not _sqlite_file_missing(config["DATABASE_URL"]):
        store = Store(config["DATABASE_URL"])
        try:
            TableSync(store, registry, service, interval=0).refresh(force=True)
        finally:
            store.dispose()
    return service


def _sqlite_file_missing(url: str) -> bool:
    """A SQLite URL whose file does not exist: nothing is stored there, and opening it would create it."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not database.startswith("file:") and not Path(database).exists()


def _fail(error: InputError) -> NoReturn:
    click.echo(jsonio.dumps(problem(error, status=http_status(error))), err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Memory overhead of KubeVirt virt-launcher pods."""


@main.command(short_help="Print the overhead of a VMI, as the API answers it.")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--hypervisor",
    type=click.Choice(["auto", "kvm", "mshv", "hyperv-direct"]),
    help="Default: auto, chosen as KubeVirt would.",
)
@click.option("--table", help="Calibration table id (see `overhead-service tables`).")
@click.option("--cpu-arch", help="CPU architecture, e.g. amd64 or arm64.")
@click.option("--ratio", help="additionalGuestMemoryOverheadRatio, e.g. 1.5.")
def compute(
    file: IO[bytes], hypervisor: str | None, table: str | None, cpu_arch: str | None, ratio: str | None
) -> None:
    """Print the overhead for FILE: a VMI or a whole request body, as YAML or JSON ('-' for stdin)."""
    try:
        body = request_body(
            load_document(file.read()), hypervisor=hypervisor, table=table, cpu_arch=cpu_arch, ratio=ratio
        )
        answer = _service().compute(body)
    except InputError as error:
        _fail(error)
    click.echo(jsonio.dumps(answer))


@main.command(short_help="Print the launcher pod's compute resources, as POST /v1/render answers.")
@click.argument("file", type=click.File("rb"))
def render(file: IO[bytes]) -> None:
    """Print the compute container's resources for FILE: a render request (or a bare VMI), as YAML
    or JSON ('-' for stdin)."""
    try:
        answer = render_resources(request_body(load_document(file.read())), _service())
    except InputError as error:
        _fail(error)
    click.echo(jsonio.dumps(answer))


@main.command("node-check", short_help="Inspect this node for mshv (L1VH) and kvm.")
@click.option("--json", "as_json", is_flag=True, help="Print the node object requests accept.")
@click.option(
    "--root",
    default="/",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="The host's / (in a container that mounts it): files are read and commands run there.",
)
@click.option(
    "--recorded",
    type=click.Path(exists=True, file_okay=False),
    help="Answer the QEMU/libvirt probes from outputs recorded in this directory (<probe>.rc/.out/.err).",
)
def node_check(as_json: bool, root: str, recorded: str | None) -> None:
    """Check /dev/mshv and /dev/kvm (present, missing, permission denied), the mshv_root and kvm
    modules, the L1VH partition, QEMU's mshv accelerator, libvirt's type='hyperv', this process's
    memlock limit, the cgroup version and hugepages. --json prints exactly the node object that
    POST /v1/overhead and /v1/render accept."""
    live = nodecheck.SubprocessRunner(root)
    run: nodecheck.CommandRunner = nodecheck.RecordedRunner(recorded, live) if recorded else live
    node, notes = nodecheck.inspect_node(nodecheck.HostFileSystem(root), run, nodecheck.memlock_limits)
    click.echo(jsonio.dumps(node) if as_json else nodecheck.format_table(node, notes))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what GET /v1/tables answers.")
def tables(as_json: bool) -> None:
    """List the calibration tables."""
    listing = _service().listing()
    if as_json:
        click.echo(jsonio.dumps(listing))
        return
    active: dict[str, list[str]] = {}
    for entry in listing["active"]:
        active.setdefault(entry["table"], []).append(f"{entry['hypervisor']}/{entry['arch']}")
    for summary in listing["tables"]:
        marks = [" (default)"] if summary["id"] == listing["default"] else []
        marks += [f" (active: {', '.join(active[summary['id']])})"] if summary["id"] in active else []
        click.echo(f"{summary['id']}{''.join(marks)}\t{summary['title']}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Measurement records from a JSON Lines file (blank lines skipped), each validated like an
    upload; an error names the line (``line 3.vm.vcpus``)."""
    records = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError("records", f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            document = jsonio.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputError(where, f"not a JSON document: {exc}") from None
        try:
            records.append(validate_record(document))
        except InputError as error:
            raise error.at(where) from None
    return records


@main.command(short_help="Write a table's HTML report (what GET /v1/tables/{id}/report answers).")
@click.argument("table_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True)
@click.option(
    "--hypervisor", type=click.Choice(["kvm", "mshv"]), help="Default: the table's fit's, else kvm."
)
@click.option("--arch", help="Default: the table's fit's, else amd64.")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    help="Default: the table's fit's, else qemu. Repeat it for several scopes.",
)
@click.option(
    "--launcher", type=click.Choice(LAUNCHERS), help="Only the qemu records started so (direct or libvirt)."
)
@click.option("--runs", multiple=True, help="Only these runs (repeat for several; database only).")
@click.option("--since", help="Only measurements at or after this RFC 3339 time (database only).")
@click.option("--until", help="Only measurements before this RFC 3339 time (database only).")
@click.option(
    "--records",
    "records_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read measurement records from this JSON Lines file instead of the database.",
)
@click.option("--upstream", default=UPSTREAM_TABLE, show_default=True, help="The table to compare with.")
def report(
    table_id: str,
    out: Path,
    hypervisor: str | None,
    arch: str | None,
    scopes: tuple[str, ...],
    launcher: str | None,
    runs: tuple[str, ...],
    since: str | None,
    until: str | None,
    records_file: Path | None,
    upstream: str,
) -> None:
    """Write the HTML report of TABLE_ID to --out: its provenance and fit report, and how it and the
    upstream table do on measurements from the database (OVERHEAD_DATABASE_URL) or --records."""
    if records_file is not None and (runs or since or until):
        raise click.UsageError("--records cannot be combined with --runs, --since or --until")
    _check_writable(out)
    registry = _service().tables
    try:
        document = registry.document(table_id)
        try:
            upstream_document = registry.document(upstream)
        except UnknownTable as err:
            raise UnknownTable("upstream", err.detail) from None
        default = default_target(document)
        scope = default[2] if not scopes else scopes[0] if len(scopes) == 1 else scopes
        selector: dict[str, Any] = {
            "hypervisor": hypervisor or default[0],
            "arch": arch or default[1],
            "scope": scope,
            "launcher": launcher,
        }
        if records_file is not None:
            records = read_records(records_file)
            if launcher is not None:  # a qemu record without a launcher was started directly
                records = [
                    r for r in records if r["scope"] != "qemu" or r.get("launcher", "direct") == launcher
                ]
            page = render_report(
                document,
                records,
                upstream_document=upstream_document,
                source=f"records from {records_file.name}",
                hypervisor=selector["hypervisor"],
                arch=selector["arch"],
                scope=scope,
            )
        else:
            selector["run_ids"] = list(runs) or None
            selector["since"] = parse_timestamp(since, "since") if since is not None else None
            selector["until"] = parse_timestamp(until, "until") if until is not None else None
            page = _report_from_database(document, upstream_document, selector)
    except InputError as error:
        _fail(error)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        _mistake(f"cannot write --out {out}: {err.strerror or err}")
    click.echo(f"wrote {out} ({len(page.encode()):,} bytes)")


def _report_from_database(
    document: dict[str, Any], upstream_document: dict[str, Any], selector: dict[str, Any]
) -> str:
    """The report on the stored measurements ``selector`` picks, one scope or several."""
    samples, facts = _stored_samples(selector)
    single = isinstance(selector["scope"], str)
    return render_report(
        document,
        next(iter(samples.values())) if single else samples,
        upstream_document=upstream_document,
        source=describe_selection(selector),
        measurement_facts=next(iter(facts.values())) if single else facts,
        hypervisor=selector["hypervisor"],
        arch=selector["arch"],
        scope=selector["scope"],
    )


def _stored_samples(selector: dict[str, Any]) -> tuple[dict[str, SampleArrays], dict[str, Any]]:
    """Each scope's samples and host facts from the database (exit 1 when it cannot be read)."""
    scope = selector["scope"]
    scopes = [scope] if isinstance(scope, str) else [one for one in SCOPES if one in scope]
    database_url = _database_url(_settings()["DATABASE_URL"], _url_source())
    store = Store(database_url)
    samples, facts = {}, {}
    try:
        for one in scopes:
            chosen = for_scope(selector, one)
            columns = store.measurement_columns(**chosen)
            facts[one] = store.host_facts(**chosen)
            columns.pop("id")
            samples[one] = SampleArrays.of(**columns)
    except SQLAlchemyError as exc:
        shown = make_url(database_url).render_as_string(hide_password=True)
        click.echo(f"report: cannot read measurements from {shown}: {exc}", err=True)
        sys.exit(1)
    finally:
        store.dispose()
    return samples, facts


def _check_writable(out: Path) -> None:
    """Before the work: ``--out`` must be a file that can be written (a missing one in a writable
    directory; click refuses a directory)."""
    directory = out.parent
    if not directory.is_dir():
        _mistake(f"cannot write --out {out}: the directory {directory} does not exist")
    if not os.access(out if out.exists() else directory, os.W_OK):
        _mistake(f"cannot write --out {out}: permission denied")


@main.command("init-db")
@click.option("--database-url", help="SQLAlchemy URL  [default: the DATABASE_URL setting]")
def init_db(database_url: str | None) -> None:
    """Create the database schema, or upgrade it to this version; safe to run again."""
    if database_url is not None:
        url = _database_url(database_url, "--database-url")
    else:
        url = _database_url(_settings()["DATABASE_URL"], _url_source())
    shown = make_url(url).render_as_string(hide_password=True)
    store = Store(url)
    try:
        store.create_schema()
        version = store.schema_version()
    except (SQLAlchemyError, RuntimeError) as exc:
        click.echo(f"init-db: cannot create the schema in {shown}: {exc}", err=True)
        sys.exit(1)
    finally:
        store.dispose()
    click.echo(f"schema version {version} ready in {shown}")


def gunicorn_argv(
    bind: str, workers: int | None, certfile: str | None = None, keyfile: str | None = None
) -> list[str]:
    """The command line ``serve`` runs: gunicorn on the app factory with the packaged settings."""
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:overhead_service.gunicorn_conf"]
    argv += ["--bind", bind]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if certfile is not None:
        argv += ["--certfile", certfile]
    if keyfile is not None:
        argv += ["--keyfile", keyfile]
    return [*argv, "overhead_service:create_app()"]


@main.command()
@click.option("--bind", default="0.0.0.0:8080", show_default=True, help="Address to listen on.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [default: usable CPUs].")
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve HTTPS with this PEM certificate (chain); re-read when it changes.",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False),
    help="The certificate's PEM private key (needs --certfile).",
)
def serve(bind: str, workers: int | None, certfile: str | None, keyfile: str | None) -> None:
    """Run the HTTP API under gunicorn (HTTPS on every address with --certfile: the admission
    webhook's server runs as a second process, see deploy/components/webhook)."""
    if keyfile is not None and certfile is None:
        raise click.UsageError("--keyfile needs --certfile")
    _check_serve_settings()
    argv = gunicorn_argv(bind, workers, certfile, keyfile)
    # Prometheus multiprocess mode needs the directory in gunicorn's environment from its first
    # line (prometheus_client reads it once, at import): the operator's, else a private one.
    multiproc.ensure_dir()
    sys.stdout.flush()
    # exec: gunicorn's master becomes this process, so signals (SIGTERM from the kubelet) reach it.
    os.execv(argv[0], argv)


def _check_serve_settings() -> None:
    """Before anything is started or made (the metrics directory): the settings gunicorn's master
    and workers will read. A mistake is one JSON log line on stderr naming the variable, exit 2."""
    try:
        config = settings.resolve()
    except settings.SettingError as err:
        _start_failure(str(err), err.variable)
    if config["DEFAULT_TABLE"] not in TableRegistry.builtin().ids():
        known = ", ".join(TableRegistry.builtin().ids())
        _start_failure(
            f"DEFAULT_TABLE {config['DEFAULT_TABLE']!r} is not a built-in table (known: {known})",
            settings.ENV_PREFIX + "DEFAULT_TABLE",
        )
    missing = settings.missing_database_directory(config["DATABASE_URL"])
    if missing is not None:
        _start_failure(_missing_directory(missing, _url_source()), settings.ENV_PREFIX + "DATABASE_URL")


def _start_failure(message: str, variable: str) -> NoReturn:
    record = logging.LogRecord("overhead_service.cli", logging.ERROR, __file__, 0, message, None, None)
    record.fields = {"setting": variable}
    click.echo(JsonFormatter().format(record), err=True)
    sys.exit(EXIT_BAD_INPUT)
