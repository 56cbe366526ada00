"""What `scaling status` shows, computed here and rendered by the CLI: one row per run.

Each row joins what the run directory says (scaling.run.state), what MLflow knows of the
run (its page or id), whether a mirror is behind it ("pending sync"), the scheduler's
view (Slurm, Ray), the plan's training time beside the measured one and a finished
run's convergence verdict (scaling.train.convergence). Runs whose
mirrors lag behind them (an outage, a killed submit) are pushed first, in the
background, for at most STATUS_PUSH_S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.plan.planner import PlannedRun
from scaling.run.backends.base import Context, get_backend
from scaling.run.mirrors import MLFLOW
from scaling.run.pusher import Pusher
from scaling.run.state import State, run_state
from scaling.run.tracking import find_runs, redact, run_url
from scaling.rundir import LOG, METRICS, log_tail
from scaling.train.convergence import Convergence

STATUS_PUSH_S = 30.0  # how long `status` waits for its pushes of runs MLflow lags behind
FAILURE_TAIL_LINES = 5


@dataclass(frozen=True)
class StatusRow:
    planned: PlannedRun
    state: State
    epoch: int
    loss: float | None  # the newest epoch's training loss
    top1: float | None  # a finished run's
    planned_train_s: float  # the plan's training time (NaN: not known)
    train_s: float | None  # what a finished run's training steps took
    mlflow: str | None  # the run's page (a server) or MLflow id
    pending_sync: bool  # a mirror is behind its run directory
    scheduler: str | None = None  # the backend's state line (Slurm, Ray)
    # why it failed: "failed (kind): message" or the scheduler's line, with log lines
    problem: tuple[str, tuple[str, ...]] | None = None
    convergence: Convergence | None = None  # a finished run's verdict on its curve


@dataclass(frozen=True)
class SweepStatus:
    title: str
    rows: list[StatusRow]
    counts: dict[State, int]
    unsynced: int  # runs some mirror lags behind
    uri: str  # the MLflow store (credentials redacted)
    outage: str | None  # the tracking store found unreachable, if any
    has_scheduler: bool = False
    broken: dict[Path, str] = field(default_factory=dict)  # run dirs that cannot be read


def sweep_status(runs: tuple[PlannedRun, ...], ctx: Context, pusher: Pusher) -> SweepStatus:
    dirs = {p.spec.run_id: ctx.run_dir(p.spec.run_id) for p in runs}
    if pusher.add_stale(dirs.values()):
        pusher.drain(STATUS_PUSH_S)
    tracked: dict[str, Any] = {}
    if MLFLOW not in pusher.mirrors.down:
        try:
            tracked = find_runs(ctx.tracking_uri, ctx.experiment)
        except ScalingError:
            pusher.mirrors.mark_down(MLFLOW)
    scheduler: dict[str, str] = {}
    if ctx.profile.backend != "local":
        scheduler = get_backend(ctx.profile.backend).status([ctx.job(p) for p in runs], ctx)
    rows, counts, unsynced = [], dict.fromkeys(State, 0), 0
    for planned in runs:
        run_id = planned.spec.run_id
        run_dir = dirs[run_id]
        st = run_state(run_dir)
        counts[st.state] += 1
        info = tracked.get(run_id)
        link = None
        if info:
            page = run_url(ctx.tracking_uri, info["experiment_id"], info["mlflow_run_id"])
            link = page or info["mlflow_run_id"][:12]
        behind = st.state is not State.RUNNING and pusher.mirrors.needs_push(run_dir)
        unsynced += behind
        state_line, problem = None, None
        if scheduler:
            # The backend's first line is the state; further lines (a failed job's log
            # tail) explain it.
            state_line, *tail = scheduler.get(run_id, "-").splitlines()
            if tail and st.state is not State.FAILED:
                problem = (f"{run_id} {state_line}", tuple(tail))
        if st.state is State.FAILED:
            failure = st.failure or {}
            why = f"{run_id} failed ({failure.get('kind', 'error')}): {failure.get('message', '')}"
            problem = (why, tuple(log_tail(run_dir / LOG, FAILURE_TAIL_LINES)))
        elif st.metrics_cut:
            cut = st.metrics_cut
            problem = (
                f"{run_id}: {run_dir / METRICS} lacks {len(cut)} of its "
                f"{st.result and st.result.get('epochs')} epochs ({_epochs(cut)}): cut by a "
                "kill or a full disk; `scaling submit` puts them back from the checkpoint",
                (),
            )
        last_loss = (st.last or {}).get("loss")
        measured = ((st.result or {}).get("throughput") or {}).get("train_time_s")
        rows.append(
            StatusRow(
                planned=planned,
                state=st.state,
                epoch=st.epoch,
                loss=float(last_loss) if _number(last_loss) else None,
                top1=float(st.result["top1"]) if st.result else None,
                planned_train_s=planned.predicted_train_s,
                train_s=float(measured) if _number(measured) else None,
                mlflow=link,
                pending_sync=behind,
                scheduler=state_line,
                problem=problem,
                convergence=st.convergence,
            )
        )
    outage = pusher.mirrors.where_down() or None
    title = f"{ctx.sweep}: {len(runs)} runs in {ctx.workdir / ctx.sweep}"
    return SweepStatus(
        title=title,
        rows=rows,
        counts={s: n for s, n in counts.items() if n},
        unsynced=unsynced,
        uri=redact(ctx.tracking_uri),
        outage=outage,
        has_scheduler=bool(scheduler),
        broken=pusher.broken,
    )


def _epochs(epochs: list[int]) -> str:
    """[2, 3, 4, 7] -> "epochs 2-4, 7"."""
    spans: list[list[int]] = []
    for e in epochs:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"epoch{'s' * (len(epochs) != 1)} {text}"


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )
