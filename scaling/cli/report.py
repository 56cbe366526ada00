"""`scaling report`: gaps, fits, figures and report.html of a sweep, logged to MLflow.

The report folder (default `<workdir>/<sweep>/report`) is the deliverable; the terminal
gets the gap table, the answer and where the files are; MLflow gets the folder as the
artifacts of ONE sweep-level run (tag `scaling.kind=report`), reused by every later
report of the sweep, so the latest report is one click away in the MLflow UI. MLflow is
a copy here too: a store that cannot be written only warns.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scaling.cli.options import ClusterOpt, SetOpt, SweepArg

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console


log = logging.getLogger(__name__)

OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Report folder; default: <workdir>/<sweep>/report."),
]


def report(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Collect SWEEP's results; write gaps, fits, figures and report.html; log them to MLflow."""
    from scaling.plan.planner import make_plan
    from scaling.report import checks, gaps, results
    from scaling.report.html import build_report
    from scaling.report.publish import publish
    from scaling.run import tracking
    from scaling.sweep.cluster import load_profile
    from scaling.sweep.spec import load_sweep

    the_sweep = load_sweep(sweep, set_ or [])
    profile = load_profile(cluster)
    plan = make_plan(the_sweep, profile)  # which runs exist: the BN batch is in run_id
    uri = tracking.resolve_uri(the_sweep.tracking.uri, profile.tracking.uri)
    sweep_dir = Path(profile.workdir) / the_sweep.name
    out_dir = out if out is not None else sweep_dir / "report"
    console = _console()
    table = results.collect(the_sweep, profile.workdir, uri, plan=plan)
    states = table.column("state").to_pylist()
    if all(s == "pending" for s in states):
        console.print(
            f"[yellow]warning:[/yellow] no run of {the_sweep.name} has started under "
            f"{sweep_dir.resolve()} nor in MLflow at {uri} (another workdir? "
            "--cluster sets it)",
            soft_wrap=True,
        )
    from scaling.report.adaptive import state_path
    from scaling.rundir import read_json

    page = build_report(
        the_sweep, table, out_dir, story=read_json(state_path(profile.workdir, the_sweep.name))
    )
    print_gaps(console, gaps.gap_table(table), the_sweep.name)
    print_answer(console, out_dir / "fits.json")
    print_cost_check(console, checks.prediction_errors(table))
    print_files(console, out_dir, page)
    where = publish(uri, tracking.experiment_name(the_sweep), out_dir, the_sweep, states)
    if where:
        console.print(f"MLflow: sweep-level run {where}", soft_wrap=True)


def _console() -> Console:
    from rich.console import Console

    # Piped or in CI, rich would assume 80 columns and squeeze every cell.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


# ----------------------------------------------------------------------------- terminal


def print_gaps(console: Console, gap_df: pd.DataFrame, name: str) -> None:
    """The best SimCLR recipe per architecture against supervised, in points."""
    from rich.table import Table

    from scaling.report.gaps import LEVEL, REFERENCE, display_table

    shown = display_table(gap_df)
    # How each top-1 was measured: said once in the title when every row shares it.
    who = {f"{REFERENCE} scored by": REFERENCE, "scored by": "SimCLR"}
    said = {c: shown[c].iloc[0] for c in who if c in shown and shown[c].nunique() == 1}
    shown = shown.drop(columns=list(said))
    how = "; ".join(f"{who[c]}: {v}" for c, v in said.items())
    table = Table(
        title=f"{name}: {REFERENCE} vs SimCLR top-1 (points; ± std over seeds; gap with its "
        f"{LEVEL:.0%} Welch interval)" + (f"; {how}" if how else ""),
        title_justify="left",
    )
    for col in shown.columns:
        left = col in ("architecture", "best recipe", "note")
        table.add_column(
            col, justify="left" if left else "right", no_wrap=col != "note", overflow="fold"
        )
    at = list(shown.columns).index("gap")
    gaps = gap_df.loc[shown.index, "gap"]
    for gap, cells in zip(gaps, shown.itertuples(index=False), strict=True):
        row = list(cells)
        if not _nan(gap):
            colour = "green" if gap < 1 else "red" if gap > 5 else "yellow"
            row[at] = f"[{colour}]{row[at]}[/{colour}]"
        table.add_row(*row)
    console.print(table)


def print_cost_check(console: Console, errors: dict[str, Any]) -> None:
    """The plan's training time against the finished runs' (each run predicted without
    its own measurement)."""
    if not errors["runs"]:
        return
    parts = ", ".join(
        f"{k} {v['runs']} runs {v['median_error']:.0%}" for k, v in errors["by_source"].items()
    )
    console.print(
        f"training time, plan vs measured over {errors['runs']} finished runs: median error "
        f"{errors['median_error']:.0%} ({parts}); per run: `scaling status`"
    )


def print_answer(console: Console, fits_json: Path) -> None:
    """What was measured (gaps at the smallest and largest model, with intervals), the
    fitted curve's extrapolation second, then what limits the numbers."""
    summary = json.loads(fits_json.read_text())
    efficiency = summary.get("label_efficiency") or []
    for line in efficiency:  # the label-efficiency question, measured
        console.print(f"[bold]labels:[/bold] {line}", soft_wrap=True)
    if not summary["answers"] and not efficiency:
        console.print(
            "No answer yet: needs finished supervised and SimCLR runs of the same architectures."
        )
    for a in summary["answers"]:
        console.print(f"[bold]{a['dataset']}, {a['method']}:[/bold] {a['measured']}")
        console.print(f"  {a['extrapolation']}")
        if a.get("compute"):
            console.print(f"  {a['compute']}")
    for warning in summary["validity"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    for why in (summary.get("figures_omitted") or {}).values():
        console.print(why, soft_wrap=True)


def print_files(console: Console, out_dir: Path, page: Path) -> None:
    figures = sorted((out_dir / "figures").glob("*.png"))
    # soft_wrap: paths stay on one line, whole, for copying
    console.print(f"report: {page.resolve().as_uri()}", soft_wrap=True)
    console.print(
        f"  in {out_dir.resolve()}: results.parquet, gaps.csv, fits.json, "
        f"figures/ ({len(figures)} figures, PNG + SVG)",
        soft_wrap=True,
    )


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
