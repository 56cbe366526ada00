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
#: The default table's candidate columns, in order: one is shown when its value varies
#: between runs (identical values are said once, in the title), the cost always.
SPEC_COLUMNS = (
    "depth",
    "width",
    "depth_multiplier",
    "stem",
    "image_size",
    "batch_size",
    "epochs",
    "seed",
    "temperature",
    "lr_rule",
    "base_lr",
    "weight_decay",
    "optimizer",
    "crop_min_scale",
    "augment",
    "projection_dim",
    "color_strength",
)
#: what the trainer will use, resolved (plan.layout.derive): the LR, the steps, the warmup
#: in epochs; the warmup in steps, which follows from them, is said when every run shares
#: it (else --wide, --format json)
DERIVED_COLUMNS = ("lr", "steps", "warmup")
SAID_ONCE = ("warmup_steps",)
LAYOUT_COLUMNS = ("micro_batch", "accum_steps", "gpus", "bn_batch", "bn_grouping", "precision")
#: where the time comes from (measured | scaled | model): a column when it varies
SOURCE_COLUMNS = ("cost_source",)
COST_COLUMNS = ("encoder_params", "peak_memory_gb", "gpu_hours", "predicted_train_s")
#: --wide: evaluation's share of the memory (device peak, feature store on the host)
EVAL_COLUMNS = ("eval_memory_gb", "features_gb")
#: --wide: every column of the earlier table and of the layout
WIDE_COLUMNS = (
    "run_id",
    "method",
    *SPEC_COLUMNS,
    *DERIVED_COLUMNS,
    *SAID_ONCE,
    *LAYOUT_COLUMNS,
    "nodes",
    *SOURCE_COLUMNS,
    *COST_COLUMNS,
    *EVAL_COLUMNS,
)
HEADERS = {
    "batch_size": "batch",
    "depth_multiplier": "d-mult",
    "image_size": "px",
    "temperature": "tau",
    "weight_decay": "wd",
    "warmup": "warmup ep",
    "warmup_steps": "warmup st",
    "bn_grouping": "BN groups",
    "crop_min_scale": "crop",
    "micro_batch": "micro",
    "accum_steps": "accum",
    "bn_batch": "BN",
    "encoder_params": "params",
    "peak_memory_gb": "mem GB",
    "gpu_hours": "dev-h",
    "projection_dim": "proj",
    "color_strength": "colour",
    "cost_source": "cost from",
    "predicted_train_s": "train s",
    "eval_memory_gb": "eval GB",
    "features_gb": "features GB",
}
WIDTH = 120  # the default table fits an ordinary terminal


def plan(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    only: OnlyOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json | csv")] = "table",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the plan as Parquet.")
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every column (the default fits 120 columns).")
    ] = False,
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
        print_plan(the_plan, wide=wide)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def table_columns(
    rows: list[dict[str, Any]], wide: bool
) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """(columns, values every run shares, values each method's runs share) for the table.

    A spec column is a grid axis when its value varies among one method's runs: that is a
    column; a value shared by every run, or by every run of a method, is said once."""
    if wide:
        return [c for c in WIDE_COLUMNS if any(c in r for r in rows)], {}, {}
    methods = sorted({str(r["method"]) for r in rows})
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    shown, common = ["run_id", "method"], {}
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    candidates = (*SPEC_COLUMNS, *DERIVED_COLUMNS, *SAID_ONCE, *LAYOUT_COLUMNS)
    for col in (*candidates, *SOURCE_COLUMNS, *COST_COLUMNS):
        values = {m: {_fmt(col, r.get(col)) for r in rs} for m, rs in by_method.items()}
        everywhere = set().union(*values.values())
        if col in SAID_ONCE and any(len(v) > 1 for v in values.values()):
            continue
        if col in COST_COLUMNS or any(len(v) > 1 for v in values.values()):
            shown.append(col)
        elif len(everywhere) == 1:
            if everywhere != {"-"}:
                common[col] = next(iter(everywhere))
        else:
            for m, v in values.items():
                if v != {"-"}:
                    per_method[m][col] = next(iter(v))
    return shown, common, per_method


