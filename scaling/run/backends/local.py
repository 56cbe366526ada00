"""The local backend: runs on this machine, in one persistent worker process per slot.

At most `max_parallel` at once (CPU threads split between them; one run per GPU set
on CUDA). Each slot's worker (scaling.run.backends.worker) imports torch once and
trains its runs one after another; a worker that dies is replaced by the slot's next
run. Multi-rank runs (gpus_per_run > 1), and every run when the profile says
`persistent_workers: false`, get a `scaling train` process of their own (through
torchrun for several ranks). Ctrl-C sends SIGTERM to every worker and child, whose
run checkpoints and stops: every run stays resumable.
This process, not the children, mirrors each run directory to MLflow as its epochs
land, from a background thread (scaling.run.pusher): the runs never import MLflow, and
a slow or hung store never delays starting or stopping them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ExitCode
from scaling.run.backends.base import Context, Job, Outcome
from scaling.run.backends.worker import Worker
from scaling.run.processes import children_env
from scaling.run.pusher import STOP_PUSH_S, Pusher, broken_notes, pending_note
from scaling.rundir import FAILURE, LOG, METRICS, RESULT, log_tail, read_json

GRACE_SECONDS = 120  # how long a SIGTERMed child may take to write its checkpoint
POLL_SECONDS = 0.25
WORKER_EXIT_S = 10.0  # how long an idle worker may take to exit once told to


@dataclass
class _Slot:
    """Where one run at a time trains: its GPUs (None on the CPU) and its worker."""

    gpus: str | None = None
    worker: Worker | None = None


@dataclass
class _Child:
    """A run in training: in its slot's worker, or in a process of its own (proc)."""

    job: Job
    slot: _Slot
    started: float
    proc: subprocess.Popen[bytes] | None = None
    task: Any = None
    pushed: int = -1  # epochs mirrored to MLflow so far

    def exit_code(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        assert self.slot.worker is not None
        return self.slot.worker.exit_code()

    def process(self) -> subprocess.Popen[bytes]:
        return self.proc or self.slot.worker.proc  # type: ignore[union-attr]


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self._slots: list[_Slot] | None = None  # set by prepare, used by the next submit

    def prepare(self, jobs: Sequence[Job], ctx: Context) -> None:
        """Start the workers that `submit(jobs)` will use now, so that their imports
        (seconds) overlap what the caller does before submitting (its MLflow lookup)."""
        self._slots = _slots(ctx)
        single = sum(1 for j in jobs if j.layout.gpus == 1) if ctx.profile.persistent_workers else 0
        for slot in self._slots[:single]:
            slot.worker = Worker(_env(ctx, slot))

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]:
        from scaling.run.backends.progress import LiveView

        slots, self._slots = self._slots or _slots(ctx), None
        free = list(slots)
        pending, running, outcomes = list(jobs), [], []
        pusher = ctx.pusher or Pusher(ctx.tracking_uri, ctx.experiment)
        with LiveView(len(jobs)) as view:
            try:
                while pending or running:
                    while pending and free:
                        running.append(self._start(pending.pop(0), ctx, free.pop(0), view))
                    _wait(running)
                    for child in list(running):
                        epochs = _epochs_done(child.job.run_dir)
                        view.update(child.task, epochs)
                        if epochs != child.pushed:
                            child.pushed = epochs
                            pusher.add(child.job.run_dir)
                        code = child.exit_code()
                        if code is None:
                            continue
                        running.remove(child)
                        pusher.add(child.job.run_dir)
                        free.append(child.slot)
                        outcome = _outcome(child.job, code)
                        outcomes.append(outcome)
                        view.finish(child.task, outcome)
            except KeyboardInterrupt:
                view.note("interrupted: asking running runs to checkpoint and stop ...")
                _terminate([c.process() for c in running], slots)
                for child in running:
                    pusher.add(child.job.run_dir)
                    outcomes.append(
                        Outcome(child.job.run_id, "preempted", "interrupted; resumable")
                    )
                _finish_pushes(pusher, ctx, view, STOP_PUSH_S)
                raise
            finally:
                _close_workers(slots, wait_s=WORKER_EXIT_S)
            _finish_pushes(pusher, ctx, view, None)
        return outcomes

    def _start(self, job: Job, ctx: Context, slot: _Slot, view: Any) -> _Child:
        cmd = ctx.train_command(job, tracking=False)  # the parent mirrors to MLflow
        env = _env(ctx, slot)
        child = _Child(job, slot, time.time())
        child.task = view.start(job)
        if job.layout.gpus > 1 or not ctx.profile.persistent_workers:
            child.proc = _own_process(job, ctx, cmd, env)
            return child
        request = {
            "spec": str(job.spec_path),
            "run_dir": str(job.run_dir),
            "log": str(job.run_dir / LOG),
            "device": ctx.device,
            "threads": ctx.threads_per_run if ctx.device == "cpu" else None,
        }
        for _ in range(2):  # a worker that died since its last run is replaced
            if slot.worker is None or not slot.worker.alive():
                slot.worker = Worker(env)
            _log_header(job, f"{' '.join(cmd)}  [in worker {slot.worker.pid}]")
            if slot.worker.send(request):
                return child
            slot.worker = None
        child.proc = _own_process(job, ctx, cmd, env)  # no worker stays up: train as before
        return child

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """Local processes have no scheduler: the run lock says which are alive."""
        from scaling.run.locks import is_locked

        return {j.run_id: "RUNNING" for j in jobs if is_locked(j.run_dir)}

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int:
        """SIGTERM the `scaling train` holding each run's lock on this machine; it
        checkpoints and exits (a holder on another host, or a PID reused since, is left)."""
        from scaling.run.locks import lock_holder

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
    for note in broken_notes(pusher.broken):
        view.note(note)


