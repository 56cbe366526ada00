"""The small exception hierarchy every layer raises and the CLI formats.

`ScalingError` and its children carry messages written for the user: the CLI prints
them as one line and exits with code 2 (set SCALING_DEBUG=1 for the traceback).
"""

from __future__ import annotations

from enum import IntEnum


class ScalingError(Exception):
    """Base of every error the user can act on."""


class SpecError(ScalingError):
    """A sweep spec, cluster profile or run spec is malformed.

    The message names the file, the key path and what is allowed.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class BadRunDir(ScalingError):
    """A run directory whose own files cannot be read (a garbled spec.json): that run's
    problem, named with its path, never an outage of the store it is mirrored to."""


class SubmissionError(ScalingError):
    """A backend could not submit, query or cancel runs."""


class RunFailed(ScalingError):
    """A run stopped; `kind` is one of diverged, oom, timeout, error, or disk (its device
    was full: not the run's fault, so a plain resubmit retries it, see RETRIED_KINDS)."""

    KINDS = ("diverged", "oom", "timeout", "error", "disk")
    #: failures a plain `scaling submit` retries (resuming): the cause is outside the run
    RETRIED_KINDS = ("disk",)

    def __init__(self, message: str, *, kind: str = "error", step: int | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown RunFailed kind {kind!r}; allowed: {', '.join(self.KINDS)}")
        self.kind = kind
        self.step = step
        super().__init__(message)


class ExitCode(IntEnum):
    """How a `scaling` process ends: every training entry (`scaling train`, the local
    backend's worker, the Slurm task, the Ray trial) and every command uses these."""

    OK = 0
    FAILED = 1  # an unexpected error; its traceback is in the log
    BAD_INPUT = 2  # a ScalingError: one line saying what to change
    ALREADY_RUNNING = 75  # EX_TEMPFAIL: another process holds the run's lock
    INTERRUPTED = 130  # Ctrl-C: every run checkpointed and stays resumable
    PREEMPTED = 143  # 128 + SIGTERM: stopped by a signal after a checkpoint; resumable
