"""The results table: one row per run of a sweep, whatever its state.

`collect` reads each run's directory (`<workdir>/<sweep>/<run_id>/`: result.json,
failure.json, spec.json, metrics.jsonl), the local truth, and, for runs whose directory
says nothing final (a run that ran on a machine whose workdir is not shared), MLflow
through `scaling.run.tracking.find_runs`. `write` stores it as Parquet; `load` reads it
back as a pyarrow Table (call `.to_pandas()` in notebooks).

Schema (one row per run; null where a value does not apply or is not known yet):

| column | type | meaning |
| --- | --- | --- |
| run_id, sweep, method | string | identity |
| dataset, image_size, depth, width, stem, depth_multiplier, seed | | the run spec (RunSpec.flat()) |
| batch_size, epochs, lr_rule, base_lr, weight_decay, warmup_epochs, optimizer, momentum | | method config |
| temperature, projection_dim, color_strength, eval_* | | SimCLR-only config (null for supervised) |
| lr | float64 | the scaled learning rate actually used (result.json derived.lr, or the plan's) |
| micro_batch, accum_steps, gpus, nodes | int64 | layout (result.json or spec.json, or the plan's) |
| bn_batch | int64 | images batch norm normalised over, per view (micro-batch x SyncBN ranks) |
| bn_grouping | string | which images shared a BN batch: views_together (the official) or second_view_shuffled (shuffle-BN) |
| precision | string | bf16 or fp32 (auto before a run resolves it on its device) |
| warnings | string | the plan's validity warnings, `; `-separated (scaling.plan.checks) |
| encoder_params, flops_per_image | int64 | architecture cost (plan, result.json, or scaling.plan.costs) |
| peak_memory_gb, gpu_hours | float64 | the plan's estimates, evaluation included (null without a plan) |
| warmup, warmup_steps | float64, int64 | the plan's resolved warmup in epochs and steps |
| eval_memory_gb, features_gb | float64 | evaluation's device peak and host feature store (the plan's) |
| predicted_train_s | float64 | the plan's training time (wall seconds of the steps; evaluation excluded) |
| cost_source | string | what that prediction rests on: measured, scaled, calibrated or model (scaling.plan.throughput) |
| cost_extrapolation | float64 | how many times beyond the measured networks' FLOPs per image (1: within them) |
| state | string | scaling.run.state: finished, running (its process holds the lock), failed, resumable (checkpoints) or pending |
| error_kind, error_message | string | from failure.json or the MLflow tag scaling.failure_kind |
| top1, top5, knn_top1 | float64 | final metrics, fractions in [0, 1] (knn_top1: SimCLR only) |
| val_top1 | float64 | top-1 on the held-out tenth of the labelled training images no method trained on (recipe selection) |
| converged | bool | a finished run's verdict on its training curve (scaling.train.convergence) |
| convergence | string | what the verdict rests on: "train top-1 0.35, loss still falling" |
| train_top1 | float64 | the last epoch's training accuracy |
| train_flops, wall_time_s | float64 | training compute (FLOPs) and wall time of a finished run |
| train_time_s | float64 | of that wall time, the training steps' (what predicted_train_s predicts) |
| images_seen, steps, epochs_done | int64 | progress (epochs_done from metrics.jsonl while running) |
| source | string | where the state came from: rundir or mlflow (null: pending) |
| mlflow_run_id | string | the run's MLflow id when tracking knows it |

Schema metadata: `scaling.sweep` (name) and `scaling.orphans` (JSON list of run
directories in the sweep's folder that no run of the current spec owns).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from scaling.run.state import run_state
from scaling.rundir import (
    SPEC,
    atomic_write_bytes,
    read_json,
)
from scaling.sweep.config import flat_config
from scaling.sweep.methods import METHODS, Evaluation, Protocol
from scaling.sweep.spec import RunSpec, Sweep

log = logging.getLogger(__name__)

INT, FLOAT, STR, BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()
#: The table's columns by concept, each with its Arrow type: the one definition every
#: reader and writer of the table follows (columns not named here are typed by value).
SPEC_TYPES = {
    **dict.fromkeys(("run_id", "sweep", "method", "dataset", "stem"), STR),
    **dict.fromkeys(("image_size", "depth", "seed"), INT),
    **dict.fromkeys(("width", "depth_multiplier"), FLOAT),
}
CONFIG_TYPES = {
    **dict.fromkeys(("lr_rule", "optimizer", "augment", "eval_protocol"), STR),
    "label_fraction": FLOAT,
    **dict.fromkeys(("batch_size", "epochs", "projection_dim", "eval_epochs"), INT),
    **dict.fromkeys(("eval_batch_size", "eval_knn_k"), INT),
    **dict.fromkeys(("base_lr", "weight_decay", "warmup_epochs", "momentum"), FLOAT),
    **dict.fromkeys(("temperature", "color_strength", "eval_lr", "eval_weight_decay"), FLOAT),
    "eval_knn_temperature": FLOAT,
}
LAYOUT_TYPES = {
    **dict.fromkeys(("micro_batch", "accum_steps", "gpus", "nodes", "bn_batch"), INT),
    **dict.fromkeys(("bn_grouping", "precision"), STR),
}
PLAN_TYPES = {
    **dict.fromkeys(("lr", "peak_memory_gb", "gpu_hours", "predicted_train_s"), FLOAT),
    "cost_extrapolation": FLOAT,
    **dict.fromkeys(("warmup", "eval_memory_gb", "features_gb"), FLOAT),
    "warmup_steps": INT,  # and `steps`, the outcome's column (planned, then as taken)
    **dict.fromkeys(("encoder_params", "flops_per_image"), INT),
    **dict.fromkeys(("cost_source", "reason", "warnings", "labels"), STR),
}
METRIC_TYPES = {
    **dict.fromkeys(("top1", "top5", "knn_top1", "val_top1", "train_top1"), FLOAT),
    "converged": BOOL,
    "convergence": STR,
    **dict.fromkeys(("train_flops", "wall_time_s", "train_time_s"), FLOAT),
    **dict.fromkeys(("images_seen", "steps", "epochs_done"), INT),
}
OUTCOME_TYPES = {
    "state": STR,
    **dict.fromkeys(("eval_id", "protocol"), STR),
    **METRIC_TYPES,
    **dict.fromkeys(("error_kind", "error_message", "source", "mlflow_run_id"), STR),
}
TYPES = {**SPEC_TYPES, **CONFIG_TYPES, **LAYOUT_TYPES, **PLAN_TYPES, **OUTCOME_TYPES}

ARCH_COLUMNS = ("dataset", "image_size", "stem", "depth", "width", "depth_multiplier")
METRIC_COLUMNS = tuple(METRIC_TYPES)
LAYOUT_COLUMNS = tuple(LAYOUT_TYPES)
#: Columns that are not part of a training recipe (identity, architecture, layout, cost,
#: outcome): every other spec column that varies is a recipe axis (batch, epochs, ...).
NOT_RECIPE = {
    "run_id",
    "label_fraction",  # a dimension of its own: a gap per fraction
    "sweep",
    "method",
    "seed",
    *ARCH_COLUMNS,
    *LAYOUT_TYPES,
    *PLAN_TYPES,
    "feasible",
    *OUTCOME_TYPES,
}
_PENDING: dict[str, Any] = {"state": "pending"}


def collect(
    sweep: Sweep, workdir: str | Path, uri: str | None = None, *, plan: Any = None
) -> pa.Table:
    """One row per run of `sweep`: spec, layout, cost, state and final metrics.

    `uri`: an MLflow tracking URI to consult for runs whose directory has no final
    state (None: run directories only). `plan`: a `scaling.plan.planner.Plan` (or its
    `.table()`) whose layout and cost columns to use; without one, costs come from
    result.json or, for architectures still unknown, from `scaling.plan.costs` (imports torch).
    A Plan also says which runs exist (a BN batch smaller than the batch is part of a
    run's identity, and only the layout tells); a table or None: the sweep's own runs.
    """
    runs = tuple(r.spec for r in plan.runs) if hasattr(plan, "runs") else sweep.runs
    planned = _plan_rows(plan)
    tracked = _tracked_runs(sweep, uri) if uri else {}
    sweep_dir = Path(workdir) / sweep.name
    present = set(os.listdir(sweep_dir)) if sweep_dir.is_dir() else set()
    rows, specs = [], []
    for spec in runs:
        row = dict(planned.get(spec.run_id) or spec.flat())
        row["sweep"] = sweep.name
        found = _from_dir(sweep_dir / spec.run_id) if spec.run_id in present else _PENDING
        result = found.pop("_result", None)
        row.update(found)
        mlflow_run = tracked.get(spec.run_id)
        if mlflow_run:
            row["mlflow_run_id"] = mlflow_run.get("mlflow_run_id")
            if row["state"] in ("pending", "running"):
                row.update(_from_mlflow(mlflow_run, row["state"]))
        for evaluated in evaluation_rows(spec, row, result):
            rows.append(evaluated)
            specs.append(spec)
    _fill_costs(rows, specs)
    orphans = sorted(present - {s.run_id for s in runs} - {"report"})
    orphans = [o for o in orphans if not o.startswith(".") and (sweep_dir / o / SPEC).exists()]
    return to_table(rows, {"scaling.sweep": sweep.name, "scaling.orphans": json.dumps(orphans)})


def _plan_rows(plan: Any) -> dict[str, dict[str, Any]]:
    if plan is None:
        return {}
    rows = plan.to_pylist() if isinstance(plan, pa.Table) else plan.rows()
    return {r["run_id"]: {k: v for k, v in r.items() if k not in OUTCOME_TYPES} for r in rows}


def _from_dir(run_dir: Path) -> dict[str, Any]:
    """State, metrics and layout from one run directory (scaling.run.state.run_state:
    the state `submit` and `status` see), plus the layout spec.json planned."""
    st = run_state(run_dir)
    if not st.exists:
        return _PENDING
    out: dict[str, Any] = {"source": "rundir", "state": st.state.value, "epochs_done": st.epoch}
    if st.result is not None:
        out.update(_result_fields(st.result))
        verdict = st.convergence
        if verdict is not None:
            out.update(
                converged=verdict.converged,
                convergence=verdict.describe(),
                train_top1=verdict.train_top1,
            )
        return {**out, "_result": st.result}
    if st.failure is not None:
        out.update(
            error_kind=str(st.failure.get("kind", "error")),
            error_message=str(st.failure.get("message", "")),
        )
    spec = read_json(run_dir / SPEC)
    if spec and isinstance(spec.get("layout"), Mapping):
        out.update({k: spec["layout"].get(k) for k in LAYOUT_COLUMNS})
    return out


#: what an evaluation measured (the rest of a row is its run's)
EVAL_METRICS = ("top1", "top5", "knn_top1", "val_top1")


def evaluation_rows(
    spec: RunSpec, row: Mapping[str, Any], result: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """One row per evaluation of the run (`RunSpec.evaluations`: protocol x label
    fraction): its eval_id, protocol, label_fraction and eval_* recipe, and its metrics
    from the run's result (a finished run that has not made an evaluation added to its
    sweep since: `resumable` without metrics, which `submit` evaluates)."""
    listed = None if result is None else result.get("evaluations")
    by_id = {e.get("eval_id"): e for e in listed or []}
    evaluations = spec.evaluations()
    out = []
    for i, item in enumerate(evaluations):
        ev = {k: v for k, v in row.items() if not k.startswith("eval_")}
        recipe = {
            k: v for k, v in item.items() if k not in ("label_fraction", "eval_id", "label_list")
        }
        ev.update(flat_config(recipe, "eval_"))
        ev.update(eval_id=item["eval_id"], label_fraction=item["label_fraction"])
        ev["protocol"] = item["protocol"]
        if listed is not None or (result is not None and i > 0):
            done = by_id.get(item["eval_id"])
            ev.update({k: (done or {}).get(k) for k in EVAL_METRICS})
            if done is None and ev.get("state") == "finished":
                ev["state"] = "resumable"
        out.append(ev)
    return out


def _result_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        k: result.get(k)
        for k in (
            "top1",
            "top5",
            "knn_top1",
            "val_top1",
            "train_flops",
            "wall_time_s",
            "images_seen",
            "steps",
        )
    }
    out["epochs_done"] = result.get("epochs")
    layout = result.get("layout")
    if isinstance(layout, Mapping):
        out.update({k: layout.get(k) for k in LAYOUT_COLUMNS})
    speed = result.get("throughput")
    if isinstance(speed, Mapping):
        out["train_time_s"] = speed.get("train_time_s")
    derived = result.get("derived")
    if isinstance(derived, Mapping) and derived.get("lr") is not None:
        out["lr"] = derived["lr"]
    for key in ("encoder_params", "flops_per_image"):  # written by newer trainers
        if result.get(key) is not None:
            out[key] = result[key]
    return out


def _tracked_runs(sweep: Sweep, uri: str) -> dict[str, dict[str, Any]]:
    """MLflow's view of the sweep; {} (with a warning) when tracking cannot answer."""
    try:
        from scaling.run import tracking

        return tracking.find_runs(uri, tracking.experiment_name(sweep))
    except Exception as exc:  # tracking never breaks a report: run directories suffice
        log.warning("MLflow at %s could not be read (%s); using run directories only", uri, exc)
        return {}


