"""The optional W&B mirror, in offline mode (no network): one W&B run per run spec,
never duplicated on resubmit, with the same outage guarantees as MLflow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.run import wandb_mirror
from scaling.rundir import METRICS, RESULT, SPEC, append_jsonl, read_json, write_json
from scaling.sweep.spec import load_sweep
from tests.conftest import write

pytest.importorskip("wandb")

SWEEP = """\
name: wb
dataset: {name: synthetic, image_size: 16, size: 64}
seeds: [0, 1]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  supervised: {batch_size: 32, epochs: 2, warmup_epochs: 0.5}
tracking: {wandb: {project: scaling-test, mode: offline}}
"""
PROFILE = "backend: local\ndevice: cpu\nmax_parallel: 2\nthreads_per_run: 1\n"


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_submit_mirrors_each_run_once_and_resubmit_adds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    write(tmp_path / "sweep.yaml", SWEEP)
    write(tmp_path / "local.yaml", PROFILE)
    first = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "local.yaml"])
    assert first.exit_code == 0, first.output
    sweep = load_sweep(tmp_path / "sweep.yaml")
    for spec in sweep.runs:
        run_dir = tmp_path / "runs" / "wb" / spec.run_id
        (folder,) = offline_runs(run_dir)  # one W&B run, id = run_id
        assert folder.name.endswith(spec.run_id)
        assert (folder / f"run-{spec.run_id}.wandb").stat().st_size > 0
        state = read_json(run_dir / wandb_mirror.STATE)
        assert state["settings"] == {"project": "scaling-test", "entity": None, "mode": "offline"}
        assert state["epochs_pushed"] == 2 and state["finished"] is True
    again = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "local.yaml"])
    assert again.exit_code == 0 and "nothing to run" in again.output
    synced = CliRunner().invoke(app, ["sync", "sweep.yaml", "--cluster", "local.yaml"])
    assert synced.exit_code == 0, synced.output
    for spec in sweep.runs:
        assert len(offline_runs(tmp_path / "runs" / "wb" / spec.run_id)) == 1  # no duplicate


def _run_dir(root: Path) -> Path:
    spec = load_sweep(write(root / "s.yaml", SWEEP)).runs[0]
    run_dir = root / spec.run_id
    write_json(
        run_dir / SPEC,
        {**spec.to_dict(), "layout": {"micro_batch": 32, "accum_steps": 1, "gpus": 1, "nodes": 1}},
    )
    wandb_mirror.configure(run_dir, {"project": "scaling-test", "entity": None, "mode": "offline"})
    return run_dir


def test_a_failed_push_loses_nothing_and_the_next_one_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    run_dir = _run_dir(tmp_path)
    append_jsonl(run_dir / METRICS, {"epoch": 1, "loss": 2.0, "seconds": 1.0})
    real_init = wandb.init

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("W&B is unreachable")

    monkeypatch.setattr(wandb, "init", down)
    assert wandb_mirror.push(run_dir, final=True) is False  # warned, never raised
    assert read_json(run_dir / wandb_mirror.STATE).get("epochs_pushed") is None  # still pending
    monkeypatch.setattr(wandb, "init", real_init)
    append_jsonl(run_dir / METRICS, {"epoch": 2, "loss": 1.0, "seconds": 1.0})
    write_json(run_dir / RESULT, {"top1": 0.5, "epochs": 2})
    assert wandb_mirror.push(run_dir) is True
    state = read_json(run_dir / wandb_mirror.STATE)
    assert state["epochs_pushed"] == 2 and state["finished"] is True
    assert wandb_mirror.push(run_dir, final=True) is True and len(offline_runs(run_dir)) == 1


def test_no_settings_means_no_wandb(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    assert wandb_mirror.push(tmp_path / "r") is None


def test_a_wandb_sweep_without_the_package_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    path = write(tmp_path / "sweep.yaml", SWEEP)
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: tracking.wandb: W&B tracking needs the wandb package: "
        "pip install 'scaling[wandb]'"
    ]


def test_a_run_trained_again_from_scratch_is_pushed_again(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    append_jsonl(run_dir / METRICS, {"epoch": 1, "loss": 2.0})
    write_json(run_dir / RESULT, {"top1": 0.5})
    assert (
        wandb_mirror.push(run_dir) is True and read_json(run_dir / wandb_mirror.STATE)["finished"]
    )
    wandb_mirror.forget_progress(run_dir)  # what `scaling train --force` does
    state = read_json(run_dir / wandb_mirror.STATE)
    assert state == {"settings": {"project": "scaling-test", "entity": None, "mode": "offline"}}
