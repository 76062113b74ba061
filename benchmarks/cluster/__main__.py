"""``python -m benchmarks.cluster --config shapes.yaml``: the command line of the cluster benchmark
(``--dry-run`` alone prints the VMIs of the shipped configuration).

Exit status: 0 every sample measured and delivered; 1 some sample failed, was not run or not
uploaded (the records then follow on standard output); 2 refused before creating anything (bad
configuration, unusable node, no token); 143 terminated by SIGTERM (VMIs deleted first).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType

from benchmarks.cluster.config import SHIPPED_CONFIG, Config, ConfigError, load_config
from benchmarks.cluster.kube import KubeClient, KubeError, open_client
from benchmarks.cluster.runner import Benchmark, PreflightError, Terminated
from benchmarks.cluster.upload import JsonLinesSink, Uploader, UploadError
from benchmarks.cluster.vmi import sample_manifest
from overhead_service.kube import Access

__all__ = ["main", "resolve_run_id"]

log = logging.getLogger("benchmarks.cluster")


def resolve_run_id(config: Config, environ: Mapping[str, str]) -> str:
    """``runId``: the configuration's, else ``$BENCH_RUN_ID``, else ``job-<$JOB_UID>`` (the Job's
    uid, stable across retries of the Job's pod, so a retry re-uploads as duplicates), else a
    timestamp."""
    if config.run_id:
        return config.run_id
    if environ.get("BENCH_RUN_ID"):
        return environ["BENCH_RUN_ID"]
    if environ.get("JOB_UID"):
        return f"job-{environ['JOB_UID']}"
    return "cluster-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` once (later ones are ignored while cleaning up)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description="Measure virt-launcher memory overhead on a KubeVirt cluster and upload the records.",
    )
    parser.add_argument(
        "--config",
        default=str(SHIPPED_CONFIG),
        help="the YAML configuration (shape matrix, pool, timing), or a ConfigMap holding it as "
        "shapes.yaml (default: the shipped deploy/benchmark/configmap.yaml)",
    )
    parser.add_argument("--run-id", default="", help="overrides runId")
    parser.add_argument("--node", default="", help="overrides pool.node")
    parser.add_argument(
        "--self-node", default=None, help="the node this process runs on (default $NODE_NAME)"
    )
    parser.add_argument("--output", default=None, help="overrides output (JSON Lines file, - for stdout)")
    parser.add_argument("--upload-url", default=None, help="overrides upload.url ('' to not upload)")
    parser.add_argument(
        "--api-server", default="", help="API server URL (else the pod's service account, else a kubeconfig)"
    )
    parser.add_argument("--token-file", default="", help="bearer token file for --api-server")
    parser.add_argument("--ca-file", default="", help="CA bundle for --api-server (default: the system's)")
    parser.add_argument(
        "--kubeconfig",
        default="",
        help="kubeconfig path (default $KUBECONFIG, ~/.kube/config); tokens, client certificates and "
        "exec plugins all work",
    )
    parser.add_argument("--context", default="", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the VMIs it would create, touch nothing"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _configuration(args)
    except ConfigError as err:
        log.error("configuration: %s", err)
        return 2
    run_id = args.run_id or resolve_run_id(config, env)
    self_node = args.self_node if args.self_node is not None else env.get("NODE_NAME", "")
    if args.dry_run:
        node = config.pool.node or self_node or "NODE"
        for rep in range(1, config.repetitions + 1):
            for shape in config.shapes:
                print(json.dumps(sample_manifest(config, run_id, shape, rep, node), sort_keys=True))
        return 0

    if not config.upload.url and not config.output:
        log.error("the records would go nowhere: set upload.url and/or output")
        return 2
    try:
        uploader = _uploader(config, env)
    except UploadError as err:
        log.error("%s: set $%s (the Job reads it from a Secret)", err, config.upload.token_env)
        return 2
    try:
        client = _client(args, config, env)
    except KubeError as err:
        log.error("%s", err)
        return 2
    sink = JsonLinesSink(config.output) if config.output else None
    benchmark = Benchmark(config, client, run_id=run_id, self_node=self_node, uploader=uploader, sink=sink)
    try:
        with terminate_on_sigterm():
            summary = benchmark.run()
    except PreflightError as err:
        log.error("refused: %s", err)
        return 2
    except Terminated:
        log.error("terminated (SIGTERM); the VMI being measured was deleted")
        return 143
    finally:
        client.close()
        if uploader is not None:
            uploader.close()
        if sink is not None:
            sink.close()
    log.info("summary: %s", json.dumps(summary.as_dict(), sort_keys=True))
    return summary.exit_code


def _configuration(args: argparse.Namespace) -> Config:
    """The configuration file's settings with the command line's overrides."""
    config = load_config(args.config)
    overrides: dict[str, object] = {}
    if args.node:
        overrides["pool"] = dataclasses.replace(config.pool, node=args.node)
    if args.output is not None:
        overrides["output"] = args.output
    if args.upload_url is not None:
        overrides["upload"] = dataclasses.replace(config.upload, url=args.upload_url.rstrip("/"))
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


def _uploader(config: Config, env: Mapping[str, str]) -> Uploader | None:
    """The uploader to ``upload.url`` with the token from the environment; None without a URL."""
    if not config.upload.url:
        return None
    return Uploader(
        config.upload.url,
        env.get(config.upload.token_env, "").strip(),
        retries=config.upload.retries,
        backoff_seconds=config.upload.backoff_seconds,
        timeout_seconds=config.upload.timeout_seconds,
    )


def _client(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> KubeClient:
    """The Kubernetes client, from the command line's access options and the environment."""
    access = Access(
        api_server=args.api_server,
        token_file=args.token_file,
        ca_file=args.ca_file,
        kubeconfig=args.kubeconfig,
        context=args.context,
        environ=env,
    )
    return open_client(
        access,
        retries=config.api.retries,
        backoff_seconds=config.api.backoff_seconds,
        timeout_seconds=config.api.timeout_seconds,
    )


if __name__ == "__main__":
    sys.exit(main())
