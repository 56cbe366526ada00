"""The state of a run, read from its run directory (the local truth).

finished: result.json exists. running: a process holds the run's lock. failed:
failure.json exists (kind, message). resumable: checkpoints exist. pending: nothing.
A training process holds an exclusive lock on `<run_dir>/.lock` for its whole life,
so two `submit` commands (or a resubmitted Slurm job) never train the same run twice.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.rundir import CHECKPOINTS, FAILURE, LOG, METRICS, read_json, read_jsonl, read_result

STATES = ("finished", "running", "failed", "resumable", "pending")
LOCK = ".lock"


class AlreadyRunning(ScalingError):
    """Another process is training this run."""


#: how long a trainer retries the lock: a status probe (`is_locked`) holds it for an
#: instant, and must never make the run's own trainer give up
LOCK_WAIT_S = 3.0


@contextmanager
def run_lock(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the run's exclusive lock (released when the process dies, even by kill -9)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_within(fd, wait_s):
            raise AlreadyRunning(f"{run_dir}: another process is training this run")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def flock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `seconds`; False if held."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def is_locked(run_dir: Path) -> bool:
    path = run_dir / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunState:
    state: str
    epoch: int = 0
    last: dict[str, Any] | None = None  # the newest metrics line
    result: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None

    def log_tail(self, run_dir: Path, lines: int = 5) -> list[str]:
        path = run_dir / LOG
        if not path.exists():
            return []
        return path.read_text(errors="replace").splitlines()[-lines:]


def run_state(run_dir: Path) -> RunState:
    records = list(read_jsonl(run_dir / METRICS))
    last = records[-1] if records else None
    epoch = last.get("epoch") if last else 0
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    result = read_result(run_dir)
    if result is not None:
        return RunState("finished", epoch, last, result=result)
    if is_locked(run_dir):
        return RunState("running", epoch, last)
    failure = read_json(run_dir / FAILURE)
    if failure is not None:
        return RunState("failed", epoch, last, failure=failure)
    if (run_dir / CHECKPOINTS).is_dir() and any((run_dir / CHECKPOINTS).iterdir()):
        return RunState("resumable", epoch, last)
    return RunState("pending", epoch, last)
