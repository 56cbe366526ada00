"""Processes the tool starts end with it: a server's whole tree, a worker whose parent died.

`stop_tree` ends a child and everything under it (the MLflow UI's uvicorn workers, job
runner and huey consumers): SIGTERM to its process group and to every descendant found
in /proc, then SIGKILL to whatever is left after a grace period, so nothing stays up
under PID 1 holding a port. `die_with_parent` arms the kernel's parent-death signal in a
child (Linux prctl PR_SET_PDEATHSIG, through ctypes): when the process that started it
dies, even by SIGKILL, the child gets SIGTERM, which a training run answers by
checkpointing and stopping, like any stop signal (scaling.train.signals).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time

PARENT_ENV = "SCALING_PARENT_PID"  # set by the starter; the child dies with that process
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 10.0


def children_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child that must end with this process (see die_with_parent)."""
    return {**env, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> bool:
    """In a child started with children_env: SIGTERM when the starter dies. Exits at once
    when the starter is already gone (it died before the signal was armed). Whether it
    was armed (False off Linux or without PARENT_ENV)."""
    parent = os.environ.pop(PARENT_ENV, None)  # not inherited by grandchildren
    if not parent or not parent.isdigit():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if not _alive(int(parent)):  # the parent died before prctl: nothing would signal us
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields follow the last ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM `proc` (started with start_new_session) with its group and descendants;
    SIGKILL what is left after `grace_s`; reap `proc`."""
    tree = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        tree += [p for p in descendants(proc.pid) if p not in tree]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
            if not any(_alive(p) for p in tree if p != proc.pid) and proc.poll() is not None:
                return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


def _alive(pid: int) -> bool:
    """A live process (a zombie, dead but not reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