def _slots(ctx: Context) -> list[_Slot]:
    """One per concurrent run: a set of GPUs each on CUDA, max_parallel on the CPU."""
    gpus = _gpu_slots(ctx)
    if not gpus:
        return [_Slot() for _ in range(ctx.max_parallel)]
    return [_Slot(g) for g in gpus[: ctx.max_parallel]]


def _env(ctx: Context, slot: _Slot) -> dict[str, str]:
    env = ctx.train_env()
    if slot.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpus
    return env


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


def _wait(running: list[_Child]) -> None:
    """Until a worker answers (or dies), at most POLL_SECONDS: a run that ends in a
    worker is seen at once, the progress of the others every POLL_SECONDS."""
    workers = [c.slot.worker for c in running if c.proc is None and c.slot.worker]
    select.select(workers, [], [], POLL_SECONDS)


def _own_process(
    job: Job, ctx: Context, cmd: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`scaling train` in a process of its own (through torchrun for several ranks)."""
    if job.layout.gpus > 1:  # one process per rank, rendezvous on this machine
        nproc = f"--nproc-per-node={job.layout.gpus}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", nproc, "-m", *cmd[2:]]
        if ctx.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, ctx.threads_per_run // job.layout.gpus))
    _log_header(job, " ".join(cmd))
    with (job.run_dir / LOG).open("ab") as log:
        # A session of its own: Ctrl-C in the terminal reaches only `submit`, which then
        # sends SIGTERM so that every child checkpoints before it stops; should `submit`
        # die instead, the child gets SIGTERM from the kernel (children_env).
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=children_env(env),
            start_new_session=True,
        )


def _log_header(job: Job, what: str) -> None:
    with (job.run_dir / LOG).open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n".encode())


def _outcome(job: Job, code: int) -> Outcome:
    run_dir = job.run_dir
    if code == ExitCode.OK and (run_dir / RESULT).exists():
        result = read_json(run_dir / RESULT) or {}
        return Outcome(job.run_id, "finished", f"top-1 {result.get('top1', float('nan')):.4f}")
    if code == ExitCode.ALREADY_RUNNING:
        return Outcome(job.run_id, "already-running", "another process is training it")
    if code in (ExitCode.PREEMPTED, -signal.SIGTERM):
        return Outcome(job.run_id, "preempted", "stopped by a signal; resumable")
    failure = read_json(run_dir / FAILURE) or {}
    kind = failure.get("kind", "error")
    tail = " | ".join(log_tail(run_dir / LOG, 3))
    return Outcome(job.run_id, "failed", f"{kind} (exit {code}): {tail}")


def _terminate(procs: list[subprocess.Popen[bytes]], slots: list[_Slot]) -> None:
    """SIGTERM every training process (its run checkpoints), end the idle workers, and
    wait for all of them (SIGKILL after GRACE_SECONDS)."""
    _close_workers(slots)
    procs = procs + [s.worker.proc for s in slots if s.worker and s.worker.proc not in procs]
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


def _close_workers(slots: list[_Slot], wait_s: float = 0.0) -> None:
    """No more runs for the workers: each ends after its current run (at once when
    idle); wait up to `wait_s` for them to exit."""
    workers = [s.worker for s in slots if s.worker is not None]
    for worker in workers:
        worker.close()
    deadline = time.monotonic() + wait_s
    for worker in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
