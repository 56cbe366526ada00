"""`scaling plan`: every run of a sweep with its layout, memory and cost."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from scaling.cli.options import ClusterOpt, OnlyOpt, SetOpt, SweepArg
from scaling.errors import SpecError

FORMATS = ("table", "json", "csv")
TABLE_COLUMNS = (
    "run_id", "method", "depth", "width", "batch_size", "epochs", "seed", "lr",
    "micro_batch", "accum_steps", "gpus", "bn_batch", "encoder_params", "peak_memory_gb",
    "gpu_hours",
)  # fmt: skip


def plan(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    only: OnlyOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json | csv")] = "table",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the plan as Parquet.")
    ] = None,
) -> None:
    """Expand SWEEP into runs and show each one's layout, memory and cost."""
    from scaling.run.planning import build_plan

    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    the_plan = build_plan(sweep, cluster, set_ or [], only)
    rows = the_plan.rows()
    if out is not None:
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(the_plan.table(), out)
    if fmt == "json":
        json.dump([_jsonable(r) for r in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif fmt == "csv":
        fields = list(dict.fromkeys(k for row in rows for k in row))  # methods add columns
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_plan(the_plan)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def print_plan(the_plan: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from scaling.plan.expand import totals

    # Piped or in CI, rich would assume 80 columns and squeeze every cell.
    console = Console(width=None if sys.stdout.isatty() else 220)
    acc = the_plan.accelerator
    table = Table(
        title=f"{the_plan.sweep.name}: {len(the_plan.runs)} runs on {acc.name} "
        f"({acc.memory_gb:.0f} GB, {acc.peak_tflops:.2f} TFLOP/s peak x {acc.utilization:.0%})",
        title_justify="left",
    )
    for col in TABLE_COLUMNS:
        table.add_column(
            col, justify="left" if col in ("run_id", "method") else "right", no_wrap=True
        )
    table.add_column("note")
    for row in the_plan.rows():
        cells = [_fmt(col, row.get(col)) for col in TABLE_COLUMNS]
        note = f"[red]{row['reason']}[/red]" if not row["feasible"] else ""
        table.add_row(*cells, note or ("[yellow]see warnings[/yellow]" if row["warnings"] else ""))
    console.print(table)
    t = totals(the_plan)
    per_method = ", ".join(f"{m} {n}" for m, n in t["per_method"].items())
    console.print(f"runs: {t['runs']} ({per_method}); device-hours: {t['gpu_hours']:.3g}")
    if t["infeasible"]:
        why = "; ".join(f"{n} x {r}" for r, n in t["reasons"].items())
        console.print(f"[red]infeasible: {t['infeasible']}[/red] ({why})")
    for warning, n in t["warnings"].items():
        console.print(f"[yellow]warning[/yellow] ({n} run{'s' * (n != 1)}): {warning}")


def _fmt(col: str, value: Any) -> str:
    if value is None:
        return "-"
    if col == "encoder_params":
        return f"{value / 1e6:.2f}M"
    if col == "lr":
        return f"{value:.3g}"
    if col in ("peak_memory_gb", "gpu_hours"):
        return "-" if isinstance(value, float) and math.isnan(value) else f"{value:.3g}"
    return str(value)
