from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from scaling.errors import ScalingError
from scaling.report import results
from scaling.sweep.spec import Sweep, load_sweep

SWEEP = """
name: tiny
dataset: {name: digits, image_size: 16}
model: {depth: 10, width: [0.25, 0.5, 1.0], stem: cifar}
methods:
  simclr: {batch_size: 64, epochs: 2}
  supervised: {batch_size: 64, epochs: 2}
"""


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def layout(micro: int = 32, accum: int = 2) -> dict[str, int]:
    return {"micro_batch": micro, "accum_steps": accum, "gpus": 1, "nodes": 1}


@pytest.fixture
def sweep_and_dirs(weird_tmp_path: Path) -> tuple[Sweep, Path, dict[str, str]]:
    """simclr 0.25x finished, 0.5x failed (oom), 1x started (running while a test holds its
    lock); supervised 0.25x finished
    (result.json without costs), 0.5x pending, 1x never started; plus an orphan dir."""
    (weird_tmp_path / "s.yaml").write_text(SWEEP)
    sweep = load_sweep(weird_tmp_path / "s.yaml")
    work = weird_tmp_path / "work"
    ids = {f"{r.method}{r.model['width']:g}": r.run_id for r in sweep.runs}
    d = lambda key: work / "tiny" / ids[key]  # noqa: E731
    spec = {"layout": layout()}
    write_json(d("simclr0.25") / "spec.json", spec)
    write_json(
        d("simclr0.25") / "result.json",
        {
            "run_id": ids["simclr0.25"],
            "method": "simclr",
            "top1": 0.75,
            "top5": 0.97,
            "knn_top1": 0.7,
            "epochs": 2,
            "steps": 44,
            "images_seen": 2816,
            "train_flops": 1.5e12,
            "wall_time_s": 12.5,
            "derived": {"lr": 0.6},
            "layout": layout(),
            "encoder_params": 1234,
            "flops_per_image": 5678,
        },
    )
    write_json(d("simclr0.5") / "spec.json", spec)
    (d("simclr0.5") / "metrics.jsonl").write_text(
        '{"epoch": 1}\n{"epoch": 2}\n{"epo'
    )  # torn last line
    write_json(
        d("simclr0.5") / "failure.json", {"kind": "oom", "message": "CUDA out of memory", "step": 7}
    )
    write_json(d("simclr1") / "spec.json", {"layout": layout(16, 4)})
    (d("simclr1") / "metrics.jsonl").write_text('{"epoch": 1}\n')
    write_json(
        d("supervised0.25") / "result.json",
        {
            "run_id": ids["supervised0.25"],
            "method": "supervised",
            "top1": 0.9,
            "top5": 0.99,
            "epochs": 2,
            "train_flops": 7e11,
            "wall_time_s": 3.0,
            "layout": layout(64, 1),
        },
    )
    d("supervised0.5").mkdir(parents=True)  # created, nothing written yet
    write_json(work / "tiny" / "0123456789ab" / "spec.json", {})  # an orphan
    return sweep, work, ids


def plan_rows(sweep: Sweep) -> pa.Table:
    """What `scaling plan` gives for these runs (costs made up, so no torch here)."""
    rows = [
        {
            **r.flat(),
            "lr": 0.1,
            "micro_batch": 64,
            "accum_steps": 1,
            "gpus": 1,
            "nodes": 1,
            "encoder_params": 1000 + i,
            "flops_per_image": 2000 + i,
            "peak_memory_gb": 0.5,
            "gpu_hours": 0.01,
            "feasible": True,
            "reason": "",
        }
        for i, r in enumerate(sweep.runs)
    ]
    return pa.Table.from_pylist(rows)


def test_collect_reads_every_state_from_run_directories(sweep_and_dirs) -> None:
    from scaling.run.locks import run_lock

    sweep, work, ids = sweep_and_dirs
    with run_lock(work / "tiny" / ids["simclr1"]):  # its trainer is alive: running
        table = results.collect(sweep, work, plan=plan_rows(sweep))
    assert table.num_rows == 6
    rows = {r["run_id"]: r for r in table.to_pylist()}
    done = rows[ids["simclr0.25"]]
    assert done["state"] == "finished" and done["source"] == "rundir"
    assert (done["top1"], done["knn_top1"], done["train_flops"], done["epochs_done"]) == (
        0.75,
        0.7,
        1.5e12,
        2,
    )
    assert (done["micro_batch"], done["accum_steps"], done["lr"]) == (
        32,
        2,
        0.6,
    )  # the run's, not the plan's
    assert (done["encoder_params"], done["peak_memory_gb"]) == (1234, 0.5)
    failed = rows[ids["simclr0.5"]]
    assert failed["state"] == "failed" and failed["error_kind"] == "oom"
    assert failed["error_message"] == "CUDA out of memory" and failed["epochs_done"] == 2
    assert failed["top1"] is None
    running = rows[ids["simclr1"]]
    assert (
        running["state"] == "running"
        and running["epochs_done"] == 1
        and running["micro_batch"] == 16
    )
    assert rows[ids["supervised0.25"]]["state"] == "finished"
    # judged from its curve (none was recorded): never shown converged without one
    assert rows[ids["supervised0.25"]]["converged"] is False
    assert rows[ids["supervised0.25"]]["convergence"] == "no training curve recorded"
    assert (
        rows[ids["supervised0.5"]]["state"] == "pending"
        and rows[ids["supervised1"]]["state"] == "pending"
    )
    assert rows[ids["supervised1"]]["source"] is None
    assert json.loads(table.schema.metadata[b"scaling.orphans"]) == ["0123456789ab"]


