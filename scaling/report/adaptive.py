"""`scaling submit SWEEP --adaptive --budget H --until "interval < X"`: buy the advised
runs a batch at a time (as many as the profile runs at once), wait, refit, advise again.

It stops when the question's interval is narrower than X (Stop.ANSWERED), when the next
advised run would overspend H device-hours (Stop.BUDGET: the plan's cost of each run
bought counts, whatever it ended as) or when no run narrows the interval further
(Stop.NO_CANDIDATE). Its state (`<workdir>/<sweep>/adaptive.json`, written atomically)
holds every step: the runs bought, their cost, the interval after it, and why it
stopped. A step is written before its runs launch, so a killed loop, run again, first
finishes that step's runs through the ordinary submit machinery (finished runs skipped,
unfinished ones resumed) and never buys a run twice. The state is mirrored to one MLflow
sweep-level run (tag scaling.kind=adaptive), as the report's run is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from scaling.plan.planner import Plan
from scaling.report import advise as A
from scaling.report import pool as P
from scaling.report.goal import Goal, Stop
from scaling.rundir import read_json, write_json
from scaling.sweep.cluster import load_profile

log = logging.getLogger(__name__)

STATE = "adaptive.json"
KIND = "adaptive"


def state_path(workdir: str | Path, sweep: str) -> Path:
    return Path(workdir) / sweep / STATE


def run_loop(
    sweep: Path,
    cluster: Path | None,
    sets: Sequence[str],
    profile_overrides: Sequence[str],
    goal: Goal,
    launch: Callable[[Plan], Any],
    console: Any,
    *,
    n_boot: int = 400,
) -> Stop:
    """The loop (see the module); `launch` runs a plan's runs (cli.runs.launch_plan)."""
    from scaling.run.submission import make_context

    profile = load_profile(cluster, list(profile_overrides))
    pool = P.extended(sweep, sets, profile)
    path = state_path(profile.workdir, pool.sweep.name)
    question = A.make_question(
        goal.kind,
        params=goal.params,
        threshold=goal.threshold,
        flops=goal.flops,
        largest=P.largest(pool),
    )
    state = read_json(path) or {"steps": [], "spent": 0.0}
    state.update(question=A.describe(question), budget=goal.budget, target=goal.target)
    state.pop("stop", None)
    batch = make_context(pool.sweep, profile).max_parallel
    ctx = make_context(pool.sweep, profile)
    while True:
        steps = state["steps"]
        if steps and not steps[-1]["done"]:  # bought before a kill: finish those first
            _launch(pool, steps[-1]["runs"], launch)
            steps[-1]["done"] = True
            _save(path, state, ctx)
        pool = P.extended(sweep, sets, profile)  # costs measured by the runs just done
        table = P.collect(pool, profile.workdir)
        bought = [r for s in steps for r in s["runs"]]
        left = goal.budget - state["spent"]
        ranking = A.advise(
            pool, table, question, batch=batch, budget=left, bought=bought, n_boot=n_boot
        )
        now = ranking.now
        interval = [now.lo, now.hi] if now is not None and now.reliable else None
        if steps:
            steps[-1]["interval"] = interval
        else:
            state["start"] = interval
        width = now.width if now is not None and now.reliable else math.inf
        stop = None
        if width < goal.target:
            stop = Stop.ANSWERED
        elif not ranking.batch:
            stop = Stop.BUDGET if ranking.wanted or left <= 0 else Stop.NO_CANDIDATE
        if stop is not None:
            state["stop"] = str(stop)
            state["next"] = _next(ranking)
            _save(path, state, ctx)
            console.print(_summary(state, width), highlight=False)
            return stop
        ids = [a.planned.spec.run_id for a in ranking.batch]
        hours = sum(a.hours for a in ranking.batch)
        steps.append(
            {
                "runs": ids,
                "hours": hours,
                "why": [a.why for a in ranking.batch],
                "labels": [_label(a.planned) for a in ranking.batch],
                "done": False,
                "time": time.time(),
            }
        )
        state["spent"] += hours
        _save(path, state, ctx)  # before launching: a killed loop never buys these again
        console.print(
            f"step {len(steps)}: buying {len(ids)} runs ({hours:.3g} device-h; "
            f"{state['spent']:.3g} of {goal.budget:g} spent): "
            + "; ".join(
                f"{lab} ({w})" for lab, w in zip(steps[-1]["labels"], steps[-1]["why"], strict=True)
            ),
            highlight=False,
        )
        _launch(pool, ids, launch)
        steps[-1]["done"] = True
        _save(path, state, ctx)


def _next(ranking: A.Ranking) -> dict[str, Any] | None:
    """The next best run (what the report says would come next), None if none would help."""
    best = next((a for a in ranking.rows if a.useful or math.isnan(a.width)), None)
    if best is None:
        return None
    return {"run": _label(best.planned), "hours": best.hours, "why": best.why}


def _label(p: Any) -> str:
    s = p.spec
    return f"{s.method} width {s.model['width']:g} epochs {s.config['epochs']} seed {s.seed}"


def _launch(pool: P.Pool, ids: Sequence[str], launch: Callable[[Plan], Any]) -> None:
    wanted = set(ids)
    runs = tuple(p for p in pool.plan.runs if p.spec.run_id in wanted)
    launch(replace(pool.plan, runs=runs))


def _summary(state: dict[str, Any], width: float) -> str:
    said = "no interval yet" if not math.isfinite(width) else f"interval width {width:.3g}"
    return (
        f"adaptive: stopped ({state['stop']}) after {len(state['steps'])} steps, "
        f"{state['spent']:.3g} of {state['budget']:g} device-hours; {said} "
        f"(asked: under {state['target']:g})"
    )


def _save(path: Path, state: dict[str, Any], ctx: Any) -> None:
    write_json(path, state)
    _mirror(ctx, state)


def _mirror(ctx: Any, state: dict[str, Any]) -> None:
    """The state as one sweep-level MLflow run (a copy: failures only warn)."""
    try:
        from mlflow.entities import Metric, RunTag

        from scaling.report.publish import KIND_TAG, SWEEP_TAG
        from scaling.run.tracking import ensure_experiment, mlflow_client

        client = mlflow_client(ctx.tracking_uri)
        experiment_id = ensure_experiment(ctx.tracking_uri, ctx.experiment)
        query = f"tags.`{KIND_TAG}` = '{KIND}' and tags.`{SWEEP_TAG}` = '{ctx.sweep}'"
        found = client.search_runs([experiment_id], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {KIND_TAG: KIND, SWEEP_TAG: ctx.sweep}
            run_id = client.create_run(
                experiment_id, tags=tags, run_name=f"{ctx.sweep}-adaptive"
            ).info.run_id
        now = int(time.time() * 1000)
        metrics, spent = [], 0.0
        for i, step in enumerate(state["steps"], start=1):
            spent += step["hours"]
            metrics.append(Metric("spent_device_hours", spent, now, i))
            if step.get("interval"):
                lo, hi = step["interval"]
                metrics.append(Metric("interval_width", hi - lo, now, i))
        tags = [
            RunTag("scaling.adaptive_stop", state.get("stop") or "running"),
            RunTag("scaling.adaptive_question", state["question"]),
            RunTag("scaling.adaptive_budget", str(state["budget"])),
            RunTag("scaling.adaptive_until", f"interval < {state['target']:g}"),
        ]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        if state.get("stop"):
            client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # the state file is complete; MLflow is a copy
        log.warning("adaptive state not mirrored to MLflow (%s: %s)", type(exc).__name__, exc)
