"""What Slurm knows about a run, and what it means for the run.

Each run directory's `slurm.json` holds every job id that trained it (a duplicate
submit, a requeue: newest last), written under a lock; `histories` asks sacct, fresh,
for the state of each; the job that speaks for a run is its newest live one, else its
newest (`current`). `scheduler_failure` turns a kill the trainer could not record (the
node's OUT_OF_MEMORY) into failure.json; `check_tracking` refuses a SQLite store that
nodes other than this machine would write.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths
from submitit.slurm import slurm as _slurm

from scaling.errors import SubmissionError
from scaling.rundir import log_tail, read_json, write_json

RECORD = "slurm.json"  # per run: the Slurm job ids that trained it, newest last
RECORD_LOCK = ".slurm.lock"
LOG_TAIL_LINES = 5
RECENT_S = 300  # a job sacct does not know yet, queued this recently, counts as pending
ACTIVE = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SUSPENDED",
        "CONFIGURING",
        "COMPLETING",
        "STAGE_OUT",
        "SIGNALING",
    }
)
FAILED_FOR_GOOD = frozenset(
    {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)


def scheduler_failure(state: str, job_id: str, exit_code: str) -> dict[str, Any] | None:
    """failure.json for a job the scheduler ended where the trainer could not record it,
    or None. OUT_OF_MEMORY (the node's memory limit killed it: resuming meets the same
    kill) fails the run; NODE_FAIL, BOOT_FAIL, PREEMPTED and TIMEOUT leave it resumable."""
    if state != "OUT_OF_MEMORY":
        return None
    return {
        "kind": "oom",
        "message": f"Slurm job {job_id} ended OUT_OF_MEMORY (exit {exit_code}): the host's "
        "memory limit killed it; raise slurm.mem_gb or lower the micro-batch, then "
        "`scaling submit --rerun-failed`",
        "step": None,
        "time": time.time(),
    }


def check_tracking(uri: str, partition: str | None) -> None:
    """SQLite is one file that one machine may write: refused when the partition's nodes
    are other machines (each job pushes from its node), with what to use instead."""
    from scaling.run.tracking import _sqlite_path

    db = _sqlite_path(uri)
    if db is None:
        return
    nodes = _partition_nodes(partition)
    here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}
    elsewhere = sorted(n for n in nodes if n not in here)
    if elsewhere:
        raise SubmissionError(
            f"tracking.uri is SQLite ({db}), which only one machine can write, and the Slurm "
            f"partition runs on other nodes ({', '.join(elsewhere[:3])}"
            f"{' ...' if len(elsewhere) > 3 else ''}): "
            f"start an MLflow server (mlflow server --backend-store-uri {uri} --host 0.0.0.0) "
            "and set tracking.uri: http://<this host>:5000 in the cluster profile"
        )


def _partition_nodes(partition: str | None) -> list[str]:
    cmd = ["sinfo", "-h", "-N", "-o", "%N", *(["-p", partition] if partition else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SubmissionError(f"cannot list the Slurm partition's nodes (sinfo): {exc}") from None
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


class _Watcher(_slurm.SlurmInfoWatcher):
    """submitit's sacct watcher, asking for the exit code too."""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is not None:
            command[command.index("-o") + 1] = "JobID,State,ExitCode,NodeList"
        return command


def histories(run_dirs: Sequence[Path]) -> dict[str, list[tuple[str, str, str]]]:
    """run_id -> [(job id, state, exit code)] of every job that trained it, oldest
    first, from one fresh sacct (a cached state is never trusted)."""
    ids = {d.name: job_ids(d) for d in run_dirs}
    ids = {run_id: jobs for run_id, jobs in ids.items() if jobs}
    if not ids:
        return {}
    watcher = _Watcher(delay_s=0)  # a new watcher: nothing cached, one sacct for all
    for job_id in {j for jobs in ids.values() for j in jobs}:
        watcher.register_job(job_id)
    watcher.update()
    out = {}
    for run_id, jobs in ids.items():
        out[run_id] = []
        for job_id in jobs:
            info = watcher.get_info(job_id, mode="cache")
            state = (info.get("State") or "UNKNOWN").split()[0]  # "CANCELLED by 0" -> CANCELLED
            out[run_id].append((job_id, state, info.get("ExitCode", "")))
    return out


def current(history: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """The job that speaks for a run: its newest live one, else its newest."""
    live = [h for h in history if h[1] in ACTIVE]
    return (live or history)[-1]


def record_of(run_dir: Path) -> dict[str, Any]:
    record = read_json(run_dir / RECORD)
    return record if isinstance(record, dict) else {}


def job_ids(run_dir: Path) -> list[str]:
    """Every job id slurm.json holds, oldest first (a malformed record holds none)."""
    record = record_of(run_dir)
    previous = record.get("previous")
    ids = [*(previous if isinstance(previous, list) else []), record.get("job_id")]
    return [str(j) for j in ids if isinstance(j, (str, int)) and not isinstance(j, bool)]


def record_job(run_dir: Path, job_id: str, folder: Path) -> None:
    """Add a job to slurm.json, under a lock: two submits never lose each other's job."""
    from scaling.run.locks import file_lock

    with file_lock(run_dir / RECORD_LOCK, 60.0):
        old = record_of(run_dir)
        previous = job_ids(run_dir)
        write_json(
            run_dir / RECORD,
            {
                **old,
                "job_id": job_id,
                "folder": str(folder),
                "submitted": time.time(),
                "previous": previous,
            },
        )


def just_submitted(run_dir: Path) -> bool:
    """Accounting reaches sacct a moment after sbatch: a job it does not know yet but
    that was queued within the last minutes counts as queued (no duplicate submission)."""
    submitted = record_of(run_dir).get("submitted", 0)
    return isinstance(submitted, (int, float)) and time.time() - submitted < RECENT_S


def job_log_tail(folder: Path, job_id: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last non-empty lines of task 0's log (stderr first when kept apart)."""
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    for path in (paths.stderr, paths.stdout):
        if kept := log_tail(path, lines):
            return kept
    return []
