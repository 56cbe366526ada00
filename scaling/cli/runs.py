"""`scaling submit`, `scaling status`, `scaling cancel`: launching and following runs."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scaling.cli.advise import FlopsOpt, ParamsOpt, QuestionOpt, ThresholdOpt
from scaling.cli.options import ClusterOpt, OnlyOpt, SetOpt, SweepArg

if TYPE_CHECKING:
    from rich.console import Console, Group

    from scaling.plan.planner import Plan
    from scaling.run.backends.base import Backend, Context
    from scaling.run.pusher import Pusher
    from scaling.run.status import SweepStatus
    from scaling.run.submission import Decision
from scaling.run.tracking import redact


def submit(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    only: OnlyOpt = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Runs at once.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would run and why the rest would not.")
    ] = False,
    rerun_failed: Annotated[
        bool, typer.Option("--rerun-failed", help="Rerun failed runs (resuming).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rerun every selected run from scratch.")
    ] = False,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="Buy the advised runs (scaling advise) a batch at a time until --until "
            "holds, --budget is spent or no run narrows the interval; resumable.",
        ),
    ] = False,
    budget: Annotated[
        float | None, typer.Option("--budget", help="--adaptive: device-hours to spend.")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help='--adaptive: "interval < X" (the unit of the question).'),
    ] = None,
    question: QuestionOpt = None,
    params: ParamsOpt = None,
    threshold: ThresholdOpt = 1.0,
    flops: FlopsOpt = None,
) -> None:
    """Run every feasible run of SWEEP that is not finished; safe to repeat."""
    from rich.console import Console

    from scaling.run.planning import build_plan

    console = Console(stderr=True, soft_wrap=True)  # no hard wraps in logs and CI
    overrides = [f"max_parallel={max_parallel}"] if max_parallel else []
    if adaptive or budget is not None or until is not None:
        from scaling.errors import SpecError
        from scaling.report.adaptive import run_loop
        from scaling.report.goal import Goal, QuestionKind

        kind = QuestionKind.parse(question)
        goal = Goal.of(adaptive, budget, until, kind, params, threshold, flops)
        given = {
            "--only": only,
            "--dry-run": dry_run,
            "--rerun-failed": rerun_failed,
            "--force": force,
        }
        if clash := [k for k, v in given.items() if v]:
            raise SpecError(
                f"{', '.join(clash)} cannot go with --adaptive: the loop buys from the whole "
                "sweep, a batch at a time (scaling advise shows what it would buy next)"
            )
        run_loop(
            sweep,
            cluster,
            set_ or [],
            overrides,
            goal,
            lambda plan: launch_plan(plan, sweep, cluster, console),
            console,
        )
        return
    plan = build_plan(sweep, cluster, set_ or [], only, overrides)
    launch_plan(
        plan, sweep, cluster, console, dry_run=dry_run, rerun_failed=rerun_failed, force=force
    )


def launch_plan(
    plan: Plan,
    sweep: Path,
    cluster: Path | None,
    console: Console,
    *,
    dry_run: bool = False,
    rerun_failed: bool = False,
    force: bool = False,
) -> None:
    """Decide, prepare and launch the runs of `plan` (what `submit` does once it has a
    plan; the adaptive loop calls it once per batch); exit 1 when a run failed, 75 when
    another live process holds some."""
    from scaling.run.backends.base import get_backend
    from scaling.run.pusher import STOP_PUSH_S, Pusher
    from scaling.run.submission import (
        Action,
        Reason,
        context_of,
        decide,
        repair_cut_metrics,
        scheduled,
    )

    ctx = context_of(plan)
    backend = get_backend(ctx.profile.backend)
    busy = scheduled(plan, ctx, backend)  # before anything is written: queued runs stay as they are
    if not dry_run:  # the local backend's workers import torch while MLflow is looked up
        _prepare(backend, plan, ctx, busy, rerun_failed=rerun_failed, force=force)
    tracked = _tracked(ctx, console)
    decisions = decide(
        plan, ctx, rerun_failed=rerun_failed, force=force, tracked=tracked, busy=busy
    )
    _print_decisions(console, decisions, verbose=dry_run)
    if dry_run:
        return
    for run_dir, restored in repair_cut_metrics(decisions):
        console.print(
            f"repaired {run_dir / 'metrics.jsonl'}: {restored} epochs from its checkpoint"
            if restored
            else f"[yellow]warning:[/yellow] {run_dir / 'metrics.jsonl'} lacks epochs and no "
            "checkpoint holds them (a run from before checkpoints kept them)",
            soft_wrap=True,
        )
    # One mirror thread for the whole command, told of an outage found above: a hung
    # server costs one time-out, not one per run.
    pusher = Pusher(ctx.tracking_uri, ctx.experiment, outage=tracked is None)
    ctx = dataclasses.replace(ctx, pusher=pusher)
    pusher.add_stale(d.run_dir for d in decisions if d.action is Action.SKIP)
    with _signals_interrupt():
        try:
            counts = _launch(plan, ctx, backend, decisions, console, reachable=tracked is not None)
        except KeyboardInterrupt:
            _close_pusher(pusher, console, STOP_PUSH_S)
            raise
        _close_pusher(pusher, console, None)
    _where_to_look(console, sweep, cluster)
    if counts.get("failed"):
        raise typer.Exit(1)
    held = [d.run_dir for d in decisions if d.reason is Reason.RUNNING]
    if held or counts.get("already-running"):
        _held_elsewhere(console, held, counts.get("already-running", 0))


def _held_elsewhere(console: Console, held: list[Path], lost_race: int) -> None:
    """Runs another live process holds are not done: say which and by whom, and end
    with ALREADY_RUNNING, never as if the sweep were finished."""
    from scaling.errors import ExitCode
    from scaling.run.locks import holder_text

    for run_dir in held:
        console.print(
            f"[yellow]not done:[/yellow] {run_dir.name} is being trained by "
            f"{holder_text(run_dir)} (run directory {run_dir})",
            soft_wrap=True,
        )
    count = len(held) + lost_race
    console.print(
        f"{count} run{'s are' if count != 1 else ' is'} held by another live process and "
        "left alone: not finished by this submit; `scaling submit` again once "
        f"{'they end' if count != 1 else 'it ends'} (it resumes nothing twice), or "
        "`scaling cancel` to stop them",
        soft_wrap=True,
    )
    raise typer.Exit(ExitCode.ALREADY_RUNNING)


def _prepare(
    backend: Backend, plan: Plan, ctx: Context, busy: dict[str, str], **asked: bool
) -> None:
    """A backend's optional `prepare` for the runs it will likely be handed (what the run
    directories alone say; MLflow, read next, may only skip a few more)."""
    from scaling.run.submission import Action, decide

    prepare = getattr(backend, "prepare", None)
    if prepare is not None:
        likely = decide(plan, ctx, busy=busy, **asked)
        prepare([d.job for d in likely if d.action is not Action.SKIP], ctx)


def _launch(
    plan: Plan,
    ctx: Context,
    backend: Backend,
    decisions: list[Decision],
    console: Console,
    *,
    reachable: bool,
) -> dict[str, int]:
    """Write the run directories and hand the jobs to the backend; outcome counts."""
    from scaling.run.submission import prepare

    wandb = plan.sweep.tracking.wandb
    jobs = prepare(decisions, ctx, wandb=wandb.model_dump() if wandb else None)
    if not jobs:
        console.print("nothing to run")
        return {}
    if reachable:
        _ensure_experiment(ctx, console)
    console.print(
        f"submitting {len(jobs)} runs to {backend.name} ({ctx.max_parallel} at once, "
        f"{ctx.device}{'' if ctx.device != 'cpu' else f', {ctx.threads_per_run} threads each'}); "
        f"runs in {ctx.workdir / ctx.sweep}, tracking {redact(ctx.tracking_uri)}"
    )
    outcomes = backend.submit(jobs, ctx)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    console.print(
        "done: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing")
    )
    return counts


def _close_pusher(pusher: Pusher, console: Console, timeout: float | None) -> None:
    from scaling.run.pusher import broken_notes, pending_note

    left = pusher.close(timeout)
    if left:
        console.print(f"[yellow]warning:[/yellow] {pending_note(len(left), redact(pusher.uri))}")
    for note in broken_notes(pusher.broken):
        console.print(f"[yellow]warning:[/yellow] {note}", soft_wrap=True)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, a killed tmux, `kill`) act as Ctrl-C: every
    running run checkpoints and stays resumable."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _tracked(ctx: Context, console: Console) -> dict[str, Any] | None:
    """MLflow's view of the sweep (run_id -> status); None, with a warning, when unreachable."""
    from scaling.errors import ScalingError
    from scaling.run.tracking import find_runs

    try:
        return find_runs(ctx.tracking_uri, ctx.experiment)
    except ScalingError as exc:
        console.print(
            f"[yellow]warning:[/yellow] tracking not readable ({exc}); "
            "deciding from run directories"
        )
        return None


