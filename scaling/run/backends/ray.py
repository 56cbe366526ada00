"""The Ray backend: one Ray Tune trial per run, on a local Ray or an existing cluster.

The Tuner's grid is the jobs scaling.run.submission chose (the trial's config is
{"run_id", "run_dir"}; the run spec is read from the run directory's spec.json, never
sampled). A trial trains in its actor with `scaling.run.tracked.run_tracked`, so the run lock,
MLflow mirroring, checkpoints and results are those of every other backend. A run with
layout.gpus > 1 trains through Ray Train's TorchTrainer instead: the trial is only its
driver, one Train worker per rank, and the training core's own distributed code runs on
the process group Ray Train set up (init_distributed keeps an existing group).

Resume: each trial reports every epoch's metrics to Tune with a pointer checkpoint (the
run directory and epoch); the training state itself is the run directory's checkpoint,
written every epoch, so a retried trial (FailureConfig(max_failures)) or a later
`submit` resumes where the run stopped. For the same reason an interrupted Tune
experiment is never restored: `Tuner.restore` would replay trials whose state is
already in the run directories, against the plan of the previous submit, while a new
experiment over what scaling.run.submission decides now costs the same and is always
current. Each submit is a new experiment under <workdir>/<sweep>/.ray_results.

Cancel: `scaling cancel` writes <storage>/cancel/<run_id>; the trial sees it and the run
checkpoints after its current step (signals do not reach Tune's training thread: see
scaling.run.backends.ray_trial, which holds everything that runs inside Ray). `status`
reads <storage>/driver.json, kept by a live `submit`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from scaling.errors import SubmissionError
from scaling.run.backends import ray_trial
from scaling.run.backends.base import Context, Job, Outcome
from scaling.run.backends.ray_connect import check_tracking, connect, scoped_env
from scaling.run.backends.ray_trial import Settings, cancel_file
from scaling.rundir import FAILURE, LOG, log_tail, read_json, write_json
from scaling.sweep.cluster import RayConfig

log = logging.getLogger(__name__)

STORAGE = ".ray_results"  # <workdir>/<sweep>/.ray_results: Tune's and Train's storage_path
DRIVER_STATE = "driver.json"  # written by a live submit: its pid and each trial's state
INTERRUPTED = "stopped with the experiment; resumable"
DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's console table off (verbose=0): the live view shows it
    # Each epoch's pointer checkpoint forces a snapshot of the experiment state (a few
    # KB); Tune warns about it as if it were a large checkpoint.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


class RayBackend:
    name = "ray"

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]:
        """Run every job as a Tune trial; blocks until all trials end."""
        from scaling.run.backends.progress import LiveView

        storage = storage_path(ctx)
        for job in jobs:
            cancel_file(storage, job.run_id).unlink(missing_ok=True)
        with connect(_config(ctx), ctx.workdir), LiveView(len(jobs)) as view:
            if _config(ctx).address == "local":  # a cluster may autoscale; this Ray never grows
                _check_fits(jobs, ctx)
            else:
                check_tracking(ctx.tracking_uri, _config(ctx).address)
            progress = _Progress(jobs, view, storage / DRIVER_STATE)
            try:
                with scoped_env(DRIVER_ENV):
                    results = _tuner(jobs, ctx, progress).fit()
            except (ConnectionError, ray.exceptions.RaySystemError) as exc:
                raise SubmissionError(
                    f"lost the Ray cluster at {_config(ctx).address} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); every run keeps its "
                    "checkpoints: `scaling submit` resumes them once the cluster is back"
                ) from None
            finally:
                (storage / DRIVER_STATE).unlink(missing_ok=True)
            by_id = {r.config["run_id"]: r for r in results if r.config}
            outcomes = [_outcome(job, by_id.get(job.run_id)) for job in jobs]
            if any(o.detail == INTERRUPTED for o in outcomes):
                # Ctrl-C: Tune stopped every trial (each run resumes from its last epoch).
                view.note(
                    f"interrupted: {sum(o.detail == INTERRUPTED for o in outcomes)} runs "
                    "stopped, resumable; `scaling submit` resumes them"
                )
                raise KeyboardInterrupt
        return outcomes

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """Trial states recorded by a live `submit` ({} when none is alive: the run
        directories say the rest)."""
        state = read_json(storage_path(ctx) / DRIVER_STATE)
        if not state or not _alive(state):
            return {}
        trials = state.get("trials", {})
        return {j.run_id: trials[j.run_id] for j in jobs if j.run_id in trials}

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int:
        """Ask each job's trial to checkpoint and stop (pending ones never start)."""
        from scaling.run.locks import is_locked

        storage = storage_path(ctx)
        live = self.status(jobs, ctx)
        count = 0
        for job in jobs:
            active = live.get(job.run_id) in ("PENDING", "RUNNING", "RETRYING")
            if active or is_locked(job.run_dir):
                path = cancel_file(storage, job.run_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{time.time()}\n")
                count += 1
        return count


def storage_path(ctx: Context) -> Path:
    return ctx.workdir / ctx.sweep / STORAGE


def _config(ctx: Context) -> RayConfig:
    return ctx.profile.ray or RayConfig()


def _alive(state: dict[str, Any]) -> bool:
    """A driver on this host is alive when its process is (the same pid and start time:
    a crashed driver's pid may be reused); one elsewhere is trusted."""
    from scaling.run.locks import process_start

    if state.get("host") != socket.gethostname():
        return True
    try:
        pid = int(state["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not state.get("start") or process_start(pid) == state["start"]


# ---------------------------------------------------------------------- the driver


def _settings(ctx: Context) -> Settings:
    config = _config(ctx)
    threads = None
    if ctx.device == "cpu":  # the trial's own CPUs, not the driver machine's
        threads = ctx.profile.threads_per_run or max(1, int(config.cpus_per_trial))
    return Settings(
        storage=str(storage_path(ctx)),
        tracking=(ctx.tracking_uri, ctx.experiment),
        device=ctx.device,
        threads=threads,
        cpus=float(config.cpus_per_trial),
        accelerator_type=config.accelerator_type,
        cwd=os.getcwd(),
        extra_env=dict(ctx.extra_env),
    )


def _tuner(jobs: Sequence[Job], ctx: Context, progress: _Progress) -> tune.Tuner:
    settings = _settings(ctx)
    ranks = {j.run_id: j.layout.gpus for j in jobs}
    dirs = {j.run_id: str(j.run_dir) for j in jobs}

    def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return _trial_resources(ranks[config["run_id"]], settings)

    trainable = tune.with_resources(
        tune.with_parameters(ray_trial.trial, settings=settings), resources
    )
    return tune.Tuner(
        trainable,
        param_space={
            "run_id": tune.grid_search([j.run_id for j in jobs]),
            "run_dir": tune.sample_from(lambda config: dirs[config["run_id"]]),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=ctx.max_parallel,
            trial_name_creator=lambda t: t.config["run_id"],
            trial_dirname_creator=lambda t: t.config["run_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=settings.storage,
            failure_config=tune.FailureConfig(max_failures=_config(ctx).max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[progress],
            verbose=0,
        ),
    )


def _check_fits(jobs: Sequence[Job], ctx: Context) -> None:
    """A trial that a local Ray cannot hold would wait forever: say so before starting."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    for job in jobs:
        need_cpus = _config(ctx).cpus_per_trial * job.layout.gpus
        need_gpus = job.layout.gpus if ctx.device == "cuda" else 0
        if need_cpus > cpus or need_gpus > gpus:
            raise SubmissionError(
                f"run {job.run_id} needs {need_cpus:g} CPUs and {need_gpus} GPUs "
                f"({job.layout.gpus} ranks x ray.cpus_per_trial); the local Ray has {cpus:g} CPUs "
                f"and {gpus:g} GPUs: raise ray.num_cpus or lower ray.cpus_per_trial / gpus_per_run"
            )


def _trial_resources(gpus: int, settings: Settings) -> tune.PlacementGroupFactory:
    """One bundle for a single-process trial. A multi-rank trial only drives Ray Train,
    whose workers reserve their own resources; Ray wants a non-empty bundle, so the
    driver asks for a token of memory rather than a CPU the workers may need."""
    if gpus > 1:
        return tune.PlacementGroupFactory([{"memory": 2**20}])
    bundle: dict[str, float] = {"CPU": settings.cpus}
    if settings.device == "cuda":
        bundle["GPU"] = 1
    if settings.accelerator_type:
        bundle[f"accelerator_type:{settings.accelerator_type}"] = 0.001
    return tune.PlacementGroupFactory([bundle])


class _Progress(tune.Callback):
    """Drives the live view and keeps <storage>/driver.json (what `status` reads)."""

    def __init__(self, jobs: Sequence[Job], view: Any, state_path: Path) -> None:
        self.jobs = {j.run_id: j for j in jobs}
        self.view, self.path = view, state_path
        self.tasks: dict[str, Any] = {}
        self.states = dict.fromkeys(self.jobs, "PENDING")
        self._write()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (tuner.pkl); a console is not
        # picklable and means nothing elsewhere.
        return {**self.__dict__, "view": _NullView(), "tasks": {}}

    def _write(self) -> None:
        from scaling.run.locks import process_start

        write_json(
            self.path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": process_start(os.getpid()),
                "updated": time.time(),
                "trials": self.states,
            },
        )

    def _set(self, run_id: str, state: str) -> None:
        self.states[run_id] = state
        self._write()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = trial.config["run_id"]
        if run_id not in self.tasks:
            self.tasks[run_id] = self.view.start(self.jobs[run_id])
        self._set(run_id, "RUNNING")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        task = self.tasks.get(trial.config["run_id"])
        if task is not None and "epoch" in result:
            self.view.update(task, int(result["epoch"]))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = trial.config["run_id"]
        self.view.note(
            f"retrying {run_id} (failure {trial.num_failures}); it resumes from its checkpoint"
        )
        self._set(run_id, "RETRYING")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, str(trial.get_error() or "trial errored"))

    def _finish(self, trial: Any, error: str | None) -> None:
        run_id = trial.config["run_id"]
        outcome = _outcome_of(self.jobs[run_id], trial.last_result or {}, error)
        self._set(run_id, outcome.state.upper())
        if run_id in self.tasks:
            self.view.finish(self.tasks.pop(run_id), outcome)


class _NullView:
    def start(self, job: Job) -> None: ...
    def update(self, task: Any, epochs: int) -> None: ...
    def finish(self, task: Any, outcome: Outcome) -> None: ...
    def note(self, text: str) -> None: ...


def _outcome(job: Job, result: Any) -> Outcome:
    if result is None:
        return Outcome(job.run_id, "failed", "Ray Tune returned no result for this trial")
    error = None if result.error is None else str(result.error)
    return _outcome_of(job, result.metrics or {}, error)


def _outcome_of(job: Job, last: dict[str, Any], error: str | None) -> Outcome:
    if error is None and last.get("outcome"):
        return Outcome(job.run_id, str(last["outcome"]), str(last.get("detail", "")))
    if error is None:  # no outcome and no error: Tune stopped the trial (Ctrl-C)
        return Outcome(job.run_id, "preempted", INTERRUPTED)
    failure = read_json(job.run_dir / FAILURE) or {}
    reason = [ln for ln in (error or "no outcome reported").splitlines() if ln.strip()][-1:]
    tail = " | ".join(reason + log_tail(job.run_dir / LOG, 3))
    return Outcome(job.run_id, "failed", f"{failure.get('kind', 'error')}: {tail}")
