"""Load benchmark: ``POST /v1/overhead`` next to ``GET /healthz`` under gunicorn, at rising concurrency.

gunicorn runs with the project's settings (``overhead_service/gunicorn_conf.py``) on loopback, with
a SQLite database in a temporary directory. For each concurrency level (connections held open and
kept busy), both endpoints are loaded for ``--duration`` seconds each, one after the other, and the
report gives throughput (answers per second) and p50/p90/p99/max latency, plus every non-2xx answer
and socket error, counted. The overhead requests cycle through ``--bodies`` realistic VMIs from
``benchmarks/corpus.py`` (a mix of shapes); the service remembers answers per shape, as it does in
production where virt-controller asks about the same templates again and again.

The load generator (:mod:`benchmarks.load_clients`) is ``wrk`` when installed, else a built-in
epoll client. Every figure names the client that produced it. Both share the machine's
CPUs with the server, so on a small machine the client takes part of the capacity it measures.

After the levels, two more rounds (:mod:`benchmarks.load_rounds`): slow clients
(``--slow-connections`` sockets trickling a byte a second while a normal client's latency is
measured, and how soon the server closes them) and a soak (``--soak-seconds`` of mixed traffic:
overhead, render, batches, uploads, fits, scrapes; errors, p99, records acknowledged but not
stored, and the workers' memory before and after).

Bounded: ``--duration`` per endpoint and level, ``--max-seconds`` overall (levels and rounds that
would not fit are skipped and listed). The server is stopped at the end, on an error, on Ctrl-C and on
SIGTERM. Exit status: 0 when every answer was 2xx, 1 when some were not (or sockets failed), 130
when interrupted.

    python -m benchmarks.bench_load [--levels 1,2,4,8,16,32,64] [--duration 3] [--rounds 3]
        [--slow-connections 64] [--soak-seconds 180] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from http.client import HTTPConnection
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.corpus import corpus
from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import TOKENS
from benchmarks.load_clients import Result, http_request, median_round, python_load, wrk_load
from benchmarks.load_rounds import rounds_ok, slow_report, slow_round, soak_report, soak_round
from overhead_service.gunicorn_conf import cpu_count
from overhead_service.model.vmi import memo_key

DEFAULT_LEVELS = "1,2,4,8,16,32,64"
OVERHEAD = ("POST", "/v1/overhead")
HEALTHZ = ("GET", "/healthz")
# Slack per endpoint run for starting wrk and draining, in the --max-seconds budget.
RUN_SLACK_SECONDS = 1.5


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop measuring, clean up, report what there is."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


# --- the benchmark -------------------------------------------------------------------------------


def run_endpoint(
    client: str,
    port: int,
    endpoint: tuple[str, str],
    bodies: Sequence[str] | None,
    connections: int,
    seconds: float,
) -> Result:
    method, path = endpoint
    if client == "wrk":
        result = wrk_load(port, path, bodies, connections, seconds)
    else:
        encoded = [http_request(method, path, port, None)] if bodies is None else []
        encoded += [http_request(method, path, port, body.encode()) for body in bodies or ()]
        result = python_load(port, encoded, connections, seconds)
    result.endpoint = f"{method} {path}"
    return result


def memory_mib(pid: int) -> dict[str, float]:
    """Resident (RSS) and proportional (PSS: shared pages split among their users) memory of a
    process, in MiB, from /proc (Linux). Workers share the master's pages after the fork, so the
    pod's memory is the sum of PSS, not of RSS."""
    sizes: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            sizes[key.lower()] = round(int(rest.split()[0]) / 1024, 1)  # reported in kB
    return sizes


def memory_report(server: GunicornServer) -> dict[str, Any]:
    """Memory of the gunicorn master and each worker."""
    master = memory_mib(server.pid)
    workers = [memory_mib(pid) for pid in server.worker_pids()]
    return {
        "master": master,
        "workers": workers,
        "total_pss_mib": round(master["pss"] + sum(w["pss"] for w in workers), 1),
    }


