"""The state of a run, read from its run directory (the local truth): one definition
for `submit`, `status` and the report.

finished: a finished run's result.json (`read_result`). running: a process holds the
run's lock (scaling.run.locks). failed: failure.json. resumable: checkpoints to resume
from. pending: none of these (never started, or queued with only spec.json). One
directory listing, then only the files that are there are read: fast on 100,000 runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.enums import StrEnum
from scaling.run.locks import LOCK, is_locked
from scaling.rundir import (
    CHECKPOINTS,
    FAILURE,
    METRICS,
    RESULT,
    metrics_gap,
    read_json,
    read_metrics,
    read_result,
)
from scaling.sweep.methods import METHODS
from scaling.train.convergence import Convergence, of_result


class State(StrEnum):
    FINISHED = "finished"
    RUNNING = "running"
    FAILED = "failed"
    RESUMABLE = "resumable"
    PENDING = "pending"


STATES = tuple(s.value for s in State)


@dataclass(frozen=True)
class RunState:
    state: State
    epoch: int = 0  # the newest epoch in metrics.jsonl
    last: dict[str, Any] | None = None  # the newest metrics line
    result: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    records: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # metrics.jsonl
    exists: bool = False  # the run directory holds anything at all

    @property
    def metrics_cut(self) -> list[int]:
        """A finished run's epochs that metrics.jsonl lacks (a kill mid-write, a full
        disk): `scaling submit` puts them back from the checkpoint; status says so."""
        if self.result is None:
            return []
        epochs = self.result.get("epochs")
        return metrics_gap(list(self.records), epochs) if isinstance(epochs, int) else []

    @property
    def convergence(self) -> Convergence | None:
        """A finished run's verdict on its training curve (scaling.train.convergence):
        the one result.json recorded, else judged from metrics.jsonl; None unfinished."""
        if self.result is None:
            return None
        method = METHODS.get(str(self.result.get("method")))
        plateaus = method.accuracy_plateaus if method else False
        return of_result(self.result, self.records, plateaus)


def run_state(run_dir: Path) -> RunState:
    try:
        names = set(os.listdir(run_dir))
    except OSError:
        return RunState(State.PENDING)
    records = list(read_metrics(run_dir / METRICS)) if METRICS in names else []
    last = records[-1] if records else None
    epoch = last["epoch"] if last else 0
    seen = {"epoch": epoch, "last": last, "records": tuple(records), "exists": bool(names)}
    result = read_result(run_dir) if RESULT in names else None
    if result is not None:
        return RunState(State.FINISHED, result=result, **seen)
    if LOCK in names and is_locked(run_dir):
        return RunState(State.RUNNING, **seen)
    failure = read_json(run_dir / FAILURE) if FAILURE in names else None
    if failure is not None:
        return RunState(State.FAILED, failure=failure, **seen)
    checkpoints = run_dir / CHECKPOINTS
    if CHECKPOINTS in names and checkpoints.is_dir() and any(checkpoints.iterdir()):
        return RunState(State.RESUMABLE, **seen)
    return RunState(State.PENDING, **seen)
