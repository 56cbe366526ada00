"""`scaling submit` on this machine, end to end through the real CLI and a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.run.tracking import find_runs
from scaling.rundir import METRICS, RESULT, read_json, read_jsonl
from scaling.sweep.spec import RunSpec, load_sweep
from tests.conftest import write

SWEEP = """\
name: tiny
description: a tiny sweep for tests
dataset: {name: synthetic, image_size: 16, size: 96}
seeds: [0]
model: {depth: 10, width: [0.125, 0.25], stem: cifar}
methods:
  simclr: {batch_size: 32, epochs: [1, 2], projection_dim: 16, warmup_epochs: 0.5, eval: {epochs: 3}}
  supervised: {batch_size: 32, epochs: 2, warmup_epochs: 0.5}
"""
PROFILE = "backend: local\ndevice: cpu\nmax_parallel: 2\nthreads_per_run: 1\n"


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sweep.yaml", SWEEP)
    write(tmp_path / "local.yaml", PROFILE)
    return tmp_path


def invoke(*args: str) -> object:
    result = CliRunner().invoke(app, list(args))
    return result


def mlflow_runs(root: Path, experiment: str = "tiny") -> dict[str, dict]:
    return find_runs(f"sqlite:///{root}/mlflow.db", experiment)


def all_mlflow_run_count(root: Path) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    return len(client.search_runs([exp.experiment_id], max_results=1000))


@pytest.mark.slow
def test_submit_runs_everything_then_nothing(study: Path) -> None:
    result = invoke("submit", "sweep.yaml", "--cluster", "local.yaml")
    assert result.exit_code == 0, result.output
    assert "6 finished" in result.output
    sweep = load_sweep(study / "sweep.yaml")
    for spec in sweep.runs:
        run_dir = study / "runs" / "tiny" / spec.run_id
        assert read_json(run_dir / RESULT)["run_id"] == spec.run_id
    tracked = mlflow_runs(study)
    assert set(tracked) == {r.run_id for r in sweep.runs}
    for spec in sweep.runs:
        info = tracked[spec.run_id]
        assert info["status"] == "FINISHED"
        assert (
            info["tags"]["scaling.sweep"] == "tiny"
            and info["tags"]["scaling.method"] == spec.method
        )
        assert info["params"]["batch_size"] == "32" and info["params"]["micro_batch"] == "32"
        assert info["params"]["width"] == str(spec.model["width"])
        assert "top1" in info["metrics"] and "train/loss" in info["metrics"]
        # The MLflow run spans the run's own training, not the time since submit began.
        run_dir = study / "runs" / "tiny" / spec.run_id
        started, result = (
            read_json(run_dir / "spec.json")["started_at"],
            read_json(run_dir / RESULT),
        )
        assert abs(info["start_time"] / 1000 - started) < 1.0
        assert abs((info["end_time"] - info["start_time"]) / 1000 - result["wall_time_s"]) < 1.0
        assert info["tags"]["scaling.group"] == spec.group_id()
    groups = {(s.method, s.model["width"], s.config["epochs"]): s.group_id() for s in sweep.runs}
    assert len(set(groups.values())) == len(groups)  # one group per run but its seed
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{study}/mlflow.db")
    some = tracked[sweep.runs[1].run_id]
    history = client.get_metric_history(some["mlflow_run_id"], "train/loss")
    assert [m.step for m in history] == list(range(1, int(sweep.runs[1].config["epochs"]) + 1))
    artifacts = {a.path for a in client.list_artifacts(some["mlflow_run_id"])}
    assert {"spec.json", "result.json", "metrics.jsonl"} <= artifacts

    again = invoke("submit", "sweep.yaml", "--cluster", "local.yaml")
    assert (
        again.exit_code == 0
        and "nothing to run" in again.output
        and "skip 6 (finished)" in again.output
    )
    assert all_mlflow_run_count(study) == 6

    status = invoke("status", "sweep.yaml", "--cluster", "local.yaml")
    assert status.exit_code == 0 and "6 finished" in status.output


def test_dry_run_says_what_would_run_and_why(study: Path) -> None:
    result = invoke(
        "submit",
        "sweep.yaml",
        "--cluster",
        "local.yaml",
        "--dry-run",
        "--only",
        "method=supervised",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("run    ") == 2 and "new" in result.output
    assert not (study / "runs").exists()


def _submit_process(study: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "scaling",
        "submit",
        "sweep.yaml",
        "--cluster",
        "local.yaml",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=study, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _long_run(study: Path, epochs: int) -> tuple[list[str], RunSpec, Path, subprocess.Popen[bytes]]:
    """`submit` of the width-0.25 supervised run, `epochs` epochs long, started in the
    background: its --only/--set options, spec, run directory and process."""
    sets = [f"methods.supervised.epochs={epochs}"]
    only = ["--only", "method=supervised,width=0.25", "--set", *sets]
    spec = next(
        r
        for r in load_sweep(study / "sweep.yaml", sets).runs_of("supervised")
        if r.model["width"] == 0.25
    )
    return only, spec, study / "runs" / "tiny" / spec.run_id, _submit_process(study, *only)


def _wait(predicate, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_submit_resumes_into_the_same_mlflow_run(study: Path) -> None:
    # Long enough that the kill lands mid-run: MLflow sees the run after its first epoch.
    only, spec, run_dir, proc = _long_run(study, 20)
    _wait(
        lambda: len(list(read_jsonl(run_dir / METRICS))) >= 1 and (run_dir / "mlflow.json").exists()
    )
    first_mlflow_id = json.loads((run_dir / "mlflow.json").read_text())["mlflow_run_id"]
    pid = int((run_dir / ".lock").read_text().split()[0])
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)  # the training process, mid-epoch
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 1 and "failed" in out, out  # killed: not finished
    assert not (run_dir / RESULT).exists()

    again = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert again.exit_code == 0, again.output
    assert "resume" in again.output and "1 finished" in again.output
    resumed = read_json(run_dir / RESULT)

    # The same run uninterrupted, elsewhere: the result must be identical.
    from scaling.train.trainer import run

    reference = run(spec, study / "reference", threads=1)
    for key in ("top1", "top5", "steps", "images_seen"):
        assert resumed[key] == reference[key], key
    tracked = mlflow_runs(study)
    assert tracked[spec.run_id]["mlflow_run_id"] == first_mlflow_id
    assert tracked[spec.run_id]["status"] == "FINISHED" and all_mlflow_run_count(study) == 1


@pytest.mark.slow
def test_eight_runs_logging_at_once_lose_no_metric(study: Path) -> None:
    write(
        study / "sweep.yaml",
        SWEEP.replace("seeds: [0]", "seeds: [0, 1, 2, 3]").replace("epochs: [1, 2]", "epochs: 2"),
    )
    result = invoke(
        "submit",
        "sweep.yaml",
        "--cluster",
        "local.yaml",
        "--max-parallel",
        "8",
        "--only",
        "width=0.125",
    )
    assert result.exit_code == 0, result.output
    tracked = mlflow_runs(study)
    assert len(tracked) == 8
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{study}/mlflow.db")
    for info in tracked.values():
        assert len(client.get_metric_history(info["mlflow_run_id"], "train/loss")) == 2
        assert info["status"] == "FINISHED" and "top1" in info["metrics"]


@pytest.mark.slow
def test_unreachable_tracking_loses_nothing_and_status_then_sync_upload(
    study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    only = ["--only", "method=supervised,width=0.125"]
    down = ["--set", "tracking.uri=http://127.0.0.1:9", *only]
    result = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *down)
    assert result.exit_code == 0, result.output
    assert "1 finished" in result.output and "1 runs not yet in MLflow" in result.output
    behind = invoke("status", "sweep.yaml", "--cluster", "local.yaml", *down)
    assert "pending sync" in behind.output and "1 not yet in MLflow" in behind.output
    assert "unreachable" in behind.output, behind.output
    # `status` on the sweep's own (sqlite) store pushes what MLflow lacks, unasked.
    caught_up = invoke("status", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert "pending sync" not in caught_up.output, caught_up.output
    (info,) = mlflow_runs(study).values()
    assert info["status"] == "FINISHED" and "top1" in info["metrics"]
    synced = invoke("sync", "sweep.yaml", "--cluster", "local.yaml")
    assert synced.exit_code == 0 and "synced 1 of 1" in synced.output, synced.output
    assert all_mlflow_run_count(study) == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_submit_stops_runs_resumable_like_ctrl_c(
    study: Path, sig: signal.Signals
) -> None:
    only, _, run_dir, proc = _long_run(study, 40)
    _wait(lambda: len(list(read_jsonl(run_dir / METRICS))) >= 1)
    proc.send_signal(sig)
    out = proc.communicate(timeout=150)[0].decode()
    assert proc.returncode == 130 and "interrupted" in out, out
    assert not (run_dir / RESULT).exists() and not (run_dir / "failure.json").exists()
    assert any((run_dir / "checkpoints").iterdir())  # the child checkpointed and stopped
    status = invoke("status", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert "resumable" in status.output, status.output


@pytest.mark.slow
def test_failed_runs_are_reported_and_rerun_only_when_asked(study: Path) -> None:
    bad = [
        "--only",
        "method=supervised,width=0.125",
        "--set",
        "methods.supervised.optimizer=sgd",
        "--set",
        "methods.supervised.lr_rule=1.0e12",
    ]
    first = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *bad)
    assert first.exit_code == 1 and "failed" in first.output and "diverged" in first.output, (
        first.output
    )
    status = invoke(
        "status",
        "sweep.yaml",
        "--cluster",
        "local.yaml",
        *bad[:1] + bad[1:2],
        "--set",
        "methods.supervised.optimizer=sgd",
        "--set",
        "methods.supervised.lr_rule=1.0e12",
    )
    assert "failed (diverged)" in status.output, status.output
    second = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *bad)
    assert second.exit_code == 0 and "use --rerun-failed" in second.output
    third = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *bad, "--rerun-failed")
    assert (
        third.exit_code == 1 and "resume 1 (rerun)" in third.output and "diverged" in third.output
    )


@pytest.mark.slow
def test_two_racing_submits_train_each_run_once(study: Path) -> None:
    only = ["--only", "method=simclr,epochs=1"]
    a, b = _submit_process(study, *only), _submit_process(study, *only)
    out_a, out_b = (p.communicate(timeout=300)[0].decode() for p in (a, b))
    # A submit that found a run in the other's hands says so and does not claim it done.
    for code, out in ((a.returncode, out_a), (b.returncode, out_b)):
        assert code == 0 or (code == 75 and "held by another live process" in out), out
    assert all_mlflow_run_count(study) == 2
    sweep = load_sweep(study / "sweep.yaml")
    for spec in sweep.runs_of("simclr"):
        if spec.config["epochs"] == 1:
            assert read_json(study / "runs" / "tiny" / spec.run_id / RESULT) is not None


def test_a_resubmit_that_finds_a_run_held_by_a_live_process_says_so_and_exits_non_zero(
    study: Path,
) -> None:
    """A run whose lock a live process holds is not this submit's to finish: it is named
    with its holder, and the command ends with ALREADY_RUNNING (75), never "done"."""
    from scaling.run.locks import run_lock

    only = ["--only", "method=supervised,width=0.25"]
    (spec,) = [
        r
        for r in load_sweep(study / "sweep.yaml").runs_of("supervised")
        if r.model["width"] == 0.25
    ]
    run_dir = study / "runs" / "tiny" / spec.run_id
    with run_lock(run_dir):
        held = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *only)
    out = " ".join(held.output.split())
    assert held.exit_code == 75, held.output
    assert f"{spec.run_id} is being trained by pid {os.getpid()}" in out
    assert "1 run is held by another live process and left alone: not finished" in out
    assert not (run_dir / RESULT).exists()


def test_submit_rejects_bad_input_in_one_line(study: Path) -> None:
    write(study / "bad.yaml", SWEEP.replace("depth: 10", "depth: 11"))
    result = invoke("submit", "bad.yaml", "--cluster", "local.yaml")
    assert (
        result.exit_code == 2 and result.output.count("\n") == 1 and "model.depth" in result.output
    )


@pytest.mark.slow
def test_two_rank_run_through_torchrun_matches_one_process_with_cached_micro_batches(
    study: Path,
) -> None:
    """gpus_per_run: 2 on a CPU profile starts 2 gloo ranks through torchrun. Global
    negatives and averaged gradients make it equal one process whose accumulation
    forwards the same per-rank micro-batches (batch norm statistics per micro-batch)."""
    write(
        study / "two.yaml",
        "backend: local\ndevice: cpu\nmax_parallel: 1\nthreads_per_run: 2\n"
        "gpus_per_run: 2\ngpus_per_node: 2\n",
    )
    only = ["--only", "method=simclr,width=0.125,epochs=2"]
    result = invoke("submit", "sweep.yaml", "--cluster", "two.yaml", *only)
    assert result.exit_code == 0, result.output
    sweep = load_sweep(study / "sweep.yaml")
    spec = next(
        r for r in sweep.runs_of("simclr") if r.model["width"] == 0.125 and r.config["epochs"] == 2
    ).with_bn_batch(16, "second_view_shuffled")  # 2 CPU ranks, no SyncBN: BN over each
    # rank's 16, the second view from the shuffled batch (shuffle-BN): in the identity
    run_dir = study / "runs" / "tiny" / spec.run_id
    assert read_json(run_dir / "spec.json")["layout"]["gpus"] == 2

    import torch

    from scaling.plan.layout import Layout
    from scaling.train import checkpoint
    from scaling.train.trainer import run

    run(spec, study / "reference", Layout(micro_batch=16, accum_steps=2, gpus=1), threads=1)
    two = checkpoint.restore(run_dir)["model"]
    one = checkpoint.restore(study / "reference")["model"]
    params = [
        k for k in one if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for key in params:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    losses_two = [r["loss"] for r in read_jsonl(run_dir / METRICS)]
    losses_one = [r["loss"] for r in read_jsonl(study / "reference" / METRICS)]
    assert losses_two == pytest.approx(losses_one, rel=1e-4)  # the whole batch's loss, not rank 0's
