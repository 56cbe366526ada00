"""`scaling submit --adaptive` on the local backend with tiny digits runs: it stops on
each of its three conditions and resumes after a kill without buying or training a run
twice."""

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
from scaling.rundir import METRICS, read_json, read_jsonl
from tests.conftest import write

SWEEP = """\
name: tinyadapt
description: tiny digits runs for the adaptive loop's tests
dataset: {name: digits, image_size: 8}
seeds: [0, 1]
model: {depth: 10, width: [0.03125, 0.0625, 0.125, 0.25], stem: cifar}
methods:
  simclr: {batch_size: 128, epochs: 1, projection_dim: 16, eval: {epochs: 3}}
  supervised: {batch_size: 128, epochs: 2}
"""
PROFILE = "backend: local\ndevice: cpu\nmax_parallel: 2\nthreads_per_run: 1\n"
ARGS = ("sweep.yaml", "--cluster", "local.yaml", "--adaptive")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid trained once (16 runs, about 30 s): every law has an interval."""
    root = tmp_path_factory.mktemp("adaptive")
    write(root / "sweep.yaml", SWEEP)
    write(root / "local.yaml", PROFILE)
    here = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "local.yaml"])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(here)
    return root


def adaptive(root: Path, *args: str) -> dict:
    state = root / "runs" / "tinyadapt" / "adaptive.json"
    here = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["submit", *ARGS, *args])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    return read_json(state) or {}


def one_batch(root: Path) -> str:
    """About one batch of two runs: twice the plan's costliest run (device-hours)."""
    from scaling.report import pool as P
    from scaling.sweep.cluster import load_profile

    pool = P.extended(root / "sweep.yaml", [], load_profile(root / "local.yaml"))
    return f"{2 * max(p.gpu_hours for p in pool.plan.runs):.6g}"


def bought(state: dict) -> list[str]:
    return [r for step in state["steps"] for r in step["runs"]]


@pytest.mark.slow
def test_stops_answered_and_no_candidate(study: Path) -> None:
    state = adaptive(study, "--budget", "1", "--until", "interval < 1000")
    assert state["stop"] == "answered" and state["steps"] == [] and state["start"]
    beyond = ("--question", "gap-at", "--params", "1e12")  # past any calibrated reach
    state = adaptive(study, "--budget", "1", "--until", "interval < 1", *beyond)
    assert state["stop"] == "no candidate" and state["steps"] == []


@pytest.mark.slow
def test_stops_on_the_budget_and_resumes_after_a_kill_without_buying_twice(
    study: Path,
) -> None:
    path = study / "runs" / "tinyadapt" / "adaptive.json"
    path.unlink(missing_ok=True)
    budget = one_batch(study)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scaling",
            "submit",
            *ARGS,
            "--budget",
            budget,
            "--until",
            "interval < 0.001",
        ],
        cwd=study,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600  # about 40 s on an idle machine, minutes on a loaded one
    while time.time() < deadline:  # killed once the first batch is bought and launched
        state = read_json(path) or {}
        if state.get("steps") and not state["steps"][0]["done"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the loop never bought a batch")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = state["steps"][0]["runs"]
    state = adaptive(study, "--budget", budget, "--until", "interval < 0.001")
    assert state["stop"] == "budget" and state["steps"][0]["runs"] == first
    assert state["steps"][0]["done"] and state["spent"] <= float(budget)
    ids = bought(state)
    assert len(ids) == len(set(ids)) >= 1
    for run_id in ids:  # each bought run trained, every epoch once
        run_dir = study / "runs" / "tinyadapt" / run_id
        epochs = read_json(run_dir / "spec.json")["config"]["epochs"]
        logged = [m["epoch"] for m in read_jsonl(run_dir / METRICS) if "epoch" in m]
        assert read_json(run_dir / "result.json") is not None
        assert sorted(set(logged)) == list(range(1, epochs + 1)), logged
    again = adaptive(study, "--budget", budget, "--until", "interval < 0.001")
    assert bought(again) == ids and again["stop"] == "budget"  # nothing more bought
    assert json.dumps(again["steps"][0]["interval"])
    mirrored(study, again)
    told(study, again)


def mirrored(root: Path, state: dict) -> None:
    """One sweep-level MLflow run holds the loop: spend and interval per step, the stop."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("tinyadapt")
    (run,) = client.search_runs([exp.experiment_id], "tags.`scaling.kind` = 'adaptive'")
    assert run.data.tags["scaling.adaptive_stop"] == state["stop"]
    spent = client.get_metric_history(run.info.run_id, "spent_device_hours")
    assert sorted({m.step for m in spent}) == list(range(1, len(state["steps"]) + 1))
    assert run.data.tags["scaling.adaptive_until"] == "interval < 0.001"


def told(root: Path, state: dict) -> None:
    """The report tells the story: runs in the order bought, the interval after each,
    why it stopped and the next best run."""
    here = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["report", "sweep.yaml", "--cluster", "local.yaml"])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    page = (root / "runs" / "tinyadapt" / "report" / "report.html").read_text()
    section = page[page.index("id='adaptive'") :]
    labels = [lab for step in state["steps"] for lab in step["labels"]]
    at = [section.index(lab) for lab in labels]
    assert at == sorted(at) and "Stopped: budget" in section
    assert "next best run would be" in section or "No run would narrow" in section


def test_bad_goals_are_one_line_errors(tmp_path: Path) -> None:
    write(tmp_path / "sweep.yaml", SWEEP)
    for args, said in (
        (("--budget", "0", "--until", "interval < 1"), "--budget"),
        (("--budget", "1", "--until", "width < 1"), "--until"),
        (("--budget", "1", "--until", "interval < 1", "--question", "nope"), "nope"),
        (("--budget", "1", "--until", "interval < 1", "--dry-run"), "--dry-run"),
        (("--budget", "1", "--until", "interval < 1", "--only", "x"), "--only"),
    ):
        result = CliRunner().invoke(
            app, ["submit", str(tmp_path / "sweep.yaml"), "--adaptive", *args]
        )
        assert result.exit_code == 2, result.output
        assert said in result.output and "Traceback" not in result.output
