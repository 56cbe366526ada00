"""The local backend's persistent workers: runs one after another in one process, as if
each had a fresh one; a worker killed mid-run, and `cancel`, leave its run resumable."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.rundir import LOG, METRICS, RESULT, read_json, read_jsonl
from scaling.sweep.spec import load_sweep
from tests import test_submit
from tests.test_submit import _long_run, _submit_process, _wait, invoke

study = test_submit.study  # the same fixture: a tiny sweep and profile in a fresh directory

HEADER = re.compile(r"^=== .* \[in worker (\d+)\]$", re.MULTILINE)


def workers_of(run_dir: Path) -> list[int]:
    """The worker PIDs that trained the run, one per attempt (from train.log's headers)."""
    return [int(pid) for pid in HEADER.findall((run_dir / LOG).read_text())]


def test_fresh_puts_back_what_a_run_may_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scaling.plan import costcache
    from scaling.run.backends.worker import Fresh
    from scaling.train.signals import EXTERNAL_STOP

    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path))  # the leak below stays here
    fresh = Fresh.capture()
    expected = (torch.rand(3), random.random(), np.random.random(), torch.get_num_threads())
    fresh.restore()
    torch.manual_seed(5), torch.rand(7), random.random(), np.random.random()
    torch.set_num_threads(torch.get_num_threads() + 1)
    torch.set_float32_matmul_precision("medium")
    EXTERNAL_STOP.set()
    os.environ["SCALING_WORKER_TEST_LEAK"] = "1"
    costcache._load()["leaked"] = {"x": 1}
    fresh.restore()
    got = (torch.rand(3), random.random(), np.random.random(), torch.get_num_threads())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    assert torch.get_float32_matmul_precision() == fresh.flags["matmul_precision"]
    assert not EXTERNAL_STOP.is_set() and "SCALING_WORKER_TEST_LEAK" not in os.environ
    assert "leaked" not in costcache._load()
    import gc

    gc.unfreeze()  # what Fresh.capture froze: this is pytest's process, not a worker


@pytest.mark.slow
def test_runs_in_a_reused_worker_are_bit_identical_to_fresh_processes(study: Path) -> None:
    only = ["--only", "width=0.125", "--max-parallel", "1"]
    result = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert result.exit_code == 0 and "3 finished" in result.output, result.output
    sweep = load_sweep(study / "sweep.yaml")
    dirs = [study / "runs" / "tiny" / r.run_id for r in sweep.runs if r.model["width"] == 0.125]
    started = sorted(dirs, key=lambda d: read_json(d / "spec.json")["started_at"])
    assert len({pid for d in dirs for pid in workers_of(d)}) == 1  # one worker trained all 3

    from scaling.train.checkpoint import restore

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for run_dir in started[1:]:  # after one run (then two) in the same worker
        fresh = study / "fresh" / run_dir.name
        cmd = [
            sys.executable,
            "-m",
            "scaling",
            "train",
            str(run_dir / "spec.json"),
            "--run-dir",
            str(fresh),
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        reused, alone = read_json(run_dir / RESULT), read_json(fresh / RESULT)
        for key in ("top1", "top5", "steps", "images_seen"):
            assert reused[key] == alone[key], (run_dir.name, key)
        losses = [
            [(r["loss"], r["top1"]) for r in read_jsonl(d / METRICS)] for d in (run_dir, fresh)
        ]
        assert losses[0] == losses[1] and len(losses[0]) >= 1
        weights = [restore(d)["model"] for d in (run_dir, fresh)]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_its_run_then_resumes(study: Path) -> None:
    epochs = ["--set", "methods.supervised.epochs=20"]
    only = ["--only", "method=supervised", "--max-parallel", "1", *epochs]
    sweep = load_sweep(study / "sweep.yaml", ["methods.supervised.epochs=20"])
    dirs = [study / "runs" / "tiny" / r.run_id for r in sweep.runs_of("supervised")]
    proc = _submit_process(study, *only)

    def checkpointed(d: Path) -> bool:
        return (d / "checkpoints").is_dir() and any((d / "checkpoints").iterdir())

    _wait(lambda: any(checkpointed(d) for d in dirs))  # its first epoch is kept
    killed = next(d for d in dirs if checkpointed(d))
    other = next(d for d in dirs if d != killed)
    (pid,) = workers_of(killed)
    assert int((killed / ".lock").read_text().split()[0]) == pid  # the worker holds the lock
    os.kill(pid, signal.SIGKILL)  # the worker, mid-run
    out = proc.communicate(timeout=180)[0].decode()
    assert proc.returncode == 1 and "1 finished" in out and "1 failed" in out, out
    assert not (killed / RESULT).exists() and (other / RESULT).exists()
    (replacement,) = workers_of(other)
    assert replacement != pid  # the slot's next run had a new worker
    status = invoke(
        "status", "sweep.yaml", "--cluster", "local.yaml", "--only", "method=supervised", *epochs
    )
    assert "resumable" in status.output, status.output

    again = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert again.exit_code == 0 and "1 finished" in again.output, again.output
    assert "resumed from step" in (killed / LOG).read_text()
    assert read_json(killed / RESULT)["steps"] == read_json(other / RESULT)["steps"]


@pytest.mark.slow
def test_a_worker_dies_with_its_submit_after_checkpointing_and_the_run_resumes(
    study: Path,
) -> None:
    """kill -9 of `submit`: its worker (a session of its own) gets the parent-death signal,
    checkpoints after its step and exits; it trains on for no one, and the next submit
    resumes the run instead of finding it held."""
    from scaling.run.processes import _alive

    only, _, run_dir, proc = _long_run(study, 40)
    _wait(lambda: len(list(read_jsonl(run_dir / METRICS))) >= 1 and bool(workers_of(run_dir)))
    (pid,) = workers_of(run_dir)
    os.kill(proc.pid, signal.SIGKILL)  # submit alone, not its worker
    proc.wait()
    _wait(lambda: not _alive(pid), timeout=60)
    assert not (run_dir / RESULT).exists() and not (run_dir / "failure.json").exists()
    assert any((run_dir / "checkpoints").iterdir())
    assert "checkpoint written" in (run_dir / LOG).read_text()
    again = invoke("submit", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert again.exit_code == 0 and "1 finished" in again.output, again.output
    assert "resume 1" in again.output and "resumed from step" in (run_dir / LOG).read_text()


@pytest.mark.slow
def test_cancel_stops_a_run_in_a_worker_and_leaves_it_resumable(study: Path) -> None:
    only, _, run_dir, proc = _long_run(study, 40)
    _wait(lambda: len(list(read_jsonl(run_dir / METRICS))) >= 1)
    cancelled = invoke("cancel", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert "cancelled 1 runs" in cancelled.output, cancelled.output
    out = proc.communicate(timeout=150)[0].decode()
    assert proc.returncode == 0 and "preempted" in out, out
    assert not (run_dir / RESULT).exists() and any((run_dir / "checkpoints").iterdir())
    status = invoke("status", "sweep.yaml", "--cluster", "local.yaml", *only)
    assert "resumable" in status.output, status.output
