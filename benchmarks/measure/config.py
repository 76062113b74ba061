"""The shape matrix of a measurement run, from a YAML or JSON file.

A config names the VM shapes to boot: a cross product (``matrix``, or several in ``matrices``)
and/or an explicit list (``points``), with ``defaults`` for fields a point or matrix leaves out::

    name: grid-small              # default: the file name without its extension
    repetitions: 2                # each point is measured this many times (default 1)
    accelerator: auto             # auto (kvm when /dev/kvm is usable, else tcg), kvm or tcg
    pointTimeoutSeconds: 120      # optional: a fixed time bound per point (default: from its size)
    defaults: {graphics: false, ioThreads: 0, deviceSet: minimal, touchPct: 100}
    matrix:                       # every combination of these lists (a scalar is a one-item list)
      vcpus: [1, 2, 4]
      memoryMiB: [256, 1024]
      touchPct: [50, 100]
    points:
      - {vcpus: 2, memoryMiB: 1024, touchPct: 100, graphics: true, ioThreads: 1, deviceSet: kubevirt}
      - {vcpus: 1, memoryMiB: 256, touchMiB: 0, name: idle-256}

Point fields: ``vcpus`` (1..1024), ``memoryMiB`` (16..16 TiB), ``touchPct`` (0..100, the share of
the guest's usable RAM above 4 MiB it writes) or ``touchMiB`` (an amount), ``graphics`` (VGA on or
off), ``ioThreads`` (``-object iothread`` count), ``deviceSet`` (``minimal`` or ``kubevirt``),
``domains`` (the libvirt path only: this many identical domains under one daemon, 1..8; default 1)
and an optional ``name``. A point's default name spells its shape (``v2-m1024-p100-vga-io1-kubevirt``,
with ``-d3`` appended for three domains);
points with the same name are measured once. Runs go repetition by repetition (every point once,
then every point again), so a run cut short still covers the whole matrix.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = ["ACCELERATORS", "DEVICE_SETS", "BenchConfig", "ConfigError", "Point", "expand", "load_config"]

DEVICE_SETS: Final = ("minimal", "kubevirt")
ACCELERATORS: Final = ("auto", "kvm", "tcg")

_POINT_FIELDS: Final = (
    "vcpus",
    "memoryMiB",
    "touchPct",
    "touchMiB",
    "graphics",
    "ioThreads",
    "deviceSet",
    "domains",
)
_TOP_FIELDS: Final = frozenset(
    {"name", "description", "repetitions", "accelerator", "pointTimeoutSeconds", "defaults", "matrix"}
    | {"matrices", "points"}
)
_BUILTIN_DEFAULTS: Final[Mapping[str, Any]] = {
    "graphics": False,
    "ioThreads": 0,
    "deviceSet": "minimal",
}
MAX_MEMORY_MIB: Final = 16 * 1024 * 1024
MAX_DOMAINS: Final = 8


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Point:
    """One VM shape to boot and measure."""

    name: str
    vcpus: int
    memory_mib: int
    touch_pct: int | None  # share of the usable RAM (exactly one of touch_pct and touch_mib is set)
    touch_mib: int | None
    graphics: bool
    io_threads: int
    device_set: str
    domains: int = 1  # identical domains under one libvirt daemon (the libvirt path only)

    @property
    def append(self) -> str:
        """The guest's command line (``-append``)."""
        return f"pct={self.touch_pct}" if self.touch_pct is not None else f"mib={self.touch_mib}"

    @property
    def expected_touch_mib(self) -> float:
        """About how much the guest will write (usable RAM is the guest RAM less ~5 MiB)."""
        usable = max(self.memory_mib - 5, 0)
        if self.touch_pct is not None:
            return usable * self.touch_pct / 100
        return float(min(self.touch_mib or 0, usable))


@dataclass(frozen=True)
class BenchConfig:
    """A run's points (in order), how often each is measured, and how."""

    name: str
    points: tuple[Point, ...]
    repetitions: int = 1
    accelerator: str = "auto"
    point_timeout_seconds: float | None = None

    def schedule(self) -> list[tuple[Point, int]]:
        """(point, repetition) in run order: repetition by repetition."""
        return [(point, rep) for rep in range(self.repetitions) for point in self.points]


