"""Deciding what to run, identically for every backend.

Each feasible run of the plan is looked up by run_id, in its run directory (the local
truth) and in MLflow: finished runs are skipped, unfinished ones resume from their
checkpoint, failed ones are reported and rerun only when asked, and a run another
process is training is left alone.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.enums import StrEnum
from scaling.errors import RunFailed
from scaling.plan.planner import Plan, PlannedRun
from scaling.run.backends.base import Context, Job
from scaling.run.state import RunState, State, run_state
from scaling.rundir import FAILURE, SPEC, git_version, read_json, write_json
from scaling.sweep.cluster import ClusterProfile, parallel_runs, threads_per_run, train_env
from scaling.sweep.spec import Sweep

log = logging.getLogger(__name__)


class Action(StrEnum):
    RUN = "run"  # from scratch
    RESUME = "resume"  # from the newest checkpoint
    SKIP = "skip"


class Reason(StrEnum):
    """Why a run gets its action (`Decision.why` says it in words, for display)."""

    NEW = "new"
    FORCED = "forced"
    RESUME = "resume"
    RERUN = "rerun"
    RETRY = "retry"  # a failure from outside the run (a full disk): retried unasked
    FINISHED = "finished"
    FAILED = "failed"
    RUNNING = "running"
    QUEUED = "queued"
    INFEASIBLE = "infeasible"


@dataclass(frozen=True)
class Decision:
    planned: PlannedRun
    run_dir: Path
    state: RunState
    action: Action
    reason: Reason
    why: str  # the reason in words: "resume after epoch 3", "failed (oom); use --rerun-failed"

    @property
    def job(self) -> Job:
        return Job.of(self.planned, self.run_dir)


def make_context(sweep: Sweep, profile: ClusterProfile, device: str | None = None) -> Context:
    """Where a sweep's runs live and log: workdir, tracking URI, device, threads per run."""
    from scaling.run.tracking import experiment_name, resolve_uri

    device = device or ("cpu" if profile.device == "auto" else profile.device)
    if profile.backend == "slurm":  # the cluster's nodes, not this machine, set these
        from scaling.run.backends.slurm import threads_per_task

        assert profile.slurm is not None
        max_parallel = profile.slurm.array_parallelism
        threads = threads_per_task(profile, device) or profile.slurm.cpus_per_task
    else:
        max_parallel = parallel_runs(profile, device)
        threads = threads_per_run(profile, max_parallel)
    return Context(
        profile=profile,
        sweep=sweep.name,
        workdir=Path(profile.workdir).absolute(),
        tracking_uri=resolve_uri(sweep.tracking.uri, profile.tracking.uri),
        experiment=experiment_name(sweep),
        device=device,
        threads_per_run=threads,
        max_parallel=max_parallel,
        extra_env=train_env(profile),
    )


def context_of(plan: Plan) -> Context:
    return make_context(plan.sweep, plan.profile, plan.accelerator.device)


def decide(
    plan: Plan,
    ctx: Context,
    *,
    rerun_failed: bool = False,
    force: bool = False,
    tracked: Mapping[str, Mapping[str, Any]] | None = None,
    busy: Mapping[str, str] | None = None,
) -> list[Decision]:
    """One decision per run of the plan; `tracked` is find_runs() of the sweep's
    experiment, `busy` the runs the scheduler has queued or running (run_id -> which job:
    the backend's `reconcile`), left untouched whatever else is asked."""
    tracked, busy = tracked or {}, busy or {}
    decisions = []
    for planned in plan.runs:
        run_dir = ctx.run_dir(planned.spec.run_id)
        state = run_state(run_dir)
        if planned.feasible and planned.spec.run_id in busy:
            why = f"queued or running ({busy[planned.spec.run_id]})"
            decisions.append(Decision(planned, run_dir, state, Action.SKIP, Reason.QUEUED, why))
            continue
        mlflow_status = (tracked.get(planned.spec.run_id) or {}).get("status")
        action, reason, why = _action(planned, state, mlflow_status, rerun_failed, force)
        decisions.append(Decision(planned, run_dir, state, action, reason, why))
    return decisions