def test_column_types_follow_the_documented_schema(sweep_and_dirs) -> None:
    sweep, work, _ = sweep_and_dirs
    schema = results.collect(sweep, work, plan=plan_rows(sweep)).schema
    for name in ("top1", "top5", "knn_top1", "train_flops", "wall_time_s", "width", "lr"):
        assert schema.field(name).type == pa.float64(), name
    for name in (
        "depth",
        "seed",
        "batch_size",
        "epochs",
        "encoder_params",
        "micro_batch",
        "epochs_done",
    ):
        assert schema.field(name).type == pa.int64(), name
    for name in ("run_id", "method", "state", "error_kind", "stem", "lr_rule", "source"):
        assert schema.field(name).type == pa.string(), name
    assert schema.field("converged").type == pa.bool_()
    assert schema.field("convergence").type == pa.string()


def test_costs_come_from_a_sibling_run_of_the_same_network(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "s.yaml").write_text(SWEEP.replace("[0.25, 0.5, 1.0]", "0.25") + "seeds: [0, 1]\n")
    sweep = load_sweep(tmp_path / "s.yaml")
    by = {(r.method, r.seed): r.run_id for r in sweep.runs}
    for method, flops in (("simclr", 5678), ("supervised", 999)):
        write_json(
            tmp_path / "w" / "tiny" / by[(method, 0)] / "result.json",
            {"top1": 0.5, "encoder_params": 1234, "flops_per_image": flops},
        )

    def no_torch(spec: Any) -> Any:
        raise AssertionError("scaling.plan.costs should not be needed")

    monkeypatch.setattr(results, "_arch_cost", no_torch)
    rows = results.collect(sweep, tmp_path / "w").to_pylist()
    assert sorted(
        (r["method"], r["seed"], r["state"], r["encoder_params"], r["flops_per_image"])
        for r in rows
    ) == [
        ("simclr", 0, "finished", 1234, 5678),
        ("simclr", 1, "pending", 1234, 5678),
        ("supervised", 0, "finished", 1234, 999),
        ("supervised", 1, "pending", 1234, 999),
    ]


def test_costs_for_unknown_networks_come_from_scaling_costs(sweep_and_dirs) -> None:
    from scaling.plan import costs

    sweep, work, ids = sweep_and_dirs
    rows = {r["run_id"]: r for r in results.collect(sweep, work).to_pylist()}
    cost = costs.arch_cost("supervised", 10, 1.0, "cifar", 1.0, 16, 128, 10)
    assert rows[ids["supervised1"]]["encoder_params"] == cost.encoder_params
    assert rows[ids["supervised1"]]["flops_per_image"] == cost.flops_per_image


def test_write_and_load_round_trip(sweep_and_dirs, tmp_path: Path) -> None:
    sweep, work, _ = sweep_and_dirs
    table = results.collect(sweep, work, plan=plan_rows(sweep))
    path = results.write(table, tmp_path / "report" / "results.parquet")
    for where in (path, tmp_path / "report", tmp_path):
        back = results.load(where)
        assert back.equals(table) and back.schema.metadata == table.schema.metadata
    with pytest.raises(ScalingError, match="no results at"):
        results.load(tmp_path / "nowhere")


def test_a_sweep_never_run_is_all_pending(weird_tmp_path: Path) -> None:
    (weird_tmp_path / "s.yaml").write_text(SWEEP)
    sweep = load_sweep(weird_tmp_path / "s.yaml")
    table = results.collect(sweep, weird_tmp_path / "none", plan=plan_rows(sweep))
    assert set(table.column("state").to_pylist()) == {"pending"}
    assert table.column("top1").null_count == 6


