"""File locks: one general lock, and the run lock that names its holder.

`file_lock(path, timeout)` is an exclusive `flock` held for a `with` block, waited for
at most `timeout` seconds: it serialises writers of one file (a run directory's MLflow
or W&B mirror, slurm.json, a new SQLite store's schema, a sweep's report upload).
`run_lock(run_dir)` is held by the process training a run for its whole life, so two
`submit` commands (or a resubmitted Slurm job) never train one run twice; its file
names the holder ("<pid> <host> <process start>") so that `cancel` signals that process
only (`lock_holder`), never a recycled PID or one on another machine. Every lock is
released when its process dies, even by kill -9.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scaling.errors import ScalingError

LOCK = ".lock"  # <run_dir>/.lock: the run lock
#: how long a trainer retries the run lock: a status probe (`is_locked`) holds it for an
#: instant, and must never make the run's own trainer give up
LOCK_WAIT_S = 3.0
#: flock errors that mean the filesystem has no working locks (Lustre without `flock`,
#: some NFS set-ups)
NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


class AlreadyRunning(ScalingError):
    """Another process is training this run."""


def flock_within(fd: int, seconds: float, path: Path | str = "") -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `seconds`; False if held.

    A filesystem without working flock is a ScalingError that says so: without it two
    processes could train one run."""
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
                    f"{path}: the filesystem does not support file locks "
                    f"({os.strerror(exc.errno)}); mount it with the `flock` option (Lustre: "
                    "-o flock; NFS: a lock manager) or put the workdir on a filesystem that "
                    "has them"
                ) from None
            raise


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing), waited for at most `timeout`
    seconds (then TimeoutError)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_within(fd, timeout, path):
            raise TimeoutError(f"{path} stayed locked for {timeout:.0f} s")
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def run_lock(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the run's exclusive lock, recording its holder; AlreadyRunning when another
    process holds it."""
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


def is_locked(run_dir: Path) -> bool:
    """Whether a process holds the run's lock now."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if not flock_within(fd, 0.0, path):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def holder_text(run_dir: Path) -> str:
    """Who holds the run's lock, for messages: "pid 123 on host-a" (what the lock file
    records), or "another process" when it records nothing readable."""
    try:
        pid, host = ((run_dir / LOCK).read_text().split() + ["", ""])[:2]
    except OSError:
        return "another process"
    return f"pid {pid} on {host}" if pid.isdigit() and host else "another process"


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
