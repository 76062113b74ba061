"""The benchmark's configuration file (YAML): the node pool, the guest, the shape matrix, timing.

Every key is optional except ``pool.hypervisor``; unknown keys are refused (a misspelt timeout
must not silently fall back to its default), each error naming its dotted path. The example in
``deploy/benchmark/configmap.yaml`` lists every key with its default.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from overhead_service.errors import InputError
from overhead_service.model.quantity import parse_quantity

__all__ = [
    "DEVICE_SETS",
    "HYPERVISORS",
    "STRESSORS",
    "ApiSettings",
    "Config",
    "ConfigError",
    "GuestSettings",
    "PoolSettings",
    "Shape",
    "Timing",
    "UploadSettings",
    "load_config",
    "parse_config",
]

HYPERVISORS: Final = ("kvm", "mshv")
DEVICE_SETS: Final = ("minimal", "kubevirt")
STRESSORS: Final = ("python", "stress-ng", "dd", "command")
TOUCH_DETECTION: Final = ("console", "settle")
MIB: Final = 1024 * 1024
MAX_REPETITIONS: Final = 999
MAX_SHAPES: Final = 10_000
_NAMESPACE: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ConfigError(ValueError):
    """The configuration is unusable; ``path`` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True)
class Shape:
    """One point of the matrix: what the VMI gets."""

    vcpus: int
    memory: str  # the Kubernetes quantity as written, e.g. "1Gi"
    memory_bytes: int
    graphics: bool
    io_threads: int
    device_set: str  # "minimal" | "kubevirt"

    @property
    def name(self) -> str:
        """A DNS-label-safe name, e.g. ``c2-m1gi-g0-io1-kubevirt``."""
        memory = re.sub(r"[^a-z0-9]+", "-", self.memory.lower()).strip("-")
        return f"c{self.vcpus}-m{memory}-g{int(self.graphics)}-io{self.io_threads}-{self.device_set}"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    hypervisor: str
    node_selector: dict[str, str] = field(default_factory=dict)
    node: str = ""  # "" = this Job's node if it is in the pool, else the first ready one
    tolerations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class GuestSettings:
    image: str = "quay.io/containerdisks/fedora:41"
    stressor: str = "python"
    command: str = ""  # stressor "command": a shell command; @PERCENT@, $n (bytes), $mib are set
    share: float = 0.9  # of the guest's MemAvailable at start
    touch_detection: str = "console"
    assumed_touched_share: float = 1.0  # touchDetection "settle": guest RAM counted as touched
    console_device: str = "/dev/ttyS0"
    install_packages: bool = False  # cloud-init installs stress-ng (needs the guest network)

    @property
    def percent(self) -> int:
        return max(1, min(100, round(self.share * 100)))


@dataclass(frozen=True, slots=True)
class Timing:
    running_seconds: float = 600
    touch_seconds: float = 900
    settle_seconds: float = 30
    readings: int = 3
    reading_interval_seconds: float = 10
    quiet_seconds: float = 30
    delete_seconds: float = 300
    poll_seconds: float = 5
    max_run_seconds: float = 4 * 3600
    sample_attempts: int = 2


@dataclass(frozen=True, slots=True)
class ApiSettings:
    retries: int = 5
    backoff_seconds: float = 1.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class UploadSettings:
    url: str = ""  # "" = do not upload
    token_env: str = "OVERHEAD_TOKEN"
    retries: int = 5
    backoff_seconds: float = 2.0
    timeout_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    pool: PoolSettings
    shapes: tuple[Shape, ...]
    repetitions: int = 2
    run_id: str = ""
    namespace: str = "overhead-bench"
    node_scope: bool = False
    kubevirt_namespace: str = "kubevirt"
    kubevirt_name: str = "kubevirt"
    guest: GuestSettings = GuestSettings()
    timing: Timing = Timing()
    api: ApiSettings = ApiSettings()
    upload: UploadSettings = UploadSettings()
    output: str = ""  # JSON Lines file of every record; "-" = stdout; "" = none
    meminfo_path: str = "/proc/meminfo"