def test_mlflow_states_fill_in_where_run_directories_say_nothing() -> None:
    finished = {
        "status": "FINISHED",
        "metrics": {"top1": 0.8, "top5": 0.9, "train_flops": 1e12},
        "tags": {},
    }
    out = results._from_mlflow(finished, "pending")
    assert out["state"] == "finished" and out["source"] == "mlflow" and out["top1"] == 0.8
    failed = {"status": "FAILED", "metrics": {}, "tags": {"scaling.failure_kind": "diverged"}}
    assert results._from_mlflow(failed, "running")["error_kind"] == "diverged"
    assert results._from_mlflow({"status": "RUNNING"}, "pending") == {
        "state": "running",
        "source": "mlflow",
    }
    assert results._from_mlflow({"status": "RUNNING"}, "running") == {}


def test_recipe_columns_and_labels() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "seed": [0, 1],
            "batch_size": [256, 256],
            "epochs": [100, 200],
            "temperature": [0.1, 0.5],
            "top1": [0.5, 0.6],
            "depth": [18, 50],
        }
    )
    assert results.recipe_columns(df) == ["batch_size", "epochs", "temperature"]
    assert results.recipe_label({"batch_size": 256, "epochs": 100.0, "temperature": 0.1}) == (
        "batch 256, 100 epochs, temperature=0.1"
    )


@pytest.mark.slow
def test_collect_reads_mlflow_for_runs_whose_directory_is_elsewhere(tmp_path: Path) -> None:
    """A real SQLite MLflow store, filled by scaling.run.mirror.push from run directories
    that collect() cannot see (another machine's workdir)."""
    from scaling.run import mirror, tracking

    (tmp_path / "s.yaml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "s.yaml")
    by = {f"{r.method}{r.model['width']:g}": r for r in sweep.runs}
    uri = tracking.sqlite_uri(tmp_path / "mlflow.db")
    elsewhere = tmp_path / "elsewhere"
    for key, final in (("simclr0.25", "result.json"), ("supervised0.5", "failure.json")):
        run_dir = elsewhere / "tiny" / by[key].run_id
        write_json(run_dir / "spec.json", {**by[key].to_dict(), "layout": layout(16, 4)})
        (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n')
        if final == "result.json":
            write_json(
                run_dir / final,
                {
                    "run_id": by[key].run_id,
                    "method": "simclr",
                    "top1": 0.75,
                    "top5": 0.9,
                    "knn_top1": 0.7,
                    "epochs": 2,
                    "train_flops": 1e12,
                    "wall_time_s": 5.0,
                    "images_seen": 2816,
                    "layout": layout(16, 4),
                },
            )
        else:
            write_json(
                run_dir / final, {"kind": "diverged", "message": "loss is nan at step 3", "step": 3}
            )
        assert mirror.push(run_dir, uri, tracking.experiment_name(sweep)) is not None
    rows = {r["run_id"]: r for r in results.collect(sweep, tmp_path / "here", uri=uri).to_pylist()}
    done = rows[by["simclr0.25"].run_id]
    assert (done["state"], done["source"], done["top1"], done["knn_top1"]) == (
        "finished",
        "mlflow",
        0.75,
        0.7,
    )
    assert (done["micro_batch"], done["accum_steps"]) == (16, 4) and done["mlflow_run_id"]
    failed = rows[by["supervised0.5"].run_id]
    assert (failed["state"], failed["error_kind"]) == ("failed", "diverged")
    assert "loss is nan" in failed["error_message"]
    assert sum(r["state"] == "pending" for r in rows.values()) == 4


def test_prediction_errors_compare_the_plan_with_finished_runs_by_source() -> None:
    rows = [
        {
            "state": "finished",
            "predicted_train_s": 12.0,
            "train_time_s": 10.0,
            "cost_source": "scaled",
        },
        {
            "state": "finished",
            "predicted_train_s": 9.0,
            "train_time_s": 10.0,
            "cost_source": "scaled",
        },
        {
            "state": "finished",
            "predicted_train_s": 30.0,
            "train_time_s": 10.0,
            "cost_source": "model",
        },
        {"state": "failed", "predicted_train_s": 1.0, "train_time_s": None, "cost_source": "model"},
        {
            "state": "finished",
            "predicted_train_s": float("nan"),
            "train_time_s": 5.0,
            "cost_source": "model",
        },
    ]
    errors = results.prediction_errors(results.to_table(rows))
    assert errors["runs"] == 3 and errors["median_error"] == pytest.approx(0.2)
    assert errors["by_source"]["scaled"] == {"runs": 2, "median_error": pytest.approx(0.15)}
    assert errors["by_source"]["model"] == {"runs": 1, "median_error": pytest.approx(2.0)}
    assert results.prediction_errors(results.to_table([{"state": "pending"}]))["runs"] == 0
