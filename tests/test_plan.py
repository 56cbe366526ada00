from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.plan.expand import Accelerator, make_plan, totals
from scaling.sweep.cluster import load_profile
from scaling.sweep.spec import load_sweep
from tests.conftest import REPO, write

A100 = Accelerator("cuda", "A100-80GB", 80.0, 312.0, 0.35)


def plan_of(
    path: Path | str, *profile: str, acc: Accelerator = A100, overrides: tuple[str, ...] = ()
):  # type: ignore[no-untyped-def]
    return make_plan(load_sweep(path, list(overrides)), load_profile(None, list(profile)), acc)


def test_table_columns_equal_the_rows() -> None:
    plan = plan_of(
        REPO / "sweeps" / "cifar10_batch_epochs.yaml", "gpus_per_run=8", "gpus_per_node=8"
    )
    rows = plan.rows()
    table = plan.table().to_pylist()
    assert len(table) == len(rows)
    for row, trow in zip(rows, table, strict=True):
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(trow[key])
            else:
                assert trow[key] == value, key


def test_every_layout_multiplies_to_the_batch_exactly() -> None:
    plan = plan_of(
        REPO / "sweeps" / "imagenet_depth_width.yaml", "gpus_per_run=8", "gpus_per_node=8"
    )
    assert all(r.feasible for r in plan.runs)
    for r in plan.runs:
        assert (
            r.layout.micro_batch * r.layout.accum_steps * r.layout.gpus
            == r.spec.config["batch_size"]
        )
        assert r.peak_memory_gb <= A100.memory_gb
    # bigger networks need more accumulation at the same batch
    by_width = {r.spec.model["width"]: r.layout.accum_steps for r in plan.runs
                if r.spec.method == "simclr" and r.spec.model["depth"] == 50}  # fmt: skip
    assert by_width[1.0] <= by_width[2.0] <= by_width[4.0] and by_width[4.0] > 1


def test_paper_learning_rates_on_the_effective_batch() -> None:
    plan = plan_of(
        REPO / "sweeps" / "imagenet_depth_width.yaml", "gpus_per_run=8", "gpus_per_node=8"
    )
    for row in plan.rows():
        if row["method"] == "simclr":
            assert row["lr"] == pytest.approx(4.8)  # 0.3 x 4096 / 256, whatever the micro-batch
        else:
            assert row["lr"] == pytest.approx(1.6)  # supervised default: 0.1 x 4096 / 256


def test_a_run_that_cannot_fit_one_sample_is_infeasible_not_a_crash() -> None:
    tiny = Accelerator("cuda", "tiny", 0.5, 10.0, 0.35)
    plan = plan_of(REPO / "sweeps" / "imagenet_depth_width.yaml", acc=tiny)
    assert not any(r.feasible for r in plan.runs)
    assert all("one sample needs" in r.reason and r.layout is None for r in plan.runs)
    t = totals(plan)
    assert t["infeasible"] == len(plan.runs) and t["gpu_hours"] == 0


def test_batch_larger_than_the_data_is_infeasible(tmp_path: Path) -> None:
    sweep = write(tmp_path / "s.yaml", "name: s\ndataset: {name: digits, image_size: 16}\n"
                  "model: {depth: 10, width: 0.25}\nmethods: {supervised: {batch_size: [512, 2048], epochs: 1}}\n")  # fmt: skip
    plan = plan_of(sweep)
    feasible = {r.spec.config["batch_size"]: r.feasible for r in plan.runs}
    assert feasible == {512: True, 2048: False}
    assert "exceeds the 1437 training images" in next(r.reason for r in plan.runs if not r.feasible)


def test_gpu_hours_scale_with_epochs_and_caching_costs_an_extra_forward() -> None:
    plan = plan_of(REPO / "sweeps" / "cifar10_batch_epochs.yaml")
    hours = {
        (r.spec.config["batch_size"], r.spec.config["epochs"]): r.gpu_hours
        for r in plan.runs
        if r.spec.method == "simclr"
    }
    assert hours[(256, 200)] == pytest.approx(2 * hours[(256, 100)], rel=1e-2)  # + evaluation
    cached = [r for r in plan.runs if r.layout.accum_steps > 1]
    plain = [r for r in plan.runs if r.layout.accum_steps == 1 and r.spec.method == "simclr"]
    assert cached and plain
    c, p = (
        cached[0],
        next(r for r in plain if r.spec.config["epochs"] == cached[0].spec.config["epochs"]),
    )
    assert c.gpu_hours / p.gpu_hours == pytest.approx(
        4 / 3, rel=0.05
    )  # x4 instead of x3 (eval cost aside)


def test_plan_cli_formats_and_parquet(tmp_path: Path) -> None:
    runner = CliRunner()
    sweep = str(REPO / "sweeps" / "quickstart.yaml")
    as_json = runner.invoke(app, ["plan", sweep, "--format", "json", "--only", "method=supervised"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.output)
    assert len(rows) == 4 and all(r["method"] == "supervised" for r in rows)
    required = {"run_id", "method", "dataset", "depth", "width", "stem", "image_size", "batch_size", "epochs",
                "seed", "lr", "micro_batch", "accum_steps", "gpus", "nodes", "encoder_params",
                "flops_per_image", "peak_memory_gb", "gpu_hours", "feasible", "reason"}  # fmt: skip
    assert required <= set(rows[0])
    as_csv = runner.invoke(app, ["plan", sweep, "--format", "csv"])
    assert as_csv.exit_code == 0 and as_csv.output.count("\n") == 21
    out = tmp_path / "plan.parquet"
    table = runner.invoke(app, ["plan", sweep, "--out", str(out)])
    assert table.exit_code == 0 and "runs: 20 (simclr 16, supervised 4)" in table.output
    assert pq.read_table(out).num_rows == 20