def load_config(path: str | Path) -> BenchConfig:
    """Read and expand a config file (``.json``: JSON; anything else: YAML, which includes JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    try:
        return expand(data, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def expand(data: Any, *, default_name: str = "measure") -> BenchConfig:
    """A decoded config (mapping) as a :class:`BenchConfig`: matrices crossed, points named, checked."""
    if not isinstance(data, Mapping):
        raise ConfigError("the config must be a mapping")
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise ConfigError(f"unknown field {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TOP_FIELDS))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or len(name) > 100:
        raise ConfigError("name: must be a non-empty string of at most 100 characters")
    repetitions = _int(data.get("repetitions", 1), "repetitions", 1, 1000)
    accelerator = data.get("accelerator", "auto")
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"accelerator: must be one of {', '.join(ACCELERATORS)}")
    timeout = data.get("pointTimeoutSeconds")
    if timeout is not None and (type(timeout) not in (int, float) or not 1 <= timeout <= 3600):
        raise ConfigError("pointTimeoutSeconds: must be a number of seconds between 1 and 3600")

    points = _points(data)
    return BenchConfig(
        name=name,
        points=tuple(points),
        repetitions=repetitions,
        accelerator=accelerator,
        point_timeout_seconds=float(timeout) if timeout is not None else None,
    )


def _points(data: Mapping[str, Any]) -> list[Point]:
    """The config's points: its matrices crossed and its listed points, each over the defaults,
    the first of each name kept."""
    defaults = dict(_BUILTIN_DEFAULTS)
    given_defaults = data.get("defaults", {})
    if not isinstance(given_defaults, Mapping):
        raise ConfigError("defaults: must be a mapping")
    _known_fields(given_defaults, "defaults", allow_name=False)
    defaults.update(given_defaults)

    points: list[Point] = []
    seen: set[str] = set()
    for where, fields in _raw_points(data):
        merged = dict(defaults)
        if "touchPct" in fields or "touchMiB" in fields:  # a point's own touch replaces the default's
            merged.pop("touchPct", None)
            merged.pop("touchMiB", None)
        merged.update(fields)
        point = _point(merged, where)
        if point.name not in seen:
            seen.add(point.name)
            points.append(point)
    return points


def _raw_points(data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Each point's fields as written, with where it came from (for messages)."""
    matrices: list[Any] = []
    if "matrix" in data:
        matrices.append(data["matrix"])
    if "matrices" in data:
        if not isinstance(data["matrices"], list):
            raise ConfigError("matrices: must be a list of matrices")
        matrices.extend(data["matrices"])
    raw_points: list[tuple[str, Mapping[str, Any]]] = []
    for m_index, matrix in enumerate(matrices):
        where = "matrix" if "matrix" in data and m_index == 0 else f"matrices[{m_index - ('matrix' in data)}]"
        raw_points.extend(_cross(matrix, where))
    points_field = data.get("points", [])
    if not isinstance(points_field, list):
        raise ConfigError("points: must be a list of points")
    for p_index, item in enumerate(points_field):
        if not isinstance(item, Mapping):
            raise ConfigError(f"points[{p_index}]: must be a mapping")
        _known_fields(item, f"points[{p_index}]", allow_name=True)
        raw_points.append((f"points[{p_index}]", item))
    if not raw_points:
        raise ConfigError("no points: give a matrix, matrices or points")
    return raw_points


def _cross(matrix: Any, where: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if not isinstance(matrix, Mapping):
        raise ConfigError(f"{where}: must be a mapping of field to list of values")
    _known_fields(matrix, where, allow_name=False)
    keys = list(matrix)
    lists: list[list[Any]] = []
    for key in keys:
        values = matrix[key]
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}.{key}: must not be empty")
        lists.append(values)
    for combo in itertools.product(*lists):
        yield where, dict(zip(keys, combo, strict=True))


def _known_fields(fields: Mapping[str, Any], where: str, *, allow_name: bool) -> None:
    allowed = set(_POINT_FIELDS) | ({"name"} if allow_name else set())
    unknown = set(fields) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _point(fields: Mapping[str, Any], where: str) -> Point:
    for required in ("vcpus", "memoryMiB"):
        if required not in fields:
            raise ConfigError(f"{where}: {required} is required")
    vcpus = _int(fields["vcpus"], f"{where}.vcpus", 1, 1024)
    memory = _int(fields["memoryMiB"], f"{where}.memoryMiB", 16, MAX_MEMORY_MIB)
    if "touchPct" in fields and "touchMiB" in fields:
        raise ConfigError(f"{where}: give touchPct or touchMiB, not both")
    touch_pct = touch_mib = None
    if "touchMiB" in fields:
        touch_mib = _int(fields["touchMiB"], f"{where}.touchMiB", 0, MAX_MEMORY_MIB)
    else:
        touch_pct = _int(fields.get("touchPct", 100), f"{where}.touchPct", 0, 100)
    graphics = fields["graphics"]
    if type(graphics) is not bool:
        raise ConfigError(f"{where}.graphics: must be true or false")
    io_threads = _int(fields["ioThreads"], f"{where}.ioThreads", 0, 64)
    device_set = fields["deviceSet"]
    if device_set not in DEVICE_SETS:
        raise ConfigError(f"{where}.deviceSet: must be one of {', '.join(DEVICE_SETS)}")
    domains = _int(fields.get("domains", 1), f"{where}.domains", 1, MAX_DOMAINS)
    name = fields.get("name")
    if name is None:
        touch = f"p{touch_pct}" if touch_pct is not None else f"t{touch_mib}"
        name = f"v{vcpus}-m{memory}-{touch}-{'vga' if graphics else 'novga'}-io{io_threads}-{device_set}"
        name += f"-d{domains}" if domains > 1 else ""
    elif not isinstance(name, str) or not name or len(name) > 150 or "\x00" in name:
        raise ConfigError(f"{where}.name: must be a non-empty string of at most 150 characters")
    return Point(name, vcpus, memory, touch_pct, touch_mib, graphics, io_threads, device_set, domains)


def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{where}: must be an integer between {low} and {high}")
    return value
