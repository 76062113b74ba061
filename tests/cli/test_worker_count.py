"""The worker count follows the CPUs the process may use: its affinity, lowered by a cgroup CPU
quota, v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overhead_service.gunicorn_conf import cpu_count

AFFINITY = len(os.sched_getaffinity(0))


def _v1(root: Path, quota: str, period: str = "100000", directory: str = "cpu") -> Path:
    (root / directory).mkdir(parents=True)
    (root / directory / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / directory / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(("quota", "expected"), [("50000", 1), ("100000", 1), ("150000", 2)])
def test_cgroup_v1_quota_lowers_the_count(tmp_path: Path, quota: str, expected: int) -> None:
    assert cpu_count(_v1(tmp_path, quota)) == min(AFFINITY, expected)


def test_cgroup_v1_under_the_combined_controller_directory(tmp_path: Path) -> None:
    assert cpu_count(_v1(tmp_path, "100000", directory="cpu,cpuacct")) == 1


def test_cgroup_v1_without_a_quota(tmp_path: Path) -> None:
    assert cpu_count(_v1(tmp_path, "-1")) == AFFINITY


@pytest.mark.parametrize(
    ("line", "expected"), [("max 100000", AFFINITY), ("100000 100000", 1), ("250000 100000", 3)]
)
def test_cgroup_v2_quota(tmp_path: Path, line: str, expected: int) -> None:
    (tmp_path / "cpu.max").write_text(line + "\n")
    assert cpu_count(tmp_path) == min(AFFINITY, expected)


def test_no_cgroup_files_means_the_affinity(tmp_path: Path) -> None:
    assert cpu_count(tmp_path) == AFFINITY
