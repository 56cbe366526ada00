"""The state of a run, read from its run directory (the local truth).

finished: result.json exists. running: a process holds the run's lock. failed:
failure.json exists (kind, message). resumable: checkpoints exist. pending: nothing.
A training process holds an exclusive lock on `<run_dir>/.lock` for its whole life,
so two `submit` commands (or a resubmitted Slurm job) never train the same run twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.rundir import (
    CHECKPOINTS,
    FAILURE,
    LOG,
    METRICS,
    read_json,
    read_metrics,
    read_result,
)

STATES = ("finished", "running", "failed", "resumable", "pending")
LOCK = ".lock"


class AlreadyRunning(ScalingError):
    """Another process is training this run."""


#: how long a trainer retries the lock: a status probe (`is_locked`) holds it for an
#: instant, and must never make the run's own trainer give up
LOCK_WAIT_S = 3.0


@contextmanager
def run_lock(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the run's exclusive lock (released when the process dies, even by kill -9).

    The lock file names its holder: "<pid> <host> <process start>", so that `cancel`
    signals that process only, never a recycled PID or one on another machine.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_within(fd, wait_s, path):
            raise AlreadyRunning(f"{run_dir}: another process is training this run")
        os.ftruncate(fd, 0)
        pid = os.getpid()
        os.write(fd, f"{pid} {socket.gethostname()} {process_start(pid)}\n".encode())
        yield
    finally:
        os.close(fd)


def flock_within(fd: int, seconds: float, path: Path | str = "") -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `seconds`; False if held.

    A filesystem without working flock (Lustre mounted without `flock`, some NFS set-ups)
    is a ScalingError that says so: without it two processes could train one run."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        except OSError as exc:
            if exc.errno in NO_FLOCK:
                raise ScalingError(
                    f"{path}: the filesystem does not support file locks ({os.strerror(exc.errno)}); "
                    "mount it with the `flock` option (Lustre: -o flock; NFS: a lock manager) "
                    "or put the workdir on a filesystem that has them"
                ) from None
            raise


NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def is_locked(run_dir: Path) -> bool:
    path = run_dir / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        if not flock_within(fd, 0.0, path):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, /proc), "" when unknown: with
    the PID it names one process, never a later one that reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22; the name may hold spaces


def lock_holder(run_dir: Path) -> int | None:
    """The PID of the `scaling train` (or local backend's `scaling worker`) holding the
    run's lock on this machine, or None: not locked, held on another host, or a PID now
    used by another process."""
    if not is_locked(run_dir):
        return None
    try:
        pid_text, host, start = ((run_dir / LOCK).read_text().split() + ["", ""])[:3]
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if host != socket.gethostname() or not start or process_start(pid) != start:
        return None
    command = b"train" in cmdline or b"worker" in cmdline
    ours = any(arg.endswith(b"scaling") for arg in cmdline) and command
    return pid if ours else None


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
    records = list(read_metrics(run_dir / METRICS))
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
