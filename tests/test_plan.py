from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.plan.accelerator import Accelerator
from scaling.plan.planner import make_plan, totals
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
    by_width = {
        r.spec.model["width"]: r.layout.accum_steps
        for r in plan.runs
        if r.spec.method == "simclr" and r.spec.model["depth"] == 50
    }
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
    sweep = write(
        tmp_path / "s.yaml",
        "name: s\ndataset: {name: digits, image_size: 16}\n"
        "model: {depth: 10, width: 0.25}\nmethods: {supervised: {batch_size: [512, 2048], epochs: 1}}\n",
    )
    plan = plan_of(sweep)
    feasible = {r.spec.config["batch_size"]: r.feasible for r in plan.runs}
    assert feasible == {512: True, 2048: False}
    assert "exceeds the 1293 training images" in next(r.reason for r in plan.runs if not r.feasible)


def test_gpu_hours_scale_with_epochs_and_caching_costs_an_extra_forward() -> None:
    # fp32: the 8192 batch then needs accumulation on one A100 (bf16 fits it whole)
    plan = plan_of(REPO / "sweeps" / "cifar10_batch_epochs.yaml", "precision=fp32")
    train_s = {
        (r.spec.config["batch_size"], r.spec.config["epochs"]): r.predicted_train_s
        for r in plan.runs
        if r.spec.method == "simclr"
    }
    hours = {
        (r.spec.config["batch_size"], r.spec.config["epochs"]): r.gpu_hours
        for r in plan.runs
        if r.spec.method == "simclr"
    }
    # training alone doubles with the epochs (N E // B + 1 steps); evaluation is the same
    assert train_s[(256, 200)] == pytest.approx(2 * train_s[(256, 100)], rel=1e-3)
    evaluation = 2 * hours[(256, 100)] - hours[(256, 200)]
    assert evaluation > 0 and hours[(256, 200)] - hours[(256, 100)] == pytest.approx(
        train_s[(256, 100)] / 3600, rel=1e-3
    )
    cached = [r for r in plan.runs if r.layout.accum_steps > 1]
    plain = [r for r in plan.runs if r.layout.accum_steps == 1 and r.spec.method == "simclr"]
    assert cached and plain
    c, p = (
        cached[0],
        next(r for r in plain if r.spec.config["epochs"] == cached[0].spec.config["epochs"]),
    )
    assert c.predicted_train_s / p.predicted_train_s == pytest.approx(
        4 / 3, rel=0.02
    )  # x4 instead of x3 (evaluation aside)


