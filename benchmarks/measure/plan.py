"""What both measuring commands (bare QEMU and the libvirt path) check before the first point: the
config with ``--repetitions`` applied, an accelerator that can be used, the points ``--max-points``
keeps, and somewhere for the records to go."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TextIO

from benchmarks.measure.config import BenchConfig, ConfigError, Point, load_config
from benchmarks.measure.host import choose_accelerator
from benchmarks.measure.upload import MAX_BATCH

__all__ = ["RunPlan", "plan_run", "require_outputs"]


@dataclass(frozen=True)
class RunPlan:
    config: BenchConfig
    accelerator: str
    planned: list[tuple[Point, int]]
    beyond: int
    """How many (point, repetition) pairs ``--max-points`` left out."""


def plan_run(
    args: argparse.Namespace, parser: argparse.ArgumentParser, err: TextIO, *, one_domain: bool
) -> RunPlan | None:
    """The run ``args`` ask for, or None after saying on ``err`` why it cannot run (bad option
    values end in ``parser.error``). ``one_domain``: refuse points with several domains."""
    if not 1 <= args.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be between 1 and {MAX_BATCH}")
    if args.max_points is not None and args.max_points < 0:
        parser.error("--max-points must not be negative")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return None
    several = [p.name for p in config.points if p.domains != 1]
    if one_domain and several:
        print(
            f"error: {args.config}: {several[0]}: domains > 1 needs a libvirt daemon; run it with "
            "python -m benchmarks.measure libvirt",
            file=err,
        )
        return None
    if args.repetitions is not None:
        if args.repetitions < 1:
            parser.error("--repetitions must be at least 1")
        config = BenchConfig(
            config.name, config.points, args.repetitions, config.accelerator, config.point_timeout_seconds
        )
    accelerator = choose_accelerator(args.accelerator or config.accelerator)
    if accelerator == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("error: accelerator kvm requested but /dev/kvm cannot be opened", file=err)
        return None
    schedule = config.schedule()
    planned = schedule[: args.max_points] if args.max_points is not None else schedule
    return RunPlan(config, accelerator, planned, len(schedule) - len(planned))


def require_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Records must go to ``--out``, to ``--url`` (with a token), or both."""
    if args.out is None and not args.url:
        parser.error("give --out FILE.jsonl, --url (or $OVERHEAD_URL), or both")
    if args.url and not args.token:
        parser.error("--url needs --token (or $OVERHEAD_TOKEN)")
