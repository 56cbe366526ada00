"""Mirroring run directories to tracking from a background thread.

The local scheduler, `submit` and `status` hand run directories to a `Pusher` and go
on: a tracking server that is slow or hangs never holds up starting runs or showing
them. One thread pushes them in order (each directory once however often it is
added while waiting) to the command's mirrors (scaling.run.mirrors: MLflow, and W&B
where a sweep asks). After a push to a mirror fails the outage is remembered for the
rest of the command: later pushes to it are not attempted (each would cost a time-out)
and the run directories stay pending, for `scaling sync` or the next `submit`/`status`
to upload.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from pathlib import Path

from scaling.run.locks import is_locked
from scaling.run.mirrors import MLFLOW, Mirrors

#: how long a stopping job or an interrupted command may spend mirroring to MLflow
STOP_PUSH_S = 10.0


def pending_note(count: int, where: str) -> str:
    return (
        f"{count} runs not yet in MLflow ({where} did not answer); their run directories "
        "keep everything: `scaling sync` (or the next submit or status) uploads them"
    )


def broken_notes(broken: dict[Path, str]) -> list[str]:
    """One line per run directory that could not be mirrored for a reason of its own."""
    return [
        f"run directory {run_dir} cannot be mirrored: {why}; fix or remove its spec.json "
        "(the other runs were mirrored)"
        for run_dir, why in sorted(broken.items())
    ]


class Pusher:
    """One background thread that makes MLflow (and W&B) reflect run directories."""

    def __init__(self, uri: str, experiment: str, *, outage: bool = False) -> None:
        self.uri, self.experiment = uri, experiment
        self.mirrors = Mirrors.to((uri, experiment))
        if outage:  # MLflow could not be read before: not waited for again
            self.mirrors.mark_down(MLFLOW)
        self.pending: set[Path] = set()  # not yet in MLflow when the command ends
        self._queued: set[Path] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Path | threading.Event] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="scaling-pusher", daemon=True)
        self._thread.start()

    @property
    def outage(self) -> bool:
        """Whether a mirror was found down during this command."""
        return self.mirrors.outage

    def add(self, run_dir: Path) -> None:
        with self._lock:
            if run_dir in self._queued:
                return
            self._queued.add(run_dir)
        self._queue.put(run_dir)

    def add_stale(self, run_dirs: Iterable[Path]) -> int:
        """Queue every run directory whose mirror is behind it and that no process is
        training (its trainer or scheduler pushes a live one); how many were queued."""
        stale = [d for d in run_dirs if self.mirrors.needs_push(d) and not is_locked(d)]
        for run_dir in stale:
            self.add(run_dir)
        return len(stale)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every directory queued so far was pushed (or skipped); False on a
        time-out (the thread is a daemon: what it was doing dies with the process)."""
        reached = threading.Event()
        self._queue.put(reached)  # a marker, handled once everything before it is
        return reached.wait(timeout)

    def close(self, timeout: float | None = None) -> set[Path]:
        """Finish what is queued (waiting at most `timeout`); the directories left pending
        because a store did not answer (those that cannot be read are in `broken`)."""
        self.drain(timeout)
        with self._lock:
            return (self.pending | self._queued) - set(self.mirrors.broken)

    @property
    def broken(self) -> dict[Path, str]:
        """Run directories that cannot be read, and why (their own problem, not a store's)."""
        return dict(self.mirrors.broken)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            with self._lock:
                self._queued.discard(item)
            ok = self.mirrors.push(item)
            with self._lock:
                (self.pending.discard if ok else self.pending.add)(item)