def _from_mlflow(run: Mapping[str, Any], current: str) -> dict[str, Any]:
    """State, metrics and layout from find_runs' record of one run (tracking.py's names)."""
    status = str(run.get("status", "")).upper()
    metrics, tags, params = run.get("metrics") or {}, run.get("tags") or {}, run.get("params") or {}
    layout = {k: int(params[k]) for k in LAYOUT_COLUMNS if str(params.get(k, "")).isdigit()}
    if status == "FINISHED" and metrics.get("top1") is not None:
        keys = ("top1", "top5", "knn_top1", "val_top1", "train_flops", "wall_time_s", "images_seen")
        verdict = tags.get("scaling.converged")  # scaling.run.mirror's CONVERGED_TAG
        return {
            "state": "finished",
            "source": "mlflow",
            **layout,
            **{k: metrics.get(k) for k in keys},
            "converged": None if verdict is None else verdict == "true",
            "convergence": tags.get("scaling.convergence"),
        }
    if status in ("FAILED", "KILLED"):
        message = tags.get("scaling.failure_message") or f"MLflow run status {status}"
        kind = tags.get("scaling.failure_kind", "error")
        return {"state": "failed", "source": "mlflow", "error_kind": kind, "error_message": message}
    if status == "RUNNING" and current == "pending":
        return {"state": "running", "source": "mlflow", **layout}
    return {}