def test_plan_cli_formats_and_parquet(tmp_path: Path) -> None:
    runner = CliRunner()
    sweep = str(REPO / "sweeps" / "quickstart.yaml")
    as_json = runner.invoke(app, ["plan", sweep, "--format", "json", "--only", "method=supervised"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.output)
    assert len(rows) == 15 and all(r["method"] == "supervised" for r in rows)
    required = {
        "run_id",
        "method",
        "dataset",
        "depth",
        "width",
        "stem",
        "image_size",
        "batch_size",
        "epochs",
        "seed",
        "lr",
        "micro_batch",
        "accum_steps",
        "gpus",
        "nodes",
        "encoder_params",
        "flops_per_image",
        "peak_memory_gb",
        "gpu_hours",
        "feasible",
        "reason",
        "bn_batch",
        "precision",
        "warnings",
    }
    assert required <= set(rows[0])
    as_csv = runner.invoke(app, ["plan", sweep, "--format", "csv"])
    assert as_csv.exit_code == 0 and as_csv.output.count("\n") == 31
    out = tmp_path / "plan.parquet"
    table = runner.invoke(app, ["plan", sweep, "--out", str(out)])
    assert table.exit_code == 0 and "runs: 30 (simclr 15, supervised 15)" in table.output
    assert pq.read_table(out).num_rows == 30


BN_SWEEP = """
name: bn
dataset: {name: imagefolder, image_size: 224, size: 100000}
model: {depth: 50, width: 2.0, stem: imagenet}
methods:
  simclr: {batch_size: 1024, epochs: 100}
"""


def test_the_bn_batch_is_in_the_run_identity(tmp_path: Path) -> None:
    """The same run laid out with another micro-batch normalises BN over another batch:
    another result, so another run_id; where BN sees the whole batch the id is the spec's."""
    path = write(tmp_path / "bn.yaml", BN_SWEEP)
    big = Accelerator("cuda", "big", 4000.0, 312.0, 0.35)
    small = Accelerator("cuda", "24GB", 24.0, 312.0, 0.35)
    whole = plan_of(path, acc=big).runs[0]
    a = plan_of(path, acc=small).runs[0]
    synced = plan_of(path, "gpus_per_run=8", "gpus_per_node=8", acc=small).runs[0]
    assert whole.layout.accum_steps == 1 and whole.layout.bn_batch == 1024
    assert whole.spec.run_id == load_sweep(path).runs[0].run_id and whole.spec.bn_batch is None
    assert a.layout.accum_steps > 1 and a.spec.bn_batch == a.layout.bn_batch == a.layout.micro_batch
    assert a.spec.run_id != whole.spec.run_id
    # SyncBN joins the 8 ranks' micro-batches on CUDA
    assert synced.layout.bn_batch == synced.layout.micro_batch * 8
    assert (synced.spec.bn_batch is None) == (synced.layout.bn_batch >= 1024)
    row = a.row()
    assert row["bn_batch"] == a.layout.bn_batch and "batch norm sees" in row["warnings"]


def test_plan_warns_when_warmup_is_over_a_quarter_of_training(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        "name: w\ndataset: {name: digits, image_size: 16}\nmodel: {depth: 10, width: 0.25}\n"
        "methods:\n  simclr: {batch_size: 64, epochs: [10, 100], warmup_epochs: 10}\n"
        "  supervised: {batch_size: 64, epochs: 10}\n",
    )
    plan = plan_of(path)
    warned = {(r.spec.method, r.spec.config["epochs"]): r.warnings for r in plan.runs}
    assert "warmup is 100% of training" in warned[("simclr", 10)][0]
    assert warned[("simclr", 100)] == () and warned[("supervised", 10)] == ()  # default: 10%
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0 and "warning (1 run): warmup is 100% of training" in result.output


def test_stl10_simclr_is_planned_on_train_plus_unlabeled(tmp_path: Path) -> None:
    # SimCLR pretrains on STL-10's train+unlabeled images, supervised on the 5,000
    # labelled ones; both less the held-out tenth of the labelled images.
    from scaling.plan.layout import train_size

    assert train_size({"name": "stl10"}, "simclr") == 104_500
    assert train_size({"name": "stl10", "validation": 0}, "simclr") == 105_000
    assert train_size({"name": "stl10"}, "supervised") == 4_500
    path = write(
        tmp_path / "stl.yaml",
        "name: stl\ndataset: {name: stl10, image_size: 96}\nmodel: {depth: 18, width: 1.0}\n"
        "methods:\n  simclr: {batch_size: 256, epochs: 100}\n  supervised: {batch_size: 256, epochs: 100}\n",
    )
    hours = {r.spec.method: r.gpu_hours for r in plan_of(path).runs}
    # 104,500 / 4,500 = 23x the images, 2 views: about 46x the supervised run's compute
    # (evaluation aside: the probe sees the 4,500 labelled images, not the 100,000 others)
    assert 40 < hours["simclr"] / hours["supervised"] < 50


@pytest.mark.parametrize(
    "sweep",
    [
        "quickstart.yaml",
        "digits_width_epochs.yaml",
        "imagenet_depth_width.yaml",
        "cifar10_batch_epochs.yaml",
    ],
)
def test_plan_table_fits_120_columns(sweep: str) -> None:
    """Grid axes and the cost columns, one line per run; what every run shares goes into
    the title; --wide shows every column."""
    from rich.console import Console

    from scaling.cli.plan import print_plan

    plan = plan_of(REPO / "sweeps" / sweep, "gpus_per_run=8", "gpus_per_node=8")
    console = Console(width=120, record=True)
    print_plan(plan, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 120
    for run in plan.runs:  # every run on one line, its id whole
        assert sum(run.spec.run_id in line for line in text.splitlines()) == 1
    assert "every run:" in text and "dev-h" in text
    wide = Console(width=400, record=True)
    print_plan(plan, wide=True, console=wide)
    assert {"micro", "accum", "BN", "nodes"} <= set(wide.export_text().split())


def test_knn_monitor_is_counted_in_the_cost_and_not_in_the_identity() -> None:
    off = plan_of(
        REPO / "sweeps" / "quickstart.yaml", overrides=("methods.simclr.eval.knn_every=0",)
    )
    on = plan_of(
        REPO / "sweeps" / "quickstart.yaml", overrides=("methods.simclr.eval.knn_every=1",)
    )
    for a, b in zip(off.runs, on.runs, strict=True):
        assert a.spec.run_id == b.spec.run_id
        if a.spec.method == "simclr":  # 20 looks at 1,437 + 360 images, on top of training
            assert b.gpu_hours > a.gpu_hours
        else:
            assert b.gpu_hours == a.gpu_hours


def test_plan_warns_about_one_seed_and_a_small_test_set(tmp_path: Path) -> None:
    path = write(
        tmp_path / "one.yaml",
        "name: one\ndataset: {name: digits, image_size: 8}\n"
        "model: {depth: 10, width: 0.25}\nmethods:\n  supervised: {batch_size: 64, epochs: 10}\n",
    )
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0
    assert "warning: one seed: no gap will have an interval" in result.output
    assert "the digits test set has 360 images" in result.output
    quick = CliRunner().invoke(app, ["plan", str(REPO / "sweeps" / "quickstart.yaml")])
    assert "one seed" not in quick.output  # three seeds


def test_the_augmented_linear_protocol_is_in_the_device_hours() -> None:
    """ImageNet's linear evaluation (B.6: 90 epochs of crops) forwards every training
    image it fits (all but the held-out tenth) 90 more times: about 15% of a 100-epoch
    SimCLR run, in the plan."""
    sweep = REPO / "sweeps" / "imagenet_depth_width.yaml"
    features = plan_of(sweep, overrides=("methods.simclr.eval.protocol=features",))
    augmented = plan_of(sweep)
    throughput = A100.peak_tflops * 1e12 * A100.utilization
    for a, b in zip(features.runs, augmented.runs, strict=True):
        extra = (b.gpu_hours - a.gpu_hours) * 3600 * throughput
        fitted = 1_281_167 - round(0.1 * 1_281_167)
        expected = 90 * fitted * b.flops_per_image if b.spec.method == "simclr" else 0
        assert extra == pytest.approx(expected, rel=1e-6, abs=1e-3)


def test_a_layout_with_one_image_per_batch_norm_batch_is_infeasible_at_plan_time(
    tmp_path: Path,
) -> None:
    """Memory for one image at a time: batch norm cannot train on it, so the plan says so
    (the run used to pass `plan` and fail once training started)."""
    from scaling.plan import costcache, costs
    from scaling.plan.accelerator import GB

    sweep = load_sweep(write(tmp_path / "s.yaml", BN_SWEEP))
    spec = sweep.runs[0]
    cost = costcache.spec_cost(spec)
    one, two = (costs.peak_memory_bytes(cost, m, 1, precision="bf16") / GB for m in (1, 2))
    acc = Accelerator("cuda", "small", (one + two) / 2, 312.0, 0.35)  # fits 1, not 2
    plan = make_plan(sweep, load_profile(None), acc)
    run = plan.runs[0]
    assert run.layout is not None and run.layout.micro_batch == 1
    assert not run.feasible and "batch norm would normalise over 1 image" in run.reason


def test_the_plan_shows_every_value_the_trainer_resolves() -> None:
    """LR, steps (the official N x E // B + 1), warmup in epochs and steps, the batch-norm
    grouping: in the rows, --format json and the table, as the trainer derives them."""
    from scaling.plan.layout import derive

    result = CliRunner().invoke(
        app, ["plan", str(REPO / "sweeps" / "quickstart.yaml"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    simclr = next(r for r in rows if r["method"] == "simclr")
    # 1,437 digits less the held-out 144: 1,293 x 20 // 128 + 1 steps, 2 warmup epochs
    assert simclr["steps"] == 1293 * 20 // 128 + 1 and simclr["warmup"] == 2.0
    assert simclr["warmup_steps"] == 2 * 1293 // 128 and simclr["bn_grouping"] == "views_together"
    plan = plan_of(REPO / "sweeps" / "quickstart.yaml")
    for run in plan.runs:
        d = derive(run.spec.config, run.layout, 1293, run.spec.method)
        assert (run.row()["lr"], run.row()["steps"]) == (d.lr, d.total_steps)
    table = CliRunner().invoke(app, ["plan", str(REPO / "sweeps" / "quickstart.yaml")])
    assert "warmup st 20" in table.output and "BN groups views_together" in table.output


def test_the_plan_counts_evaluation_memory_and_the_feature_store() -> None:
    """ImageNet ResNet-50 4x's features (8,192 per image) of the 1.28M training images
    (the test split is not counted: /datasets/imagenet is not on this machine): 42 GB in
    fp32, 21 GB in bf16, kept on the host; on the device evaluation holds at most half of
    what the weights and a forward leave."""
    plan = plan_of(REPO / "sweeps" / "imagenet_depth_width.yaml", "gpus_per_run=8")
    r50x4 = next(
        r
        for r in plan.runs
        if r.spec.method == "simclr" and (r.spec.model["depth"], r.spec.model["width"]) == (50, 4.0)
    )
    rows = 1_281_167
    assert r50x4.features_gb == pytest.approx(rows * 8192 * 2 / 1e9, rel=1e-6)  # bf16 on CUDA
    assert r50x4.eval_memory_gb < A100.memory_gb and r50x4.peak_memory_gb >= r50x4.eval_memory_gb
    supervised = next(r for r in plan.runs if r.spec.method == "supervised")
    assert supervised.features_gb == 0.0  # scored by its own head: nothing stored