def scheduled(plan: Plan, ctx: Context, backend: Any) -> dict[str, str]:
    """The backend's `reconcile` of the plan's feasible runs ({} for backends that keep
    no queue of their own: the run lock already says which runs are training)."""
    reconcile = getattr(backend, "reconcile", None)
    if reconcile is None:
        return {}
    jobs = [ctx.job(p) for p in plan.runs if p.feasible and p.layout is not None]
    return dict(reconcile(jobs, ctx))


def _action(
    planned: PlannedRun, state: RunState, mlflow_status: str | None, rerun_failed: bool, force: bool
) -> tuple[Action, Reason, str]:
    if not planned.feasible:
        return Action.SKIP, Reason.INFEASIBLE, f"infeasible: {planned.reason}"
    if state.state is State.RUNNING:
        return Action.SKIP, Reason.RUNNING, "running in another process"
    if force:
        return Action.RUN, Reason.FORCED, "forced: from scratch"
    if state.state is State.FINISHED:
        return Action.SKIP, Reason.FINISHED, "finished"
    if state.state is State.PENDING and mlflow_status == "FINISHED":
        return Action.SKIP, Reason.FINISHED, "finished (recorded in MLflow; no local run directory)"
    if state.state is State.FAILED:
        kind = (state.failure or {}).get("kind", "error")
        if kind in RunFailed.RETRIED_KINDS:
            return Action.RESUME, Reason.RETRY, f"retry after a failure from outside it ({kind})"
        if not rerun_failed:
            return Action.SKIP, Reason.FAILED, f"failed ({kind}); use --rerun-failed"
        return Action.RESUME, Reason.RERUN, f"rerun after failure ({kind})"
    if state.state is State.RESUMABLE:
        return Action.RESUME, Reason.RESUME, f"resume after epoch {state.epoch}"
    return Action.RUN, Reason.NEW, "new"


def repair_cut_metrics(decisions: list[Decision]) -> list[tuple[Path, int]]:
    """Finished runs whose metrics.jsonl lost epochs (RunState.metrics_cut) get them back
    from their newest checkpoint; (run directory, epochs restored: 0 when no checkpoint
    holds them) for each such run."""
    out = []
    for d in decisions:
        if d.state.state is State.FINISHED and d.state.metrics_cut:
            from scaling.train.checkpoint import repair_metrics

            try:
                out.append((d.run_dir, repair_metrics(d.run_dir)))
            except (OSError, RunFailed):
                out.append((d.run_dir, 0))
    return out


def prepare(
    decisions: list[Decision], ctx: Context, wandb: Mapping[str, Any] | None = None
) -> list[Job]:
    """Write spec.json of every run to launch (wiping forced ones); return the jobs,
    longest first: with a few runs at a time, starting the costliest early keeps one
    long run from finishing alone at the end (longest-processing-time-first)."""
    jobs = []
    launch = sorted(decisions, key=lambda d: -_cost(d))
    for d in launch:
        if d.action is Action.SKIP:
            continue
        forced = d.reason is Reason.FORCED
        if forced and d.run_dir.exists():
            shutil.rmtree(d.run_dir)
        d.run_dir.mkdir(parents=True, exist_ok=True)
        (d.run_dir / FAILURE).unlink(missing_ok=True)
        layout = d.planned.layout
        assert layout is not None  # feasible runs have one
        # forced_at: the MLflow runs of this run_id started before it are superseded.
        existing = {"forced_at": time.time()} if forced else read_json(d.run_dir / SPEC) or {}
        write_json(
            d.run_dir / SPEC,
            {
                **d.planned.spec.to_dict(),
                "layout": layout.to_dict(),
                "code": existing.get("code") or git_version(),
                "checkpoint_every_s": 60.0 * ctx.profile.checkpoint_every_min,
                **{k: existing[k] for k in ("started_at", "forced_at") if k in existing},
            },
        )
        if wandb is not None:  # the run's W&B mirror settings (scaling.run.wandb_mirror)
            from scaling.run.wandb_mirror import configure

            configure(d.run_dir, dict(wandb))
        jobs.append(d.job)
    return jobs


def _cost(d: Decision) -> float:
    """Planned device-hours still to spend (the remaining epochs of a resumed run)."""
    hours = d.planned.gpu_hours
    if math.isnan(hours):
        return 0.0
    epochs = max(1, int(d.planned.spec.config["epochs"]))
    return hours * (1 - min(d.state.epoch, epochs) / epochs)