def _ensure_experiment(ctx: Context, console: Console) -> None:
    """Create the experiment once, here, so that concurrent jobs never race to create it."""
    from scaling.run.tracking import ensure_experiment

    try:
        ensure_experiment(ctx.tracking_uri, ctx.experiment)
    except Exception as exc:  # tracking must never stop training
        console.print(
            f"[yellow]warning:[/yellow] could not create the MLflow experiment ({exc}); "
            "runs still write their run directories; `scaling sync` uploads them later"
        )


def _print_decisions(console: Console, decisions: list[Decision], verbose: bool) -> None:
    from scaling.run.submission import Action

    reasons: dict[tuple[str, str], int] = {}
    for d in decisions:
        # Launches grouped by kind (new, resume, rerun, forced), skips by their full reason.
        key = (d.action, d.why if d.action is Action.SKIP else d.reason)
        reasons[key] = reasons.get(key, 0) + 1
        if verbose:
            spec = d.planned.spec
            console.print(
                f"{d.action:<6} {spec.run_id} {spec.method:<10} depth {spec.model['depth']} "
                f"width {spec.model['width']} batch {spec.config['batch_size']} "
                f"epochs {spec.config['epochs']} "
                f"seed {spec.seed}: {d.why}",
                highlight=False,
            )
    summary = "; ".join(f"{action} {n} ({why})" for (action, why), n in sorted(reasons.items()))
    console.print(f"{len(decisions)} runs: {summary}", highlight=False)