def preflight(port: int, bodies: Sequence[str]) -> None:
    """Every body once, in turn: each must answer 200 (else the inputs, not the load, are wrong).
    This also gives the workers their first sight of each shape."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for index, body in enumerate(bodies):
            conn.request("POST", OVERHEAD[1], body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"body {index} answered {response.status}: {answer[:500]!r}")
    finally:
        conn.close()


@contextmanager
def gunicorn(
    workers: int,
    threads: int | None,
    timeout: float,
    worker_class: str | None = None,
    read_seconds: float | None = None,
) -> Iterator[GunicornServer]:
    env = {} if read_seconds is None else {"OVERHEAD_REQUEST_READ_SECONDS": str(read_seconds)}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        server = GunicornServer(
            f"sqlite:///{tmp}/bench.db",
            tokens=TOKENS,
            workers=workers,
            threads=threads,
            worker_class=worker_class,
            env=env,
        )
        try:
            yield server.start(timeout=timeout)
        finally:
            # A second Ctrl-C or SIGTERM while gunicorn shuts down must not leave it running.
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                server.__exit__()  # stops gunicorn (even when start failed half-way), removes its log
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


def run(args: argparse.Namespace, out: Any = sys.stdout) -> dict[str, Any]:
    began = time.monotonic()
    deadline = began + args.max_seconds
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    requests = corpus(args.bodies)
    bodies = [json.dumps(r, separators=(",", ":")) for r in requests]
    shapes = len({json.dumps(memo_key(r, r["vmi"])) for r in requests})
    report: dict[str, Any] = {
        "meta": _meta(args, client, bodies, shapes),
        "levels": [],
        "skipped_levels": [],
        "slow": None,
        "soak": None,
        "skipped_rounds": [],
        "stopped": None,
        "totals": {},
    }
    print(
        f"# load benchmark {report['meta']['date']}: POST /v1/overhead vs GET /healthz; gunicorn "
        f"{args.workers} workers (project settings), loopback, SQLite; {cpu_count()} CPUs shared by "
        f"server and client; Python {platform.python_version()}\n# overhead bodies: {len(bodies)} "
        f"realistic VMIs from benchmarks/corpus.py ({shapes} distinct shapes, "
        f"{report['meta']['body_bytes_mean']} bytes each on average), cycled; client: {client}",
        file=out,
        flush=True,
    )
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with gunicorn(
            args.workers,
            args.threads,
            max(deadline - time.monotonic(), 1),
            args.worker_class,
            args.read_seconds,
        ) as server:
            report["meta"]["server_pid"] = server.pid
            report["meta"]["server_port"] = server.port
            print(f"# gunicorn master pid {server.pid} on port {server.port}", file=out, flush=True)
            preflight(server.port, bodies)
            if args.warmup > 0:
                run_endpoint("python", server.port, OVERHEAD, bodies, min(levels, default=1), args.warmup)
            _levels(args, client, server.port, bodies, levels, deadline, report, out)
            # What the processes hold after the load: sizes the pod's memory request and limit.
            report["memory"] = memory_report(server)
            print(_memory_line(report["memory"]), file=out, flush=True)
            _extra_rounds(args, report, server, [b.encode() for b in bodies], deadline, out)
    except (KeyboardInterrupt, Interrupted):
        report["stopped"] = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _totals(report, began, out)
    return report


def _meta(args: argparse.Namespace, client: str, bodies: list[str], shapes: int) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "client": client,
        "cpus": cpu_count(),
        "python": platform.python_version(),
        "workers": args.workers,
        "threads": args.threads or "project default",
        "worker_class": args.worker_class or "project default",
        "duration": args.duration,
        "rounds": args.rounds,
        "bodies": len(bodies),
        "shapes": shapes,
        "body_bytes_mean": round(sum(map(len, bodies)) / len(bodies)),
    }


def _levels(
    args: argparse.Namespace,
    client: str,
    port: int,
    bodies: list[str],
    levels: list[int],
    deadline: float,
    report: dict[str, Any],
    out: Any,
) -> None:
    """Both endpoints at every concurrency level that fits in what is left of ``--max-seconds``."""
    if levels:
        print(_HEADER, file=out, flush=True)
    per_run = (max(1, round(args.duration)) if client == "wrk" else args.duration) + RUN_SLACK_SECONDS
    for connections in levels:
        if time.monotonic() + 2 * args.rounds * per_run > deadline:
            report["skipped_levels"] = levels[levels.index(connections) :]
            report["stopped"] = "max-seconds"
            return
        # Alternating rounds, each row the median round: on a small shared machine one run can
        # land every keep-alive connection on the same worker, or meet a noisy moment.
        healthz_rounds: list[Result] = []
        overhead_rounds: list[Result] = []
        for _ in range(args.rounds):
            healthz_rounds.append(run_endpoint(client, port, HEALTHZ, None, connections, args.duration))
            overhead_rounds.append(run_endpoint(client, port, OVERHEAD, bodies, connections, args.duration))
        healthz, overhead = median_round(healthz_rounds), median_round(overhead_rounds)
        ratio = overhead.rps / healthz.rps if healthz.rps else math.nan
        print(_row(healthz, None), file=out, flush=True)
        print(_row(overhead, ratio), file=out, flush=True)
        report["levels"].append(
            {
                "connections": connections,
                "healthz": asdict(healthz),
                "overhead": asdict(overhead),
                "ratio": ratio,
                "rounds": {
                    "healthz": [asdict(r) for r in healthz_rounds],
                    "overhead": [asdict(r) for r in overhead_rounds],
                },
            }
        )


def _memory_line(memory: dict[str, Any]) -> str:
    return (
        f"# memory after the load (RSS/PSS MiB): master {memory['master']['rss']}/"
        f"{memory['master']['pss']}, workers "
        + ", ".join(f"{w['rss']}/{w['pss']}" for w in memory["workers"])
        + f"; all processes {memory['total_pss_mib']} MiB PSS"
    )


def _totals(report: dict[str, Any], began: float, out: Any) -> None:
    runs = [r for level in report["levels"] for rounds in level["rounds"].values() for r in rounds]
    report["rounds_ok"] = rounds_ok(report["slow"], report["soak"])
    totals = report["totals"] = {
        "answers": sum(r["answers"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "seconds": round(time.monotonic() - began, 1),
    }
    skipped = report["skipped_levels"]
    print(
        f"# {totals['answers']} answers, {totals['non_2xx']} non-2xx, {totals['socket_errors']} socket "
        f"errors, {totals['seconds']} s in all"
        + (f"; skipped levels (--max-seconds): {skipped}" if skipped else "")
        + ("; INTERRUPTED" if report["stopped"] == "interrupted" else ""),
        file=out,
        flush=True,
    )


def _extra_rounds(
    args: argparse.Namespace,
    report: dict[str, Any],
    server: GunicornServer,
    bodies: list[bytes],
    deadline: float,
    out: Any,
) -> None:
    """The slow-client and soak rounds, each when it fits in what is left of ``--max-seconds``."""
    if args.slow_connections:
        if time.monotonic() + args.slow_seconds + 10 > deadline:
            report["skipped_rounds"].append("slow")
        else:
            slow = report["slow"] = slow_round(
                server.port, bodies[0], args.slow_connections, args.slow_seconds
            )
            print(slow_report(slow), file=out, flush=True)
    if args.soak_seconds:
        if time.monotonic() + args.soak_seconds + 60 > deadline:
            report["skipped_rounds"].append("soak")
        else:
            soak = report["soak"] = soak_round(
                server, bodies, args.soak_seconds, args.soak_clients, memory_report
            )
            print(soak_report(soak), file=out, flush=True)


_HEADER = (
    "client | conns | endpoint          | answers |   req/s | p50 ms | p90 ms | p99 ms | max ms "
    "| non-2xx | sock err | ratio"
)


def _row(result: Result, ratio: float | None) -> str:
    return (
        f"{result.client:<6} | {result.connections:5d} | {result.endpoint:<17} | {result.answers:7d} | "
        f"{result.rps:7.0f} | {result.p50_ms:6.2f} | {result.p90_ms:6.2f} | {result.p99_ms:6.2f} | "
        f"{result.max_ms:6.1f} | {result.non_2xx:7d} | {result.socket_errors:8d} | "
        + (f"{ratio:5.2f}" if ratio is not None else "")
    ).rstrip(" |")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--levels", default=DEFAULT_LEVELS, help=f"connections per level (default {DEFAULT_LEVELS})"
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per endpoint and level (wrk: whole seconds)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per level; rows show the median (default 3)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=480.0, help="bound on the whole run (default 480)"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--bodies", type=int, default=500, help="distinct VMIs cycled through (default 500)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed overhead load first")
    parser.add_argument("--workers", type=int, default=cpu_count(), help="gunicorn workers (default: CPUs)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: the project's)")
    parser.add_argument(
        "--worker-class", help="another gunicorn worker class, to compare (default: the project's)"
    )
    parser.add_argument(
        "--slow-connections", type=int, default=64, help="slow-client round: trickling connections (0: skip)"
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=20.0,
        help="slow-client round: how long to follow them (default 20)",
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=180.0, help="soak round length (0: skip; default 180)"
    )
    parser.add_argument("--soak-clients", type=int, default=4, help="soak round: hot-path client threads")
    parser.add_argument(
        "--read-seconds", type=float, help="the server's REQUEST_READ_SECONDS (default: the project's, 10)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (make bench-deps installs it)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["stopped"] == "interrupted":
        return 130
    failed = report["totals"]["non_2xx"] or report["totals"]["socket_errors"] or not report["rounds_ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
