"""A run trained under its lock and mirrored to tracking: what every backend executes.

`scaling.train` trains; this wraps it with what only the run stage knows about: the
run lock (two processes never train one run) and the MLflow mirror of the run directory.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from scaling.plan.layout import Layout
from scaling.run.locks import run_lock
from scaling.run.mirror import STATE as MLFLOW_STATE
from scaling.run.mirrors import Mirrors
from scaling.run.state import missing_evaluations
from scaling.run.wandb_mirror import forget_progress
from scaling.rundir import (
    CHECKPOINTS,
    FAILURE,
    METRICS,
    RESULT,
    SPEC,
    read_json,
    read_result,
    write_json,
)
from scaling.sweep.spec import RunSpec
from scaling.train import distributed as dist
from scaling.train.trainer import Preempted, run


def run_tracked(
    spec: RunSpec,
    run_dir: str | Path,
    layout: Layout | None,
    tracking: tuple[str, str] | None,
    *,
    force: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """`run` under the run's lock, mirrored to MLflow after each epoch and at the end.

    The lock makes a second process for the same run (a racing `submit`, a duplicate
    Slurm task) stop with AlreadyRunning instead of training twice. Tracking is a copy
    of the run directory: a push that fails is retried by the next one or by
    `scaling sync`, and never fails the run. A finished run (a duplicate Slurm task, a
    Ray retry, a second `scaling train`) returns its result unchanged; `force` trains it
    again from scratch.
    """
    run_dir = Path(run_dir)
    # Rank 0 alone holds the lock and mirrors to MLflow: the other ranks of the same
    # job are not a second process for the run.
    main = dist.detect_env().rank == 0
    # After one failed push a mirror is tried only once more, at the end: an unreachable
    # server must not cost seconds of retries after every epoch.
    mirrors = Mirrors.to(tracking if main else None)

    def mirror(_: dict[str, Any] | None = None, *, final: bool = False) -> None:
        mirrors.push(run_dir, final=final)

    with run_lock(run_dir) if main else contextlib.nullcontext():
        done = read_result(run_dir)  # every rank reads it: all skip, or none does
        if done is not None and not force and not missing_evaluations(spec, done):
            if main:
                print(
                    f"run {spec.run_id} already finished (top-1 {done['top1']:.4f}); "
                    "kept as it is (--force trains it again)",
                    flush=True,
                )
                mirror(final=True)
            return done
        if force and main:
            _start_over(run_dir)
        if main:  # an earlier attempt's failure: this attempt decides afresh
            (run_dir / FAILURE).unlink(missing_ok=True)
        try:
            result = run(spec, run_dir, layout, on_epoch=mirror, **options)
        except Preempted:
            # The scheduler's grace period is for the requeue, not for a push to a slow
            # server: the caller pushes within a time box after requeueing (push_within).
            raise
        except BaseException:
            mirror(final=True)
            raise
        mirror(final=True)
        return result


def push_within(run_dir: str | Path, tracking: tuple[str, str] | None, seconds: float) -> bool:
    """Mirror the run directory to MLflow, waiting at most `seconds`; whether it finished.

    For a stopping job (preempted, cancelled): the push goes on in a daemon thread and
    dies with the process when the time is up. Nothing is lost either way: the run
    directory has everything and the next push (the resumed run, `submit`, `status`,
    `sync`) uploads what is pending.
    """
    if tracking is None or dist.detect_env().rank != 0:
        return True
    mirrors = Mirrors.to(tracking)
    worker = threading.Thread(target=mirrors.push, args=(Path(run_dir),), daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


def _start_over(run_dir: Path) -> None:
    """--force: the run's outcome, metrics and checkpoints go; its spec stays, with a new
    start (forced_at: its MLflow runs started before are superseded by a fresh one)."""
    for name in (RESULT, FAILURE, METRICS, MLFLOW_STATE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    forget_progress(run_dir)
    spec = read_json(run_dir / SPEC) or {}
    spec.pop("started_at", None)
    write_json(run_dir / SPEC, {**spec, "forced_at": time.time()})