def _where_to_look(console: Console, sweep: Path, cluster: Path | None) -> None:
    flag = f" --cluster {cluster}" if cluster else ""
    console.print(
        "next: " + "   |   ".join(f"scaling {c} {sweep}{flag}" for c in ("status", "ui", "report")),
        highlight=False,
    )


def status(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    only: OnlyOpt = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh every 2 s until Ctrl-C.")
    ] = False,
) -> None:
    """Counts by state and one row per run: state, epoch, last metric, MLflow link."""
    from rich.console import Console
    from rich.live import Live

    from scaling.run.planning import build_plan
    from scaling.run.pusher import Pusher
    from scaling.run.status import sweep_status
    from scaling.run.submission import make_context

    plan = build_plan(sweep, cluster, set_ or [], only)
    ctx = make_context(plan.sweep, plan.profile)
    console = Console(width=None if sys.stdout.isatty() else 200)
    # Runs that ended with MLflow behind them (an outage, a killed submit) are pushed
    # here, in the background; an unreachable store is tried once per command.
    pusher = Pusher(ctx.tracking_uri, ctx.experiment)
    if not watch:
        console.print(_status_view(sweep_status(plan.runs, ctx, pusher)))
        return
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                live.update(_status_view(sweep_status(plan.runs, ctx, pusher)), refresh=True)
                time.sleep(2)
        except KeyboardInterrupt:
            pass


