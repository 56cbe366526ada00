"""The one-machine Slurm of cluster/slurm-local runs jobs and accounts for them truthfully.

These are the guarantees the Slurm backend relies on: a batch job's end state reaches
``sacct`` (COMPLETED, FAILED with its exit code, CANCELLED), and every task of a job
array runs with its own ``SLURM_ARRAY_TASK_ID`` and gets its own accounting row.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # registered by pytest_plugins in conftest.py
    from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm


def test_batch_job_runs_and_sacct_reports_completed(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    job = slurm_cluster.sbatch(
        f"--output={tmp_path}/job_%j.log", "--wrap", f"echo ran-$SLURM_JOB_ID > {out}"
    )
    rows = slurm_cluster.wait_final(job)
    assert rows == {job: ("COMPLETED", "0:0")}
    assert out.read_text().strip() == f"ran-{job}"


def test_failing_job_is_failed_with_its_exit_code(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.sbatch(f"--output={tmp_path}/job_%j.log", "--wrap", "exit 3")
    assert slurm_cluster.wait_final(job) == {job: ("FAILED", "3:0")}


def test_array_tasks_each_run_once_and_complete(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.sbatch(
        "--array=0-2",
        f"--output={tmp_path}/task_%A_%a.log",
        "--wrap",
        f"echo $SLURM_ARRAY_TASK_ID > {tmp_path}/task_$SLURM_ARRAY_TASK_ID.txt",
    )
    rows = slurm_cluster.wait_final(job, count=3)
    assert rows == {f"{job}_{i}": ("COMPLETED", "0:0") for i in range(3)}
    assert [(tmp_path / f"task_{i}.txt").read_text().strip() for i in range(3)] == ["0", "1", "2"]


def test_scancel_of_running_job_reports_cancelled(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    job = slurm_cluster.sbatch(
        f"--output={tmp_path}/job_%j.log", "--wrap", f"touch {started}; sleep 120"
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, f"job {job} never started"
        time.sleep(0.1)
    subprocess.run(["scancel", job], check=True, timeout=30)
    state, _ = slurm_cluster.wait_final(job)[job]
    assert state == "CANCELLED"
