"""Shared by the tests: where things are, and which 422 problems a schema cannot foresee.

The tokens, the gunicorn runner, the throwaway PostgreSQL and the synthetic records are shared
with the benchmarks and live in :mod:`benchmarks.harness`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.pg import PostgresCluster
from overhead_service.errors import PROBLEM_BASE

__all__ = [
    "DATA",
    "ROOT",
    "SEMANTIC_PROBLEMS",
    "SEMANTIC_RECORD_MESSAGES",
    "empty_database",
    "semantic_problem",
]

ROOT = Path(__file__).resolve().parents[2]
"""The checkout."""
DATA = ROOT / "tests" / "data"
"""Test data: KubeVirt's golden vectors, recorded cluster answers."""


def empty_database(request: pytest.FixtureRequest, backend: str, sqlite_file: Path) -> Iterator[str]:
    """For a fixture: the URL of a new, empty database on ``backend`` (a SQLite file at
    ``sqlite_file``, or a database in the session's throwaway PostgreSQL, dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{sqlite_file}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)


# --- schemathesis (tests/web/test_openapi.py in-process; tests/integration/test_openapi_live.py live) ---

# Valid by the schema but refused by rules a schema cannot state: the table must exist, the ratio
# must be a finite number Go parses, and the overhead must fit in 64-bit bytes. Measurement records
# must be consistent (overheadBytes = rawBytes - guestTouchedBytes, touched <= guest RAM + 64 MiB,
# the accelerator runs the hypervisor, launcher/libvirt/scope agree) and measured at a plausible time.
# 422s a schema cannot foresee: which table ids exist, which ratio strings Go parses, whether the
# selected measurements suffice for a fit.
SEMANTIC_PROBLEMS = {
    PROBLEM_BASE + "unknown-table",
    PROBLEM_BASE + "invalid-ratio",
    PROBLEM_BASE + "not-enough-data",
    PROBLEM_BASE + "not-in-table",
    PROBLEM_BASE + "rejected-by-kubevirt",  # negative requests/limits KubeVirt's admission refuses
}
SEMANTIC_RECORD_MESSAGES = (
    "must equal rawBytes - guestTouchedBytes",
    "must be at most vm.guestMemoryBytes + 64 MiB",
    "does not run hypervisor",
    "is in the future",
    "is before 2000-01-01",
    # who started QEMU: launcher, the libvirt object and the scope agree
    "must be libvirt for scope",
    "a daemon holds no guest RAM",
    "is for qemu and daemon records",
    "is required when launcher is libvirt",
    "is only for records with launcher libvirt",
    "is for the daemon scopes only",
    "is for scope qemu only",
    "is required for scope",
    "must be below libvirt.domains",
)


def semantic_problem(problem: dict[str, Any]) -> bool:
    """Whether a 422 problem document rejects schema-valid input for one of the reasons above."""
    if problem["type"] == PROBLEM_BASE + "invalid-records":
        return all(
            any(message in error["message"] for message in SEMANTIC_RECORD_MESSAGES)
            for error in problem["errors"]
        )
    return problem["type"] in SEMANTIC_PROBLEMS or all(
        "overflow 64-bit" in error["message"] for error in problem["errors"]
    )