STATE_COLOURS = {"finished": "green", "failed": "red", "running": "cyan", "resumable": "yellow"}
STATUS_COLUMNS = (
    "run_id",
    "method",
    "depth",
    "width",
    "batch",
    "epochs",
    "seed",
    "state",
    "epoch",
    "loss",
    "top-1",
    "converged",
    "train (plan / took)",
    "mlflow",
)


def _status_view(view: SweepStatus) -> Group:
    """scaling.run.status.SweepStatus as a rich table, the counts and the failures."""
    from rich.console import Group
    from rich.table import Table

    from scaling.run.pusher import broken_notes

    table = Table(title=view.title, title_justify="left")
    for col in STATUS_COLUMNS + (("scheduler",) if view.has_scheduler else ()):
        table.add_column(col, no_wrap=True)
    problems: list[str] = []
    unconverged: list[str] = []
    for row in view.rows:
        spec = row.planned.spec
        colour = STATE_COLOURS.get(row.state, "white")
        link = "[yellow]pending sync[/yellow]" if row.pending_sync else row.mlflow or "-"
        cells = [
            spec.run_id,
            spec.method,
            str(spec.model["depth"]),
            str(spec.model["width"]),
            str(spec.config["batch_size"]),
            str(spec.config["epochs"]),
            str(spec.seed),
            f"[{colour}]{row.state}[/{colour}]",
            f"{row.epoch}/{spec.config['epochs']}",
            "-" if row.loss is None else f"{row.loss:.4f}",
            "-" if row.top1 is None else f"{row.top1:.4f}",
            _converged(row),
            _train_time(row.planned_train_s, row.train_s),
            link,
        ]
        if view.has_scheduler:
            cells.append(row.scheduler or "-")
        table.add_row(*cells)
        if row.problem:
            head, lines = row.problem
            problems.append(f"[red]{head}[/red]" + "".join(f"\n    {ln}" for ln in lines))
        if row.convergence is not None and not row.convergence.converged:
            unconverged.append(
                f"{spec.run_id} ({spec.method}, width {spec.model['width']}, "
                f"{spec.config['epochs']} epochs): {row.convergence.describe()}"
            )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(view.counts.items()))
    if view.unsynced:
        summary += f"; {view.unsynced} not yet in MLflow ({view.uri}"
        summary += " unreachable: `scaling sync` uploads them)" if view.outage else ")"
    problems += [f"[red]{note}[/red]" for note in broken_notes(view.broken)]
    if unconverged:
        problems.insert(
            0,
            f"[yellow]not converged ({len(unconverged)}):[/yellow] judged from each "
            "training curve; a gap to such a baseline cannot be judged"
            + "".join(f"\n    {line}" for line in unconverged),
        )
    return Group(table, f"states: {summary}", *problems)


def _converged(row: Any) -> str:
    """A finished run's verdict: yes, or no in yellow (why: below the table)."""
    if row.convergence is None:
        return "-"
    return "yes" if row.convergence.converged else "[yellow]no[/yellow]"


def _train_time(predicted: float, measured: float | None) -> str:
    """The plan's training time, and the run's own once it finished: "41 s / 38 s"."""
    said = "-" if predicted != predicted else _seconds(predicted)  # NaN: not known
    return f"{said} / {_seconds(measured)}" if measured else said


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min" if s < 36_000 else f"{s / 3600:.1f} h"


def cancel(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    only: OnlyOpt = None,
) -> None:
    """Stop running runs of SWEEP; each one checkpoints and stays resumable."""
    from scaling.run.backends.base import get_backend
    from scaling.run.planning import build_plan
    from scaling.run.submission import make_context

    plan = build_plan(sweep, cluster, set_ or [], only)
    ctx = make_context(plan.sweep, plan.profile)
    count = get_backend(ctx.profile.backend).cancel([ctx.job(p) for p in plan.runs], ctx)
    typer.echo(f"cancelled {count} runs; `scaling submit` resumes them")
