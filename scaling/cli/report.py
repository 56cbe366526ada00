"""`scaling report`: gaps, fits, figures and report.html of a sweep, logged to MLflow.

The report folder (default `<workdir>/<sweep>/report`) is the deliverable; the terminal
gets the gap table, the answer and where the files are; MLflow gets the folder as the
artifacts of ONE sweep-level run (tag `scaling.kind=report`), reused by every later
report of the sweep, so the latest report is one click away in the MLflow UI. MLflow is
a copy here too: a store that cannot be written only warns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scaling.cli.options import ClusterOpt, SetOpt, SweepArg

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from scaling.sweep.spec import Sweep

log = logging.getLogger(__name__)

KIND_TAG, SWEEP_TAG = "scaling.kind", "scaling.sweep"
RUN_TAG, REPORT_TAG = "scaling.run_id", "scaling.report_run"  # a run; its sweep's report run
ARTIFACT_PATH = "report"  # the folder's place among the MLflow run's artifacts

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
    from scaling.plan.expand import make_plan
    from scaling.report import gaps, results
    from scaling.report.html import build_report
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
        console.print(f"[yellow]warning:[/yellow] no run of {the_sweep.name} has started under "
                      f"{sweep_dir.resolve()} nor in MLflow at {uri} (another workdir? "
                      "--cluster sets it)", soft_wrap=True)  # fmt: skip
    page = build_report(the_sweep, table, out_dir)
    print_gaps(console, gaps.gap_table(table), the_sweep.name)
    print_answer(console, out_dir / "fits.json")
    print_cost_check(console, results.prediction_errors(table))
    print_files(console, out_dir, page)
    where = log_report(uri, tracking.experiment_name(the_sweep), out_dir, the_sweep, states)
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
    table = Table(
        title=f"{name}: {REFERENCE} vs SimCLR top-1 (points; ± std over seeds; gap with its "
        f"{LEVEL:.0%} Welch interval)",
        title_justify="left",
    )
    for col in shown.columns:
        left = col in ("architecture", "best recipe", "note")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "note",
                         overflow="fold")
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
    if not summary["answers"]:
        console.print("No answer yet: needs finished supervised and SimCLR runs of the same "
                      "architectures.")  # fmt: skip
    for a in summary["answers"]:
        console.print(f"[bold]{a['dataset']}, {a['method']}:[/bold] {a['measured']}")
        console.print(f"  {a['extrapolation']}")
    for warning in summary["validity"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)


def print_files(console: Console, out_dir: Path, page: Path) -> None:
    figures = sorted((out_dir / "figures").glob("*.png"))
    # soft_wrap: paths stay on one line, whole, for copying
    console.print(f"report: {page.resolve().as_uri()}", soft_wrap=True)
    console.print(f"  in {out_dir.resolve()}: results.parquet, gaps.csv, fits.json, "
                  f"figures/ ({len(figures)} figures, PNG + SVG)", soft_wrap=True)  # fmt: skip


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------- MLflow


def log_report(uri: str, experiment: str, out_dir: Path, sweep: Sweep,
               states: list[str]) -> str | None:  # fmt: skip
    """Upload `out_dir` to the sweep's report run; where to see it, or None (warned)."""
    from scaling.run import tracking

    try:
        with _lock(uri, experiment, sweep.name):
            experiment_id = tracking.ensure_experiment(uri, experiment)
            run_id = _upload(uri, experiment_id, out_dir, sweep, states)
        return tracking.run_hint(uri, experiment_id, run_id)
    except Exception as exc:  # the report on disk is complete; MLflow is a copy
        log.debug("report logging failed", exc_info=True)
        print(f"warning: the report was not logged to MLflow at {uri} ({type(exc).__name__}: "
              f"{exc}); it is complete in {out_dir}", file=sys.stderr)  # fmt: skip
        return None


def _upload(uri: str, experiment_id: str, out_dir: Path, sweep: Sweep, states: list[str]) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri=uri)
    query = f"tags.`{KIND_TAG}` = 'report' and tags.`{SWEEP_TAG}` = '{sweep.name}'"
    found = client.search_runs([experiment_id], query, max_results=10,
                               order_by=["attributes.start_time ASC"])  # fmt: skip
    if found:  # one report run per sweep: the oldest, should a race have made two
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {KIND_TAG: "report", SWEEP_TAG: sweep.name}
        run_id = client.create_run(
            experiment_id, tags=tags, run_name=f"{sweep.name}-report"
        ).info.run_id
    client.log_artifacts(run_id, str(out_dir), artifact_path=ARTIFACT_PATH)
    # The gap table as an MLflow table (the UI's Evaluation/Artifacts view can query it);
    # fits.json and every figure are under ARTIFACT_PATH.
    import pandas as pd

    client.log_table(run_id, data=pd.read_csv(out_dir / "gaps.csv"), artifact_file="gaps.json")
    _link_runs(client, experiment_id, sweep.name, run_id)
    now = int(time.time() * 1000)
    counts = {
        f"runs_{s}": float(states.count(s)) for s in ("finished", "failed", "running", "pending")
    }
    note = _note(out_dir, sweep, counts)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in counts.items()],
        tags=[RunTag("mlflow.note.content", note), RunTag("scaling.report_dir", str(out_dir.resolve())),
              RunTag("scaling.report_time", time.strftime("%Y-%m-%d %H:%M:%S %z"))],
    )  # fmt: skip
    client.set_terminated(run_id, status="FINISHED")
    return str(run_id)


def _link_runs(client: Any, experiment_id: str, sweep: str, report_run_id: str) -> None:
    """Tag every run of the sweep with its report run (`scaling.report_run`), once."""
    from mlflow.entities import RunTag

    query = f"tags.`{SWEEP_TAG}` = '{sweep}'"  # the report run itself has no RUN_TAG
    token = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        for run in page:
            if run.data.tags.get(REPORT_TAG) != report_run_id and RUN_TAG in run.data.tags:
                client.log_batch(run.info.run_id, tags=[RunTag(REPORT_TAG, report_run_id)])
        token = page.token
        if not token:
            return


def _note(out_dir: Path, sweep: Sweep, counts: dict[str, float]) -> str:
    """The run's description in the MLflow UI: the answer and where the page is."""
    fits = json.loads((out_dir / "fits.json").read_text())
    lines = [f"**{sweep.name}**: {sweep.description}".rstrip(": "), "",
             ", ".join(f"{int(v)} {k.removeprefix('runs_')}" for k, v in counts.items()) + " runs.",
             ""]  # fmt: skip
    lines += [f"- {g['statement']}" for g in fits["gaps"] if g["headline"]]
    lines += ["", f"Open `{ARTIFACT_PATH}/report.html` under Artifacts for figures and tables."]
    return "\n".join(lines)


@contextlib.contextmanager
def _lock(uri: str, experiment: str, sweep: str) -> Iterator[None]:
    """Serialise report uploads of one sweep on this machine, so that two racing reports
    never create two report runs (across machines the oldest run is reused)."""
    import fcntl

    key = hashlib.sha256(f"{uri}\0{experiment}\0{sweep}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"scaling-report-{key}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
