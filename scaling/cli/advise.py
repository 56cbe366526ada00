"""`scaling advise`: which runs to buy next for a question (scaling.report.advise)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from scaling.cli.options import ClusterOpt, SetOpt, SweepArg
from scaling.report.goal import QuestionKind

if TYPE_CHECKING:
    from scaling.report.advise import Ranking

QuestionOpt = Annotated[
    str | None,
    typer.Option(
        "--question",
        "-q",
        help="gap-at (--params N; default: the sweep's largest model), closes (--threshold T) "
        "or frontier (--flops C).",
    ),
]
ParamsOpt = Annotated[float | None, typer.Option("--params", help="gap-at: encoder parameters.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", help="closes: points.")]
FlopsOpt = Annotated[float | None, typer.Option("--flops", help="frontier: training FLOPs.")]


def advise(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    question: QuestionOpt = None,
    params: ParamsOpt = None,
    threshold: ThresholdOpt = 1.0,
    flops: FlopsOpt = None,
    runs: Annotated[
        int | None,
        typer.Option("--runs", min=1, help="How many to buy now; default: the profile's at once."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write a sweep of the finished and advised runs."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the ranking shown.")] = 12,
) -> None:
    """Rank the runs SWEEP could add by how much each narrows the question's interval per
    device-hour (the plan's cost)."""
    from rich.console import Console

    from scaling.report import advise as A
    from scaling.report import pool as P
    from scaling.run.submission import make_context
    from scaling.sweep.cluster import load_profile

    kind = QuestionKind.parse(question)
    profile = load_profile(cluster)
    pool = P.extended(sweep, set_ or [], profile)
    q = A.make_question(
        kind, params=params, threshold=threshold, flops=flops, largest=P.largest(pool)
    )
    table = P.collect(pool, profile.workdir)
    batch = runs or make_context(pool.sweep, profile).max_parallel
    ranking = A.advise(pool, table, q, batch=batch)
    console = Console(width=200)
    show(console, ranking, top)
    if out is not None:
        finished = [
            p for p, s in zip(pool.plan.runs, _states(table, pool), strict=True) if s == "finished"
        ]
        P.write_sweep(sweep, set_ or [], pool, finished + [a.planned for a in ranking.batch], out)
        console.print(f"wrote {out}: scaling submit {out}", highlight=False)


def _states(table: object, pool: object) -> list[str]:
    states = dict(
        zip(table.column("run_id").to_pylist(), table.column("state").to_pylist(), strict=True)  # type: ignore[attr-defined]
    )
    return [states.get(p.spec.run_id, "pending") for p in pool.plan.runs]  # type: ignore[attr-defined]


def show(console: object, ranking: Ranking, top: int) -> None:
    """The question, today's answer and the ranking (the batch marked *)."""
    from rich.table import Table

    from scaling.report.advise import OTHER_RECIPE, describe

    now = ranking.now
    head = f"question: {describe(ranking.question)}"
    if now is not None:
        head += (
            f"; now {now.value:.3g} {now.unit}, {now.level:.0%} interval {now.lo:.3g} to "
            f"{now.hi:.3g} (width {now.width:.3g})"
            if now.reliable
            else f"; now {now.value:.3g} {now.unit}, no interval: {now.why}"
        )
    console.print(head, highlight=False)  # type: ignore[attr-defined]
    if ranking.note:
        console.print(ranking.note, highlight=False)  # type: ignore[attr-defined]
    table = Table(title_justify="left")
    for col in ("", "run", "device-h", "interval after", "narrowing/h", "why"):
        table.add_column(col, no_wrap=col != "why")
    chosen = {id(a.planned) for a in ranking.batch}
    other = [a for a in ranking.rows if a.why == OTHER_RECIPE]
    rows = list(ranking.batch) + [
        a for a in ranking.rows if id(a.planned) not in chosen and a.why != OTHER_RECIPE
    ]
    for a in rows[:top]:
        s = a.planned.spec
        table.add_row(
            "*" if id(a.planned) in chosen else "",
            f"{s.method} width {s.model['width']:g} epochs {s.config['epochs']} seed {s.seed} "
            f"({s.run_id})",
            f"{a.hours:.3g}",
            "-" if math.isnan(a.width) else f"{a.width:.3g}",
            f"{a.narrowing:.3g}",
            a.why,
        )
    console.print(table)  # type: ignore[attr-defined]
    if other:
        console.print(  # type: ignore[attr-defined]
            f"{len(other)} runs of other recipes are not shown: {OTHER_RECIPE}", highlight=False
        )
    if not ranking.batch:
        console.print("no candidate narrows the interval further", highlight=False)  # type: ignore[attr-defined]
