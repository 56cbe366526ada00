"""Tracking mirrors behind one protocol, and the outage state of a command's mirrors.

A mirror makes a tracking service reflect a run directory (the local truth): MLflow
(`scaling.run.mirror`) and Weights & Biases (`scaling.run.wandb_mirror`) both answer
`needs_push(run_dir)` (is it behind? from files alone) and `push(run_dir, final=...)`
(True: up to date; None: nothing to mirror there; False: failed, warned, still pending).
`Mirrors` holds the mirrors of one command or one run and which of them are down: after
a failed push a mirror is skipped for the rest of the command (each try against a hung
server costs a time-out), except by a `final` push, which tries once more. A run
directory a mirror skipped or failed stays pending there, for the next push or
`scaling sync`. A run directory that cannot be read (BadRunDir: a garbled spec.json) is
that run's problem: kept in `broken` with why, for the command to name, and the mirror
stays up for every other run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from scaling.errors import BadRunDir
from scaling.run import mirror, wandb_mirror
from scaling.run.tracking import redact

MLFLOW, WANDB = "MLflow", "W&B"


class Mirror(Protocol):
    name: str
    where: str  # for messages: the store's URI, or the service

    def needs_push(self, run_dir: Path) -> bool: ...

    def push(self, run_dir: Path, *, final: bool = False) -> bool | None: ...


class MLflowMirror:
    """One MLflow store and experiment, connected once for all the pushes of a command."""

    name = MLFLOW

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.where = redact(uri)
        self._target = mirror.Target(uri, experiment)

    def needs_push(self, run_dir: Path) -> bool:
        return mirror.needs_push(run_dir, self.uri, self.experiment)

    def push(self, run_dir: Path, *, final: bool = False) -> bool | None:
        pushed = mirror.push_to(Path(run_dir), self._target)
        return False if pushed is None else (True if pushed else None)


class WandbMirror:
    """W&B, for the run directories whose sweep asks for it (their wandb.json)."""

    name = WANDB
    where = "W&B"

    def needs_push(self, run_dir: Path) -> bool:
        return wandb_mirror.needs_push(run_dir)

    def push(self, run_dir: Path, *, final: bool = False) -> bool | None:
        return wandb_mirror.push(run_dir, final=final)


class Mirrors:
    """The mirrors of one command (or one run) and which of them are down."""

    def __init__(self, mirrors: tuple[Mirror, ...] = ()) -> None:
        self.mirrors = mirrors
        self.down: set[str] = set()
        self.broken: dict[Path, str] = {}  # run directories that cannot be read, and why

    @classmethod
    def to(cls, tracking: tuple[str, str] | None) -> Mirrors:
        """MLflow at (uri, experiment) and W&B where a run asks for it; none without
        tracking (the process that pushes for this one has them)."""
        if tracking is None:
            return cls()
        return cls((MLflowMirror(*tracking), WandbMirror()))

    @property
    def outage(self) -> bool:
        return bool(self.down)

    def mark_down(self, name: str) -> None:
        self.down.add(name)

    def where_down(self) -> str:
        return ", ".join(m.where for m in self.mirrors if m.name in self.down)

    def needs_push(self, run_dir: Path) -> bool:
        return any(m.needs_push(run_dir) for m in self.mirrors)

    def push(self, run_dir: Path, *, final: bool = False) -> bool:
        """Push to every mirror that is up (every one when `final`); whether the run
        directory is now up to date in all of them."""
        current = True
        self.broken.pop(Path(run_dir), None)
        for m in self.mirrors:
            if m.name in self.down and not final:
                current = current and not m.needs_push(run_dir)
                continue
            try:
                pushed = m.push(run_dir, final=final)
            except BadRunDir as exc:  # this run's files, not the mirror: it stays up
                self.broken[Path(run_dir)] = str(exc)
                current = False
                continue
            if pushed is False:
                self.down.add(m.name)
                current = False
            else:
                self.down.discard(m.name)
        return current