def _cost_key(spec: RunSpec) -> tuple[Any, ...]:
    """What decides encoder_params and flops_per_image: the network and its input."""
    return (
        spec.method,
        tuple(sorted(spec.model.items())),
        spec.dataset["name"],
        spec.dataset["image_size"],
        spec.config.get("projection_dim", 128),
    )


def _fill_costs(rows: list[dict[str, Any]], specs: list[RunSpec]) -> None:
    """encoder_params / flops_per_image for rows that lack them: from a run of the same
    network that has them (result.json), else from scaling.plan.costs (imports torch)."""
    known: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for row, spec in zip(rows, specs, strict=True):
        if row.get("encoder_params") is not None and row.get("flops_per_image") is not None:
            known.setdefault(_cost_key(spec), (row["encoder_params"], row["flops_per_image"]))
    for row, spec in zip(rows, specs, strict=True):
        if row.get("encoder_params") is None or row.get("flops_per_image") is None:
            key = _cost_key(spec)
            if key not in known:
                known[key] = _arch_cost(spec)
            row["encoder_params"], row["flops_per_image"] = known[key]


def _arch_cost(spec: RunSpec) -> tuple[int, int]:
    from scaling.plan import costs
    from scaling.plan.data_info import num_classes

    cost = costs.arch_cost(
        spec.method,
        spec.model["depth"],
        spec.model["width"],
        spec.model["stem"],
        spec.model["depth_multiplier"],
        spec.dataset["image_size"],
        int(spec.config.get("projection_dim", 128)),
        num_classes(spec.dataset),
    )
    return cost.encoder_params, cost.flops_per_image


