"""The local backend: each run in its own `scaling train` subprocess on this machine.

At most `max_parallel` at once (CPU threads split between them; one run per GPU set
on CUDA). Multi-rank runs (gpus_per_run > 1) start through torchrun. Ctrl-C sends
SIGTERM to every child, which checkpoints and exits: every run stays resumable.
This process, not the children, mirrors each run directory to MLflow as its epochs
land, from a background thread (scaling.run.pusher): the runs never import MLflow, and
a slow or hung store never delays starting or stopping them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from scaling.run.backends.base import Context, Job, Outcome
from scaling.run.pusher import STOP_PUSH_S, Pusher, pending_note
from scaling.rundir import FAILURE, LOG, METRICS, RESULT, read_json

EXIT_PREEMPTED, EXIT_ALREADY_RUNNING = 143, 75
GRACE_SECONDS = 120  # how long a SIGTERMed child may take to write its checkpoint
POLL_SECONDS = 0.25


@dataclass
class _Child:
    job: Job
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    gpus: str | None = None
    task: Any = None
    pushed: int = -1  # epochs mirrored to MLflow so far


class LocalBackend:
    name = "local"

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]:
        from scaling.run.backends.progress import LiveView

        slots = _gpu_slots(ctx)
        parallel = min(ctx.max_parallel, len(slots)) if slots else ctx.max_parallel
        pending, running, outcomes = list(jobs), [], []
        free = list(slots)
        pusher = ctx.pusher or Pusher(ctx.tracking_uri, ctx.experiment)
        with LiveView(len(jobs)) as view:
            try:
                while pending or running:
                    while pending and len(running) < parallel:
                        job = pending.pop(0)
                        gpus = free.pop(0) if slots else None
                        running.append(self._start(job, ctx, gpus, view))
                    time.sleep(POLL_SECONDS)
                    for child in list(running):
                        epochs = _epochs_done(child.job.run_dir)
                        view.update(child.task, epochs)
                        if epochs != child.pushed:
                            child.pushed = epochs
                            pusher.add(child.job.run_dir)
                        if child.proc.poll() is None:
                            continue
                        running.remove(child)
                        child.log.close()
                        pusher.add(child.job.run_dir)
                        if slots:
                            free.append(child.gpus)
                        outcome = _outcome(child)
                        outcomes.append(outcome)
                        view.finish(child.task, outcome)
            except KeyboardInterrupt:
                view.note("interrupted: asking running runs to checkpoint and stop ...")
                _terminate([c.proc for c in running])
                for child in running:
                    child.log.close()
                    pusher.add(child.job.run_dir)
                    outcomes.append(
                        Outcome(child.job.run_id, "preempted", "interrupted; resumable")
                    )
                _finish_pushes(pusher, ctx, view, STOP_PUSH_S)
                raise
            _finish_pushes(pusher, ctx, view, None)
        return outcomes

    def _start(self, job: Job, ctx: Context, gpus: str | None, view: Any) -> _Child:
        cmd = ctx.train_command(job, tracking=False)  # the parent mirrors to MLflow
        if job.layout.gpus > 1:  # one process per rank, rendezvous on this machine
            nproc = f"--nproc-per-node={job.layout.gpus}"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                nproc,
                "-m",
                *cmd[2:],
            ]
        env = ctx.train_env()
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        if job.layout.gpus > 1 and ctx.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, ctx.threads_per_run // job.layout.gpus))
        log = (job.run_dir / LOG).open("ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        # A session of its own: Ctrl-C in the terminal reaches only `submit`, which then
        # sends SIGTERM so that every child checkpoints before it stops.
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        child = _Child(job, proc, log, time.time(), gpus)
        child.task = view.start(job)
        return child

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """Local processes have no scheduler: the run lock says which are alive."""
        from scaling.run.state import is_locked

        return {j.run_id: "RUNNING" for j in jobs if is_locked(j.run_dir)}

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int:
        """SIGTERM the `scaling train` holding each run's lock on this machine; it
        checkpoints and exits (a holder on another host, or a PID reused since, is left)."""
        from scaling.run.state import lock_holder

        count = 0
        for job in jobs:
            pid = lock_holder(job.run_dir)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                count += 1
            except OSError:
                continue
        return count


def _finish_pushes(pusher: Pusher, ctx: Context, view: Any, timeout: float | None) -> None:
    """Wait for the last pushes (all of them, or `timeout` s when interrupted); say
    what is left pending. The caller's own pusher (ctx.pusher) is the caller's to close."""
    if ctx.pusher is not None:
        return
    left = pusher.close(timeout)
    if left:
        view.note(pending_note(len(left), ctx.tracking_uri))


def _gpu_slots(ctx: Context) -> list[str]:
    """CUDA_VISIBLE_DEVICES values, one per concurrent run (empty on CPU)."""
    if ctx.device != "cuda":
        return []
    import torch

    count = torch.cuda.device_count()
    per_run = ctx.profile.gpus_per_run
    return [
        ",".join(str(g) for g in range(i, i + per_run))
        for i in range(0, count - per_run + 1, per_run)
    ]


def _epochs_done(run_dir: Path) -> int:
    try:
        with (run_dir / METRICS).open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _outcome(child: _Child) -> Outcome:
    code = child.proc.returncode
    run_dir = child.job.run_dir
    if code == 0 and (run_dir / RESULT).exists():
        result = read_json(run_dir / RESULT) or {}
        return Outcome(
            child.job.run_id, "finished", f"top-1 {result.get('top1', float('nan')):.4f}"
        )
    if code == EXIT_ALREADY_RUNNING:
        return Outcome(child.job.run_id, "already-running", "another process is training it")
    if code in (EXIT_PREEMPTED, -signal.SIGTERM):
        return Outcome(child.job.run_id, "preempted", "stopped by a signal; resumable")
    failure = read_json(run_dir / FAILURE) or {}
    kind = failure.get("kind", "error")
    tail = " | ".join(_tail(run_dir / LOG, 3))
    return Outcome(child.job.run_id, "failed", f"{kind} (exit {code}): {tail}")


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        return []


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
