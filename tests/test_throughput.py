"""The calibrated cost model: measurements of finished runs, and plans that learn from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.plan import throughput
from scaling.plan.accelerator import Accelerator
from scaling.plan.planner import make_plan
from scaling.plan.throughput import Calibration, Measurement
from scaling.rundir import METRICS, RESULT, read_json, read_jsonl, run_dir_of
from scaling.sweep.cluster import load_profile
from scaling.sweep.spec import load_sweep
from scaling.train.trainer import run
from tests.conftest import REPO, write

ARCH_A = ("simclr", 10, 0.25, "cifar", 1.0, 16, 16, 10)
ARCH_B = ("simclr", 10, 1.0, "cifar", 1.0, 16, 16, 10)
LAYOUT = (32, 1, 1, "fp32")


def measured(run_id: str, arch: tuple, flops: float, seconds: float, **kw: object) -> Measurement:
    """A run that trained 1,000 images at `seconds` per image on one device."""
    fields = {"micro_batch": 32, "accum_steps": 1, "gpus": 1, "precision": "fp32"} | kw
    return Measurement(
        run_id,
        "cpu x",
        arch,
        train_flops_per_image=flops,
        images=1000,
        train_time_s=seconds * 1000,
        **fields,
    )  # type: ignore[arg-type]


def test_same_architecture_is_measured_others_are_scaled_along_the_nearest_line() -> None:
    cal = Calibration(
        [
            measured("a0", ARCH_A, 1e9, 0.010),
            measured("a1", ARCH_A, 1e9, 0.012),
            measured("a2", ARCH_A, 1e9, 0.020),
            measured("b0", ARCH_B, 9e9, 0.050),
        ]
    )
    assert cal.seconds_per_image("new", ARCH_A, LAYOUT, 1e9)[:2] == (0.012, "measured")  # median
    # Between A (1 GFLOP, median 12 ms) and B (9 GFLOP, 50 ms): on the power law through
    # them (3 GFLOP is halfway in log FLOPs), not proportional to FLOPs (36 ms).
    mid = ("simclr", 10, 0.5, "cifar", 1.0, 16, 16, 10)
    seconds, source, _ = cal.seconds_per_image("new", mid, LAYOUT, 3e9)
    assert source == "scaled" and seconds == pytest.approx((0.012 * 0.050) ** 0.5)
    # Beyond B (81 GFLOP): between the power law (50 ms x 50/12) and the line through A and
    # B (12 ms + 38 ms x 10), their geometric mean
    big = ("simclr", 10, 2.0, "cifar", 1.0, 16, 16, 10)
    power, line = 0.050 * 0.050 / 0.012, 0.012 + 0.038 * 10
    assert cal.seconds_per_image("new", big, LAYOUT, 81e9)[0] == pytest.approx(
        (power * line) ** 0.5
    )
    assert power < cal.seconds_per_image("new", big, LAYOUT, 81e9)[0] < line
    # Another precision or method: nothing measured
    assert cal.seconds_per_image("new", ARCH_A, (32, 1, 1, "bf16"), 1e9) is None
    sup = ("supervised",) + ARCH_A[1:]
    assert cal.seconds_per_image("new", sup, LAYOUT, 1e9) is None


def test_one_measured_architecture_scales_proportionally_and_a_run_never_predicts_itself() -> None:
    cal = Calibration([measured("a0", ARCH_A, 1e9, 0.010), measured("a1", ARCH_A, 1e9, 0.020)])
    assert cal.seconds_per_image("x", ARCH_B, LAYOUT, 4e9) == (pytest.approx(0.060), "scaled", 1.0)
    assert cal.seconds_per_image("a0", ARCH_A, LAYOUT, 1e9)[:2] == (0.020, "measured")  # a1 only
    alone = Calibration([measured("a0", ARCH_A, 1e9, 0.010)])
    assert alone.seconds_per_image("a0", ARCH_A, LAYOUT, 1e9) is None  # the model then
    # another micro-batch of the same architecture is scaled, not "measured"
    assert cal.seconds_per_image("x", ARCH_A, (16, 2, 1, "fp32"), 1e9)[1] == "scaled"


def test_far_beyond_the_measured_networks_is_the_calibrated_flop_model_and_says_how_far() -> None:
    """Scaled along the measured curve only within SCALE_RANGE x their FLOPs per image and
    IMAGE_RANGE x their image size; beyond, the nearest measured network's time plus the
    FLOPs beyond it at the device's rate (the FLOP model's, or the best measured if higher),
    with the factor it extrapolates."""
    rate = 1e11  # the FLOP model's; b reached 4e9 / 0.030 = 1.33e11, the best
    cal = Calibration([measured("a", ARCH_A, 1e9, 0.010), measured("b", ARCH_B, 4e9, 0.030)], rate)
    best = 4e9 / 0.030
    near = ("simclr", 10, 2.0, "cifar", 1.0, 16, 16, 10)
    assert cal.seconds_per_image("x", near, LAYOUT, 36e9).source == "scaled"  # 9x the largest
    far = ("simclr", 18, 1.0, "imagenet", 1.0, 16, 16, 10)
    prediction = cal.seconds_per_image("x", far, LAYOUT, 2.8e14)  # 70,000x the largest
    assert prediction.source == "calibrated" and prediction.beyond == pytest.approx(7e4)
    assert prediction.seconds == pytest.approx(0.030 + (2.8e14 - 4e9) / best)
    # within the FLOPs but at three times the image size: calibrated too
    big_images = ARCH_A[:5] + (48,) + ARCH_A[6:]
    wide = cal.seconds_per_image("x", big_images, LAYOUT, 2e9)
    assert wide.source == "calibrated" and wide.beyond == 1.0
    assert wide.seconds == pytest.approx(0.010 + 1e9 / best)  # anchored on a, the nearest
    # a tiny network far below: the smallest's time (never slower), and how far below
    tiny = cal.seconds_per_image("x", near, LAYOUT, 1e7)
    assert tiny.source == "calibrated" and tiny.beyond == pytest.approx(100)
    assert tiny.seconds == pytest.approx(0.010)
    # a device whose FLOP model is faster than any measured network: its rate is used
    fast = Calibration(list(cal.measurements), 1e13).seconds_per_image("x", far, LAYOUT, 2.8e14)
    assert fast.seconds == pytest.approx(0.030 + (2.8e14 - 4e9) / 1e13)


def test_the_plan_says_how_much_is_measured_scaled_or_modelled(tmp_path: Path) -> None:
    """The issue's case: only digits ResNet-10 at 32 px measured, a plan of STL-10
    ResNet-18 at 96 px. Its runs are calibrated and the totals say how far they go."""
    from rich.console import Console

    from scaling.cli.plan import print_plan
    from scaling.plan.costcache import arch_args, spec_cost
    from scaling.plan.planner import totals

    digits = load_sweep(
        write(
            tmp_path / "d.yaml",
            "name: d\ndataset: {name: digits, image_size: 32}\nmodel: {depth: 10, width: 0.5}\n"
            "methods: {supervised: {batch_size: 128, epochs: 10}}\n",
        )
    ).runs[0]
    flops = 3 * spec_cost(digits).flops_per_image
    cal = Calibration([measured("d", arch_args(digits), flops, 0.002, micro_batch=128)])
    stl = write(
        tmp_path / "s.yaml",
        "name: s\ndataset: {name: stl10, image_size: 96}\nmodel: {depth: [10, 18], width: 1.0}\n"
        "methods: {supervised: {batch_size: 128, epochs: 100}}\n",
    )
    acc = Accelerator("cpu", "cpu x", 64.0, 1.0, 0.35)
    plan = make_plan(load_sweep(stl), load_profile(None, ["device=cpu"]), acc, cal)
    assert {r.cost_source for r in plan.runs} == {"calibrated"}
    assert all(r.cost_extrapolation > 10 for r in plan.runs)
    t = totals(plan)
    assert set(t["by_source"]) == {"calibrated"} and t["by_source"]["calibrated"]["runs"] == 2
    console = Console(record=True, width=250)
    print_plan(plan, console=console)
    out = console.export_text()
    assert "FLOP model at the measured efficiency (2 runs extrapolated up to" in out
    assert "x beyond the measured networks' FLOPs per image" in out


def test_profile_names_match_the_device_names_runs_record() -> None:
    assert throughput.same_device("A100-80GB", "NVIDIA A100-SXM4-80GB")
    assert not throughput.same_device("A100-40GB", "NVIDIA A100-SXM4-80GB")
    assert not throughput.same_device("H100", "NVIDIA A100-SXM4-80GB")
    one, two = throughput.cpu_device_name(1), throughput.cpu_device_name(2)
    assert throughput.same_device(one, one) and not throughput.same_device(one, two)


def test_measurements_come_back_from_disk_and_bad_files_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path))
    m = Measurement("r1", "NVIDIA A100-SXM4-80GB", ARCH_A, 64, 2, 4, "bf16", 3e9, 4096, 20.0)
    throughput.record(m)
    (throughput.throughput_dir(m.device) / "broken.json").write_text("{not json")
    assert throughput.load("A100-80GB") == (m,)
    assert throughput.load("H100") == ()
    assert m.seconds_per_image == pytest.approx(20.0 * 4 / 4096)  # per device of the 4


SWEEP = """
name: learn
dataset: {name: synthetic, image_size: 16, size: 192}
seeds: [0, 1]
model: {depth: 10, width: [0.125, 0.25], stem: cifar}
methods:
  simclr: {batch_size: 32, epochs: 2, lr_rule: sqrt, warmup_epochs: 1.0, projection_dim: 16,
           eval: {epochs: 5}}