def to_table(
    rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, str] | None = None
) -> pa.Table:
    """Rows (dicts) -> a Table with the documented column types, in a stable order."""
    rows = list(rows)
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    for col in OUTCOME_TYPES:
        keys.setdefault(col)
    columns = {k: _column(k, [r.get(k) for r in rows]) for k in keys}
    table = pa.table(columns)
    return table.replace_schema_metadata(dict(metadata or {}))


def _column(name: str, values: list[Any]) -> pa.Array:
    values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    kind = TYPES.get(name)
    if kind == INT:
        return pa.array([None if v is None else int(v) for v in values], INT)
    if kind == FLOAT:
        return pa.array([None if v is None else float(v) for v in values], FLOAT)
    if kind == STR:
        return pa.array([None if v is None else str(v) for v in values], STR)
    if kind == BOOL:
        return pa.array([None if v is None else bool(v) for v in values], BOOL)
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float} and float in kinds:
        return pa.array([None if v is None else float(v) for v in values], FLOAT)
    if len(kinds) > 1:
        return pa.array([None if v is None else str(v) for v in values], STR)
    return pa.array(values) if kinds else pa.array(values, pa.null())


def write(table: pa.Table, path: str | Path) -> Path:
    """Parquet, written to a temporary name and renamed (readers never see half a file)."""
    import pyarrow.parquet as pq

    path = Path(path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def load(path: str | Path) -> pa.Table:
    """A results table: a .parquet file, or a report folder holding results.parquet."""
    import pyarrow.parquet as pq

    from scaling.errors import ScalingError

    path = Path(path)
    for candidate in (path, path / "results.parquet", path / "report" / "results.parquet"):
        if candidate.is_file():
            return pq.read_table(candidate)
    raise ScalingError(
        f"no results at {path}: give a results.parquet file or the folder `scaling report` "
        "wrote (it holds results.parquet)"
    )


def recipe_columns(frame: Any) -> list[str]:
    """Config columns that vary among `frame`'s rows (a pandas DataFrame of one method);
    batch_size and epochs always come first, so labels read like the paper's."""
    # An evaluation's setting that another protocol lacks (null there) is not an axis.
    cols = [
        c
        for c in frame.columns
        if c not in NOT_RECIPE and frame[c].nunique(dropna=c.startswith("eval_")) > 1
    ]
    head = [c for c in ("batch_size", "epochs") if c in frame.columns]
    return head + [c for c in cols if c not in head]


def arch_label(depth: Any, width: Any, depth_multiplier: Any = 1) -> str:
    """The architecture as the paper names it: "R50 2x", "R18 0.5x d2" (depth multiplier 2)."""
    mult = "" if depth_multiplier in (None, 1) else f" d{float(depth_multiplier):g}"
    return f"R{int(depth)} {float(width):g}x{mult}"


def protocol_label(row: Mapping[str, Any]) -> str:
    """How a run's top-1 was measured (its method's registered evaluation and its eval_*
    columns): "linear eval (crop+flip, 100 epochs, batch 512)" for the official protocol,
    "linear eval (fixed features, ...)" for the fast one, "own classifier" for a network
    scored by its own head; "" for a method this version does not know."""
    info = METHODS.get(str(row.get("method")))
    if info is None:
        return ""
    if info.evaluation is Evaluation.OWN_HEAD:
        return "own classifier"
    protocol = row.get("eval_protocol")
    if not isinstance(protocol, str):
        return "linear eval"
    if protocol == Protocol.FINETUNE:
        epochs = row.get("eval_finetune_epochs")
        said = "60 epochs at 1%, 30 above" if _missing(epochs) else f"{_int(epochs)} epochs"
        return f"fine-tuned ({said}, batch {_int(row.get('eval_finetune_batch_size'))})"
    parts = ["crop+flip" if protocol == "augmented" else "fixed features"]
    if row.get("eval_epochs") is not None:
        parts.append(f"{_int(row['eval_epochs'])} epochs")
    if row.get("eval_batch_size") is not None:
        parts.append(f"batch {_int(row['eval_batch_size'])}")
    if row.get("eval_standardize") is True:
        parts.append("standardised")
    return f"linear eval ({', '.join(parts)})"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def recipe_label(values: Mapping[str, Any]) -> str:
    """{"batch_size": 256, "epochs": 100} -> "batch 256, 100 epochs" (others as key=value)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if key == "batch_size":
            parts.append(f"batch {value}")
        elif key == "epochs":
            parts.append(f"{value} epoch{'' if value == 1 else 's'}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)