SHIPPED_CONFIG: Final = Path(__file__).resolve().parents[2] / "deploy" / "benchmark" / "configmap.yaml"
"""The ConfigMap the Job mounts: its ``shapes.yaml`` is the shipped configuration."""


def load_config(path: str | Path) -> Config:
    """The configuration in the YAML file at ``path``: the configuration itself, or a Kubernetes
    ConfigMap holding it under ``shapes.yaml`` (as ``deploy/benchmark/configmap.yaml`` does)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and data.get("kind") == "ConfigMap":
            shapes = (data.get("data") or {}).get("shapes.yaml")
            if not isinstance(shapes, str):
                raise ConfigError("", f"{path} is a ConfigMap without data.shapes.yaml")
            data = yaml.safe_load(shapes)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return parse_config(data)


def parse_config(data: Any) -> Config:
    """The configuration from decoded YAML/JSON."""
    top = _mapping(data, "")
    _only(
        top,
        "",
        {
            "runId",
            "namespace",
            "pool",
            "nodeScope",
            "kubevirt",
            "guest",
            "shapes",
            "timing",
            "api",
            "upload",
            "output",
            "meminfoPath",
        },
    )
    pool = _pool(_mapping(top.get("pool"), "pool"))
    guest = _guest(_mapping(top.get("guest", {}), "guest"))
    shapes, repetitions = _shapes(_mapping(top.get("shapes"), "shapes"))
    node_scope = top.get("nodeScope")
    if node_scope is None:
        node_scope = pool.hypervisor == "mshv"
    elif type(node_scope) is not bool:
        raise ConfigError("nodeScope", "must be true, false or null (null: true for mshv, false for kvm)")
    kubevirt = _mapping(top.get("kubevirt", {}), "kubevirt")
    _only(kubevirt, "kubevirt", {"namespace", "name"})
    namespace = _text(top, "namespace", "", "overhead-bench")
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError("namespace", "must be a Kubernetes namespace name (RFC 1123 label)")
    if guest.stressor == "stress-ng" and guest.install_packages:
        minimal = sorted({s.name for s in shapes if s.device_set == "minimal"})
        if minimal:
            raise ConfigError(
                "guest.installPackages",
                "cloud-init needs the guest network to install stress-ng, but deviceSet 'minimal' "
                f"has no network interface ({minimal[0]}); use an image with stress-ng in it",
            )
    return Config(
        pool=pool,
        shapes=shapes,
        repetitions=repetitions,
        run_id=_text(top, "runId", "", ""),
        namespace=namespace,
        node_scope=node_scope,
        kubevirt_namespace=_text(kubevirt, "namespace", "kubevirt", "kubevirt"),
        kubevirt_name=_text(kubevirt, "name", "kubevirt", "kubevirt"),
        guest=guest,
        timing=_timing(_mapping(top.get("timing", {}), "timing")),
        api=_api(_mapping(top.get("api", {}), "api")),
        upload=_upload(_mapping(top.get("upload", {}), "upload")),
        output=_text(top, "output", "", ""),
        meminfo_path=_text(top, "meminfoPath", "", "/proc/meminfo"),
    )


# --- sections -------------------------------------------------------------------------------------


def _pool(pool: Mapping[str, Any]) -> PoolSettings:
    _only(pool, "pool", {"hypervisor", "nodeSelector", "node", "tolerations"})
    hypervisor = pool.get("hypervisor")
    if hypervisor not in HYPERVISORS:
        raise ConfigError("pool.hypervisor", f"is required: one of {', '.join(HYPERVISORS)}")
    selector = _mapping(pool.get("nodeSelector", {}), "pool.nodeSelector")
    for key, value in selector.items():
        if type(key) is not str or type(value) is not str:
            raise ConfigError(f"pool.nodeSelector.{key}", "labels and values must be strings")
    tolerations = pool.get("tolerations", [])
    if type(tolerations) is not list or any(type(t) is not dict for t in tolerations):
        raise ConfigError("pool.tolerations", "must be a list of Kubernetes tolerations")
    return PoolSettings(
        hypervisor=hypervisor,
        node_selector=dict(selector),
        node=_text(pool, "node", "pool", ""),
        tolerations=tuple(tolerations),
    )


def _guest(guest: Mapping[str, Any]) -> GuestSettings:
    _only(
        guest,
        "guest",
        {
            "image",
            "stressor",
            "command",
            "share",
            "touchDetection",
            "assumedTouchedShare",
            "consoleDevice",
            "installPackages",
        },
    )
    defaults = GuestSettings()
    stressor = _text(guest, "stressor", "guest", defaults.stressor)
    if stressor not in STRESSORS:
        raise ConfigError("guest.stressor", f"must be one of {', '.join(STRESSORS)}")
    command = _text(guest, "command", "guest", "")
    if (stressor == "command") != bool(command):
        raise ConfigError("guest.command", "is required with stressor 'command' and only then")
    detection = _text(guest, "touchDetection", "guest", defaults.touch_detection)
    if detection not in TOUCH_DETECTION:
        raise ConfigError("guest.touchDetection", f"must be one of {', '.join(TOUCH_DETECTION)}")
    install = guest.get("installPackages", stressor == "stress-ng")
    if type(install) is not bool:
        raise ConfigError("guest.installPackages", "must be true or false")
    return GuestSettings(
        image=_text(guest, "image", "guest", defaults.image),
        stressor=stressor,
        command=command,
        share=_number(guest, "share", "guest", defaults.share, 0.01, 1.0),
        touch_detection=detection,
        assumed_touched_share=_number(
            guest, "assumedTouchedShare", "guest", defaults.assumed_touched_share, 0.0, 1.0
        ),
        console_device=_text(guest, "consoleDevice", "guest", defaults.console_device),
        install_packages=install,
    )


def _shapes(shapes: Mapping[str, Any]) -> tuple[tuple[Shape, ...], int]:
    _only(shapes, "shapes", {"repetitions", "matrix", "points"})
    repetitions = _integer(shapes, "repetitions", "shapes", 2, 1, MAX_REPETITIONS)
    found: list[Shape] = []
    if "matrix" in shapes:
        matrix = _mapping(shapes["matrix"], "shapes.matrix")
        _only(matrix, "shapes.matrix", {"vcpus", "memory", "graphics", "ioThreads", "deviceSet"})
        axes: dict[str, list[Any]] = {}
        for key, default in (
            ("vcpus", None),
            ("memory", None),
            ("graphics", [False]),
            ("ioThreads", [0]),
            ("deviceSet", ["kubevirt"]),
        ):
            values = matrix.get(key, default)
            if type(values) is not list or not values:
                raise ConfigError(f"shapes.matrix.{key}", "must be a non-empty list")
            axes[key] = values
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo, strict=True))
            found.append(_shape(point, "shapes.matrix"))
    for index, point in enumerate(shapes.get("points", []) or []):
        found.append(_shape(_mapping(point, f"shapes.points[{index}]"), f"shapes.points[{index}]"))
    if not found:
        raise ConfigError("shapes", "name at least one shape (matrix and/or points)")
    unique = tuple(dict.fromkeys(found))  # keep the order, drop repeats
    if len(unique) > MAX_SHAPES:
        raise ConfigError("shapes", f"at most {MAX_SHAPES} shapes, got {len(unique)}")
    return unique, repetitions


def _shape(point: Mapping[str, Any], path: str) -> Shape:
    _only(point, path, {"vcpus", "memory", "graphics", "ioThreads", "deviceSet"})
    vcpus = _integer(point, "vcpus", path, None, 1, 1024)
    memory = point.get("memory")
    if type(memory) is int:
        memory = str(memory)
    if type(memory) is not str:
        raise ConfigError(f"{path}.memory", "is required: a Kubernetes quantity such as 1Gi")
    try:
        memory_bytes = parse_quantity(memory).value()
    except InputError as exc:
        raise ConfigError(f"{path}.memory", f"not a Kubernetes quantity: {exc.detail}") from None
    if not 256 * MIB <= memory_bytes <= 16 * 1024**4:
        raise ConfigError(f"{path}.memory", "must be between 256Mi and 16Ti")
    graphics = point.get("graphics", False)
    if type(graphics) is not bool:
        raise ConfigError(f"{path}.graphics", "must be true or false")
    device_set = point.get("deviceSet", "kubevirt")
    if device_set not in DEVICE_SETS:
        raise ConfigError(f"{path}.deviceSet", f"must be one of {', '.join(DEVICE_SETS)}")
    return Shape(
        vcpus=vcpus,
        memory=memory,
        memory_bytes=memory_bytes,
        graphics=graphics,
        io_threads=_integer(point, "ioThreads", path, 0, 0, 256),
        device_set=device_set,
    )


def _timing(timing: Mapping[str, Any]) -> Timing:
    names = {
        "runningSeconds": "running_seconds",
        "touchSeconds": "touch_seconds",
        "settleSeconds": "settle_seconds",
        "readingIntervalSeconds": "reading_interval_seconds",
        "quietSeconds": "quiet_seconds",
        "deleteSeconds": "delete_seconds",
        "pollSeconds": "poll_seconds",
        "maxRunSeconds": "max_run_seconds",
    }
    _only(timing, "timing", set(names) | {"readings", "sampleAttempts"})
    defaults = Timing()
    values: dict[str, Any] = {
        attr: _number(timing, key, "timing", getattr(defaults, attr), 0.0, 7 * 86400.0)
        for key, attr in names.items()
    }
    values["readings"] = _integer(timing, "readings", "timing", defaults.readings, 1, 100)
    values["sample_attempts"] = _integer(timing, "sampleAttempts", "timing", defaults.sample_attempts, 1, 10)
    return Timing(**values)


def _api(api: Mapping[str, Any]) -> ApiSettings:
    _only(api, "api", {"retries", "backoffSeconds", "timeoutSeconds"})
    d = ApiSettings()
    return ApiSettings(
        retries=_integer(api, "retries", "api", d.retries, 0, 20),
        backoff_seconds=_number(api, "backoffSeconds", "api", d.backoff_seconds, 0.0, 60.0),
        timeout_seconds=_number(api, "timeoutSeconds", "api", d.timeout_seconds, 0.1, 600.0),
    )


def _upload(upload: Mapping[str, Any]) -> UploadSettings:
    _only(upload, "upload", {"url", "tokenEnv", "retries", "backoffSeconds", "timeoutSeconds"})
    d = UploadSettings()
    url = _text(upload, "url", "upload", "")
    if url and not re.match(r"https?://", url):
        raise ConfigError("upload.url", "must be an http:// or https:// URL of the overhead service")
    return UploadSettings(
        url=url.rstrip("/"),
        token_env=_text(upload, "tokenEnv", "upload", d.token_env),
        retries=_integer(upload, "retries", "upload", d.retries, 0, 20),
        backoff_seconds=_number(upload, "backoffSeconds", "upload", d.backoff_seconds, 0.0, 300.0),
        timeout_seconds=_number(upload, "timeoutSeconds", "upload", d.timeout_seconds, 0.1, 600.0),
    )


# --- values ---------------------------------------------------------------------------------------


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None and path in ("guest", "timing", "api", "upload", "kubevirt"):
        return {}
    if type(value) is not dict:
        raise ConfigError(path, "must be a mapping" if value is not None else "is required")
    return value


def _only(mapping: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(str(key) for key in mapping.keys() - allowed)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(where, f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _text(mapping: Mapping[str, Any], key: str, parent: str, default: str) -> str:
    value = mapping.get(key, default)
    if value is None:
        return default
    if type(value) is not str:
        raise ConfigError(_join(parent, key), "must be a string")
    return value


def _integer(
    mapping: Mapping[str, Any], key: str, parent: str, default: int | None, low: int, high: int
) -> int:
    value = mapping.get(key, default)
    if type(value) is not int or not low <= value <= high:
        required = " (required)" if default is None and key not in mapping else ""
        raise ConfigError(_join(parent, key), f"must be an integer between {low} and {high}{required}")
    return value


def _number(
    mapping: Mapping[str, Any], key: str, parent: str, default: float, low: float, high: float
) -> float:
    value = mapping.get(key, default)
    if type(value) not in (int, float) or not low <= value <= high:
        raise ConfigError(_join(parent, key), f"must be a number between {low:g} and {high:g}")
    return float(value)
