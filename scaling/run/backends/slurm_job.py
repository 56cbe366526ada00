"""What every task of a run's Slurm job executes: `TrainCall`, a submitit Checkpointable.

The call holds only where the run lives and how to train it; the run directory holds
the state. On submitit's preemption or time-out signal (USR2) the trainer checkpoints
after its current step and submitit's own handler requeues the job (`checkpoint()`
resubmits the same call); SIGTERM alone (`scancel`) checkpoints and ends the job, which
stays resumable. See `scaling.run.backends.slurm` for the backend that submits it.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from scaling.rundir import LOG, SPEC

USR_SIGNAL_GRACE_S = 5.0  # after SIGTERM, how long to wait for a preemption's USR2


class TrainCall(Checkpointable):
    """What every task of a run's Slurm job executes: `scaling train` for that run.

    Holds only where the run lives and how to train it (picklable, a few hundred bytes);
    the run directory holds the state, so `checkpoint()` resubmits the same call.
    """

    def __init__(
        self, run_dir: str, tracking: tuple[str, str] | None, device: str, threads: int | None
    ) -> None:
        self.run_dir = run_dir
        self.tracking = tracking
        self.device = device
        self.threads = threads

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Requeue protocol: the trainer has checkpointed; the run resumes from it."""
        return DelayedSubmission(TrainCall(self.run_dir, self.tracking, self.device, self.threads))

    def __call__(self) -> dict[str, Any] | None:
        from scaling.errors import ExitCode
        from scaling.run.entry import train_entry
        from scaling.run.pusher import STOP_PUSH_S
        from scaling.run.tracked import push_within
        from scaling.train import distributed

        run_dir = Path(self.run_dir)
        rank = distributed.detect_env().rank
        if rank == 0:
            _link_log(run_dir)
        usr_sig = submitit.JobEnvironment._usr_sig()
        preemption = _Preemption(signal.getsignal(usr_sig))
        previous = signal.signal(usr_sig, preemption.handle)
        try:  # every task: rank 0 alone takes the run's lock and mirrors to MLflow
            ending = train_entry(
                run_dir / SPEC, run_dir, self.tracking, device=self.device, threads=self.threads
            )
            if ending.code is ExitCode.PREEMPTED:
                print(ending.message, flush=True)
                # Requeue first (Slurm's signal lead time is for that), then a time-boxed
                # push: a slow tracking server must not turn a requeue into a TIMEOUT.
                try:
                    if rank == 0 and preemption.wait(USR_SIGNAL_GRACE_S):
                        preemption.requeue()  # submitit: checkpoint(), scontrol requeue, exit
                finally:
                    push_within(run_dir, self.tracking, STOP_PUSH_S)
            elif ending.code is ExitCode.ALREADY_RUNNING:
                print(ending.message, file=sys.stderr, flush=True)
            if ending.code is not ExitCode.OK:
                raise SystemExit(ending.code)
            return ending.result or None
        finally:
            signal.signal(usr_sig, previous)
            distributed.cleanup()


class _Preemption:
    """submitit's USR2 (preemption or time-out) turned into a stop at a step boundary.

    In the training loop the trainer's SIGTERM/SIGUSR1 handler (scaling.train.signals.StopFlag)
    is asked to stop: it checkpoints after the current step and raises Preempted, then
    `requeue()` hands over to submitit's handler. Outside the loop (loading data,
    evaluating) there is no step to finish: submitit's handler runs at once.
    """

    def __init__(self, submitit_handler: Any) -> None:
        self.requested = False
        self._submitit = submitit_handler if callable(submitit_handler) else None

    def handle(self, signum: int, frame: Any) -> None:
        from scaling.train.signals import StopFlag

        self.requested = True
        stop = signal.getsignal(signal.SIGUSR1)
        if callable(stop) and isinstance(getattr(stop, "__self__", None), StopFlag):
            stop(signum, frame)
        elif self._submitit is not None:
            self._submitit(signum, frame)

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.requested and self._submitit is not None

    def requeue(self) -> None:
        handler: Callable[[int, Any], None] | None = self._submitit
        if handler is not None:
            handler(submitit.JobEnvironment._usr_sig(), None)


def _link_log(run_dir: Path) -> None:
    """run_dir/train.log -> this job's log, so the run directory shows it as locally."""
    try:
        target = submitit.JobEnvironment().paths.stdout
    except Exception:  # not under submitit (a test calling the object directly)
        return
    link = run_dir / LOG
    if link.exists() and not link.is_symlink():
        return  # a log of an earlier local run: keep it
    tmp = run_dir / f".{LOG}.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)
