"""Valid measurement records for tests and benchmarks: deterministic, varied, consistent."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

GIB = 1024**3
MIB = 1024**2

_BASE: dict[str, Any] = {
    "runId": "run-1",
    "sampleId": "sample-0",
    "hypervisor": "kvm",
    "arch": "amd64",
    "scope": "pod",
    "overheadBytes": 283_115_520,
    "rawBytes": GIB + 283_115_520,
    "guestTouchedBytes": GIB,
    "vm": {"vcpus": 2, "guestMemoryBytes": GIB, "graphics": True, "vfio": False, "ioThreads": 1},
    "host": {
        "kernel": "6.1.0-18-amd64",
        "qemu": "9.0.2",
        "accelerator": "kvm",
        "node": "worker-3",
        "cpuModel": "Intel Xeon Gold 6338",
    },
    "measuredAt": "2026-11-20T10:31:00Z",
}


def record(**overrides: Any) -> dict[str, Any]:
    """The base record with top-level fields replaced (``vm``/``host`` dicts are merged)."""
    result = copy.deepcopy(_BASE)
    for key, value in overrides.items():
        if key in ("vm", "host") and isinstance(value, dict):
            result[key].update(value)
        else:
            result[key] = value
    return result


def sample(index: int, run: str = "run-1", **overrides: Any) -> dict[str, Any]:
    """Record number ``index`` of ``run``: its shape and figures vary with the index."""
    vcpus = 1 + index % 8
    guest = (1 + index % 16) * GIB
    overhead = 200 * MIB + vcpus * 8 * MIB + index % 1000 * 4096
    touched = guest - (index % 7) * MIB
    fields: dict[str, Any] = {
        "runId": run,
        "sampleId": f"sample-{index}",
        "scope": ("qemu", "pod", "node")[index % 3],
        "overheadBytes": overhead,
        "rawBytes": touched + overhead,
        "guestTouchedBytes": touched,
        "vm": {
            "vcpus": vcpus,
            "guestMemoryBytes": guest,
            "graphics": index % 2 == 0,
            "vfio": index % 5 == 0,
            "ioThreads": index % 3,
            "execProbes": index % 3,
            "touchedShare": round(touched / guest, 6),
        },
        "measuredAt": f"2026-11-{1 + index % 20:02d}T{index % 24:02d}:{index % 60:02d}:00Z",
        "raw": {"rss": touched + overhead - 4096, "pageTables": 4096 * (1 + index % 100)},
    }
    fields.update(overrides)
    return record(**fields)


def qemu_records(
    count: int, run: str = "bench-1", seed: int = 7, node: Callable[[int], str] | None = None
) -> list[dict[str, Any]]:
    """kvm/amd64 qemu-scope records from a known formula: 38 MiB + 0.07 MiB/vCPU + 2.1 MiB/GiB
    (+2.5 MiB with graphics), plus up to 0.3 MiB of noise; ``node(index)`` names each record's node."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        vcpus = rng.choice([1, 2, 4, 8, 16])
        guest = rng.choice([1, 2, 4, 8]) * GIB
        graphics = rng.random() < 0.5
        overhead = int(
            38 * MIB + 0.07 * MIB * vcpus + 2.1 * MIB * guest / GIB + (2.5 * MIB if graphics else 0)
        )
        overhead += rng.randrange(0, int(0.3 * MIB))
        touched = guest - 4 * MIB
        records.append(
            record(
                runId=run,
                sampleId=f"s-{index}",
                scope="qemu",
                overheadBytes=overhead,
                rawBytes=touched + overhead,
                guestTouchedBytes=touched,
                vm={"vcpus": vcpus, "guestMemoryBytes": guest, "graphics": graphics, "ioThreads": 0},
                host={"node": node(index)} if node is not None else {},
            )
        )
    return records


_DAEMON_BYTES = {"virtqemud": 7 * MIB, "virtlogd": int(2.4 * MIB)}


def libvirt_record(
    scope: str = "qemu", index: int = 0, run: str = "libvirt-1", **overrides: Any
) -> dict[str, Any]:
    """A record of the libvirt path (``launcher: libvirt``): a domain's QEMU (scope ``qemu``) or a
    daemon (``virtqemud``, ``virtlogd``: no guest RAM), one domain under the daemon."""
    vcpus = 1 + index // 4 % 4
    guest = (1 + index % 4) * GIB
    libvirt: dict[str, Any] = {
        "daemon": "virtqemud",
        "build": "debian-source-build",
        "mode": "session",
        "domains": 1,
        "domainXmlSha256": f"{index % 16:x}" * 64,
    }
    if scope == "qemu":
        touched = guest - 4 * MIB
        overhead = 19 * MIB + vcpus * MIB // 3 + (index % 4) * 5 * MIB + index % 7 * 4096
        libvirt["domainIndex"] = 0
    else:
        touched = 0
        overhead = _DAEMON_BYTES[scope] + index % 5 * 4096
        libvirt["threads"] = 18 if scope == "virtqemud" else 2
    fields: dict[str, Any] = {
        "runId": run,
        "sampleId": f"point-{index}-{scope}",
        "scope": scope,
        "launcher": "libvirt",
        "overheadBytes": overhead,
        "rawBytes": touched + overhead,
        "guestTouchedBytes": touched,
        "vm": {"vcpus": vcpus, "guestMemoryBytes": guest, "graphics": False, "ioThreads": 0},
        "host": {"libvirt": "9.0.0 (Debian 9.0.0-4+deb12u2)", "qemu": "7.2.22", "cpuModel": "AMD EPYC"},
        "libvirt": libvirt,
        "raw": {"rss": overhead + touched + 20 * MIB, "cgroupAnon": overhead},
    }
    fields.update(overrides)
    return record(**fields)
