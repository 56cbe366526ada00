"""The one protocol every backend implements, and what it is handed.

`submit(jobs)` launches runs (the local backend blocks until they end; Slurm and Ray
return once the scheduler has them), `status(jobs)` reports the scheduler's view of
each, `cancel(jobs)` stops them, leaving every run resumable. Deciding *what* to run
(finished runs skipped, unfinished resumed) happens before, in scaling.run.submission,
identically for every backend.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scaling.plan.layout import Layout
from scaling.plan.planner import PlannedRun
from scaling.rundir import SPEC, run_dir_of
from scaling.sweep.cluster import ClusterProfile
from scaling.sweep.spec import RunSpec


@dataclass(frozen=True)
class Job:
    """One run to train: its spec, layout and run directory (spec.json already written)."""

    spec: RunSpec
    layout: Layout
    run_dir: Path
    epochs: int

    @classmethod
    def of(cls, planned: PlannedRun, run_dir: Path) -> Job:
        """The job of a planned run (a run without a layout, infeasible here, is laid
        out as one process: status and cancel do not depend on it)."""
        spec = planned.spec
        layout = planned.layout or Layout.single(int(spec.config["batch_size"]))
        return cls(spec, layout, run_dir, int(spec.config["epochs"]))

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def spec_path(self) -> Path:
        return self.run_dir / SPEC


@dataclass(frozen=True)
class Context:
    """Where and how jobs run: the profile plus the resolved tracking target."""

    profile: ClusterProfile
    sweep: str
    workdir: Path
    tracking_uri: str
    experiment: str
    device: str  # cpu | cuda (resolved from the profile)
    threads_per_run: int
    max_parallel: int
    extra_env: dict[str, str] = field(default_factory=dict)
    # The command's background mirror (scaling.run.pusher.Pusher), shared with a backend
    # that pushes from this process; None: the backend makes its own.
    pusher: Any = field(default=None, compare=False, repr=False)

    def run_dir(self, run_id: str) -> Path:
        return run_dir_of(self.workdir, self.sweep, run_id)

    def job(self, planned: PlannedRun) -> Job:
        return Job.of(planned, self.run_dir(planned.spec.run_id))

    def train_command(self, job: Job, *, tracking: bool = True) -> list[str]:
        """The command every backend runs for a job (one process; a rank under srun).

        tracking=False leaves MLflow to the caller (the local backend pushes from the
        parent, which keeps MLflow's import and connections out of every run).
        """
        cmd = [
            sys.executable,
            "-m",
            "scaling",
            "train",
            str(job.spec_path),
            "--run-dir",
            str(job.run_dir),
            "--device",
            self.device,
        ]
        if tracking:
            cmd += ["--tracking-uri", self.tracking_uri, "--experiment", self.experiment]
        if self.device == "cpu":
            cmd += ["--threads", str(self.threads_per_run)]
        return cmd

    def train_env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["PYTHONUNBUFFERED"] = "1"
        if self.device == "cpu":
            env["OMP_NUM_THREADS"] = str(self.threads_per_run)
        return env


@dataclass(frozen=True)
class Outcome:
    """How a job ended from the backend's point of view (state: finished, failed,
    preempted, already-running, cancelled, submitted)."""

    run_id: str
    state: str
    detail: str = ""


class Backend(Protocol):
    name: str

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]: ...

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]: ...

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int: ...


_BACKENDS = {
    "local": "scaling.run.backends.local:LocalBackend",
    "slurm": "scaling.run.backends.slurm:SlurmBackend",
    "ray": "scaling.run.backends.ray:RayBackend",
}


def get_backend(name: str) -> Backend:
    """The backend registered as `name` (imported lazily: submitit and Ray are heavy)."""
    try:
        module, cls = _BACKENDS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; registered: {', '.join(_BACKENDS)}") from None
    backend: Backend = getattr(importlib.import_module(module), cls)()
    return backend