"""


def test_a_finished_run_records_its_speed_and_the_next_plan_learns_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the default profile's workdir: ./runs
    path = write(tmp_path / "learn.yaml", SWEEP)
    sweep, profile = load_sweep(path), load_profile(None, ["device=cpu", "precision=fp32"])
    before = make_plan(sweep, profile)
    assert {r.cost_source for r in before.runs} == {"model"}
    first = next(r for r in before.runs if r.spec.model["width"] == 0.25 and r.spec.seed == 0)
    result = run(
        first.spec,
        run_dir_of("runs", "learn", first.spec.run_id),
        first.layout,
        device="cpu",
        threads=1,
    )

    # result.json: the training steps' time (every epoch in metrics.jsonl), images, device
    speed = result["throughput"]
    lines = list(read_jsonl(run_dir_of("runs", "learn", first.spec.run_id) / METRICS))
    assert speed["train_time_s"] == pytest.approx(sum(r["seconds"] for r in lines))
    assert speed["train_time_s"] < result["wall_time_s"]  # evaluation is not in it
    assert speed["images"] == result["images_seen"] == (2 * 173 // 32 + 1) * 32  # 19 held out
    assert speed["device"] == throughput.cpu_device_name(1) and speed["arch"][2] == 0.25
    assert throughput.load(speed["device"])[0].to_dict() == speed

    acc = Accelerator("cpu", speed["device"], 8.0, 0.05, 0.35)
    after = {(r.spec.model["width"], r.spec.seed): r for r in make_plan(sweep, profile, acc).runs}
    twin = after[(0.25, 1)]  # the same network, another seed: what the first run took
    assert twin.cost_source == "measured"
    assert twin.predicted_train_s == pytest.approx(speed["train_time_s"])
    assert after[(0.125, 0)].cost_source == "scaled"
    assert after[(0.125, 0)].predicted_train_s < twin.predicted_train_s
    assert after[(0.25, 0)].cost_source == "model"  # never from its own measurement

    # status shows the plan's training time beside what the finished run took
    out = CliRunner().invoke(app, ["status", str(path)], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "train (plan / took)" in out.output
    took = f"/ {speed['train_time_s']:.0f} s"
    assert sum(took in line for line in out.output.splitlines()) == 1
    assert read_json(run_dir_of("runs", "learn", first.spec.run_id) / RESULT) is not None


def test_two_plans_through_the_cli_give_identical_numbers(tmp_path: Path) -> None:
    """The CPU's peak is measured once per machine, not on every plan."""
    env = {**os.environ, "SCALING_CACHE_DIR": str(tmp_path)}
    cmd = [
        sys.executable,
        "-m",
        "scaling",
        "plan",
        str(REPO / "sweeps" / "quickstart.yaml"),
        "--format",
        "json",
        "--set",
        "seeds=[0]",
    ]
    plans = [
        subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=tmp_path)
        for _ in range(2)
    ]
    first, second = (json.loads(p.stdout) for p in plans)
    assert first == second and all(r["gpu_hours"] > 0 for r in first)
    figures = json.loads((tmp_path / "machine.json").read_text())
    assert [list(v) for v in figures.values()] == [["cpu_matmul_tflops"]]