def print_plan(the_plan: Any, *, wide: bool = False, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from scaling.plan.planner import totals

    # Piped or in CI, rich would assume 80 columns and squeeze every cell.
    if console is None:
        tty = sys.stdout.isatty()
        console = Console(width=None if tty else (250 if wide else WIDTH))
    acc = the_plan.accelerator
    rows = the_plan.rows()
    columns, common, per_method = table_columns(rows, wide)
    shared = _said(common)
    table = Table(
        title=f"{the_plan.sweep.name}: {len(rows)} runs on {acc.name} "
        f"({acc.memory_gb:.0f} GB, {acc.peak_tflops:.2f} TFLOP/s peak x {acc.utilization:.0%})"
        + (f"; every run: {shared}" if shared else ""),
        title_justify="left",
    )
    for method, values in per_method.items():
        if values:
            table.caption = (table.caption or "") + f"{method} runs: {_said(values)}. "
    table.caption_justify = "left"
    for col in columns:
        table.add_column(
            HEADERS.get(col, col),
            justify="left" if col in ("run_id", "method") else "right",
            no_wrap=True,
            min_width=12 if col == "run_id" else None,
        )
    table.add_column("note", no_wrap=True)
    for row in rows:
        note = (
            "[red]infeasible[/red]"
            if not row["feasible"]
            else ("[yellow]warning[/yellow]" if row["warnings"] else "")
        )
        cells = [_fmt(col, row.get(col)) for col in columns]
        if "cost_source" in columns and row.get("cost_source") == "calibrated":
            cells[columns.index("cost_source")] += f" {_times(row['cost_extrapolation'])}"
        table.add_row(*cells, note)
    console.print(table)
    t = totals(the_plan)
    per_method = ", ".join(f"{m} {n}" for m, n in t["per_method"].items())
    console.print(
        f"runs: {t['runs']} ({per_method}); device-hours: {t['gpu_hours']:.3g}"
        + _by_source(t["by_source"]),
        highlight=False,
    )
    if t["infeasible"]:
        why = "; ".join(f"{n} x {r}" for r, n in t["reasons"].items())
        console.print(f"[red]infeasible: {t['infeasible']}[/red] ({why})")
    for warning, n in t["warnings"].items():
        console.print(f"[yellow]warning[/yellow] ({n} run{'s' * (n != 1)}): {warning}")
    from scaling.plan.checks import sweep_warnings

    for warning in sweep_warnings([r.spec for r in the_plan.runs]):
        console.print(f"[yellow]warning[/yellow]: {warning}")


#: how the totals name each cost source (scaling.plan.throughput)
SOURCE_WORDS = {
    "measured": "measured",
    "scaled": "scaled from measured networks",
    "calibrated": "FLOP model at the measured efficiency",
    "model": "FLOP model",
}


def _by_source(parts: dict[str, dict[str, float]]) -> str:
    """ " (0.02 measured, 0.3 scaled from measured networks, 5.19e+03 FLOP model at the
    measured efficiency: 2 runs extrapolated up to 70,000x beyond the measured networks'
    FLOPs per image)": how much of the total rests on what."""
    if not parts:
        return ""
    said = []
    for source, words in SOURCE_WORDS.items():
        if source in parts:
            part = parts[source]
            text = f"{part['gpu_hours']:.3g} {words}"
            if source == "calibrated":
                runs = int(part["runs"])
                text += (
                    f" ({runs} run{'s' * (runs != 1)} extrapolated up to "
                    f"{_times(part['beyond'])} beyond the measured networks' FLOPs per image "
                    "or image size)"
                )
            said.append(text)
    return " (" + ", ".join(said) + ")"


def _times(factor: float) -> str:
    """70000.0 -> "70,000x", 3.2 -> "3.2x"."""
    return f"{factor:,.0f}x" if factor >= 10 else f"{factor:.2g}x"


def _said(values: dict[str, Any]) -> str:
    """{"depth": 10, "stem": "cifar"} -> "depth 10, stem cifar" (short headers)."""
    return ", ".join(f"{HEADERS.get(k, k)} {v}" for k, v in values.items())


def _fmt(col: str, value: Any) -> str:
    if value is None:
        return "-"
    if col == "encoder_params":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if col in ("lr", "warmup"):
        return f"{value:.3g}"
    if col in ("steps", "warmup_steps"):
        return str(int(value))
    if col in ("peak_memory_gb", "gpu_hours", "predicted_train_s", *EVAL_COLUMNS):
        return f"{value:.3g}"
    return str(value)
