"""The Ray backend against a real local Ray (2 CPUs): Tune trials, retries, Ray Train.

The first test goes through the CLI and lets the backend start and stop its own Ray;
the others share one Ray started once for the module with the backend's `connect`.
Every result is compared with the same spec trained in this process by
scaling.train.trainer.run (bit for bit on one thread; within float tolerance for 2 ranks).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.plan.layout import Layout
from scaling.run.backends.base import Context, Job
from scaling.rundir import FAILURE, LOG, METRICS, RESULT, read_json, read_jsonl
from scaling.sweep.cluster import RayConfig
from scaling.sweep.spec import load_sweep
from tests.conftest import REPO, write

ray = pytest.importorskip("ray")
from scaling.run.backends import ray as ray_backend  # noqa: E402
from scaling.run.backends import ray_connect  # noqa: E402

SWEEP = """\
name: tiny
dataset: {name: synthetic, image_size: 16, size: 96}
seeds: [0]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  simclr: {batch_size: 32, epochs: 2, projection_dim: 16, warmup_epochs: 0.5, eval: {epochs: 3}}
  supervised: {batch_size: 32, epochs: 2, warmup_epochs: 0.5}
"""


def ray_profile(**extra: Any) -> str:
    """The shipped cluster/ray-local.yaml (so it cannot rot), in the test's folder."""
    profile = yaml.safe_load((REPO / "cluster" / "ray-local.yaml").read_text())
    profile.update(workdir="runs", **extra)
    return json.dumps(profile)


PROFILE = ray_profile()
OUTSIDE = [Path("/tmp/ray"), Path.home() / ".ray", Path.home() / "ray_results"]


def listing(paths: list[Path]) -> dict[str, Any]:
    """What exists under each path (names and mtimes), to compare before and after."""
    found: dict[str, Any] = {}
    for root in paths:
        if root.exists():
            found[str(root)] = sorted((str(p), p.lstat().st_mtime) for p in root.rglob("*"))
    found["scratch"] = sorted(str(p) for p in Path("/tmp").glob("scaling-ray-*"))
    return found


def ray_processes() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if b"raylet" in cmd or b"gcs_server" in cmd:
            pids.add(int(proc.name))
    return pids


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def no_new_ray_processes(before: set[int]) -> None:
    wait_for(lambda: not (ray_processes() - before), timeout=20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the module, started by the backend's own `connect`."""
    outside, before = listing(OUTSIDE), ray_processes()
    with ray_backend.connect(RayConfig(num_cpus=2), tmp_path_factory.mktemp("ray")):
        yield
    assert not ray.is_initialized()
    no_new_ray_processes(before)
    assert listing(OUTSIDE) == outside


def study(root: Path, sweep: str = SWEEP, profile: str = PROFILE) -> Path:
    write(root / "sweep.yaml", sweep)
    write(root / "ray.yaml", profile)
    return root


def jobs_of(root: Path, only: str | None = None) -> tuple[list[Job], Context]:
    """What `scaling submit` would hand the backend (cwd must be `root`)."""
    from scaling.run.planning import build_plan
    from scaling.run.submission import context_of, decide, prepare
    from scaling.run.tracking import ensure_experiment

    plan = build_plan(root / "sweep.yaml", root / "ray.yaml", [], only)
    ctx = context_of(plan)
    ensure_experiment(ctx.tracking_uri, ctx.experiment)
    return prepare(decide(plan, ctx), ctx), ctx


def newest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]
    return torch.load(newest, weights_only=True)["model"]


def assert_identical(run_dir: Path, reference: Path) -> None:
    got, want = read_json(run_dir / RESULT), read_json(reference / RESULT)
    assert got is not None and want is not None
    for key in ("top1", "top5", "knn_top1", "steps", "images_seen"):
        assert got.get(key) == want.get(key), key
    assert [r["loss"] for r in read_jsonl(run_dir / METRICS)] == [
        r["loss"] for r in read_jsonl(reference / METRICS)
    ]
    a, b = newest_weights(run_dir), newest_weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def mlflow_runs(root: Path) -> dict[str, dict[str, Any]]:
    from scaling.run.tracking import find_runs

    return find_runs(f"sqlite:///{root}/mlflow-ray.db", "tiny")  # cluster/ray-local.yaml's store


# ---------------------------------------------------------------------- without Ray


def test_a_dead_head_is_one_line_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    root = study(tmp_path, profile=ray_profile(ray={"address": f"127.0.0.1:{port}"}))
    started = time.monotonic()
    result = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "ray.yaml"])
    assert result.exit_code == 2 and time.monotonic() - started < 60, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert f"no Ray cluster answers at ray.address 127.0.0.1:{port}" in line
    assert "Traceback" not in result.output and not ray.is_initialized()
    assert not list((root / "runs").glob("tiny/*/checkpoints"))


def test_status_ignores_a_driver_record_whose_process_is_gone_or_reused(tmp_path: Path) -> None:
    import os
    import socket

    from scaling.run.locks import process_start

    ctx = Context(
        load_profile_for(tmp_path), "tiny", tmp_path, "sqlite:///x.db", "tiny", "cpu", 1, 1
    )
    jobs = [Job(load_sweep_text(tmp_path).runs[0], Layout.single(32), tmp_path / "r", 2)]
    path = ray_backend.storage_path(ctx) / ray_backend.DRIVER_STATE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "trials": {jobs[0].run_id: "RUNNING"}}
    write(path, json.dumps({**me, "start": process_start(os.getpid())}))
    assert ray_backend.RayBackend().status(jobs, ctx) == {jobs[0].run_id: "RUNNING"}
    write(path, json.dumps({**me, "start": "1"}))  # a crashed driver whose pid is reused
    assert ray_backend.RayBackend().status(jobs, ctx) == {}
    write(path, json.dumps({**me, "pid": 2**22 + 1}))  # a crashed driver
    assert ray_backend.RayBackend().status(jobs, ctx) == {}


def load_profile_for(root: Path) -> Any:
    from scaling.sweep.cluster import load_profile

    return load_profile(write(root / "ray.yaml", PROFILE))


def load_sweep_text(root: Path) -> Any:
    return load_sweep(write(root / "sweep.yaml", SWEEP))


def test_temp_dir_is_under_the_workdir_unless_too_long_for_sockets(tmp_path: Path) -> None:
    short = Path("/tmp") / f"sr{os.getpid()}"
    try:
        path, scratch = ray_connect._temp_dir(RayConfig(), short)
        assert (path, scratch) == (short / ".ray", False) and path.is_dir()
    finally:
        import shutil

        shutil.rmtree(short, ignore_errors=True)
    deep = tmp_path / ("x" * 60)
    path, scratch = ray_connect._temp_dir(RayConfig(), deep)
    try:
        assert scratch and path.name.startswith("scaling-ray-") and path.is_dir()
        assert len(str(path)) + ray_connect.SOCKET_SUFFIX <= 107 and not deep.exists()
    finally:
        path.rmdir()


def test_trial_resources_follow_the_profile() -> None:
    cpu = ray_backend.Settings("s", None, "cpu", 1, 2.0, None, "/")
    gpu = ray_backend.Settings("s", None, "cuda", None, 8.0, "A100", "/")
    assert ray_backend._trial_resources(1, cpu).bundles == [{"CPU": 2.0}]
    assert ray_backend._trial_resources(1, gpu).bundles == [
        {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A100": 0.001}
    ]
    # A multi-rank trial only drives Ray Train workers, which reserve their own.
    assert ray_backend._trial_resources(4, gpu).bundles == [{"memory": float(2**20)}]


# ---------------------------------------------------------------------- real Ray


@pytest.mark.slow
def test_cli_submit_matches_local_training_and_resubmits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = study(tmp_path)
    monkeypatch.chdir(root)
    outside, before, started = listing(OUTSIDE), ray_processes(), ray.is_initialized()

    result = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "ray.yaml"])
    assert result.exit_code == 0, result.output
    assert "2 finished" in result.output and "submitting 2 runs to ray" in result.output
    if not started:  # the backend started its own Ray, and left nothing behind
        assert not ray.is_initialized()
        no_new_ray_processes(before)
        assert listing(OUTSIDE) == outside

    from scaling.train.trainer import run

    sweep = load_sweep(root / "sweep.yaml")
    for spec in sweep.runs:
        run(spec, root / "reference" / spec.run_id, threads=1)
        assert_identical(root / "runs" / "tiny" / spec.run_id, root / "reference" / spec.run_id)
    tracked = mlflow_runs(root)
    assert {r: info["status"] for r, info in tracked.items()} == {
        spec.run_id: "FINISHED" for spec in sweep.runs
    }
    trials = list((root / "runs" / "tiny" / ray_backend.STORAGE).glob("*/*/checkpoint_*"))
    assert {p.parent.name for p in trials} == {spec.run_id for spec in sweep.runs}

    again = CliRunner().invoke(app, ["submit", "sweep.yaml", "--cluster", "ray.yaml"])
    assert again.exit_code == 0 and "nothing to run" in again.output, again.output
    assert len(mlflow_runs(root)) == 2
    status = CliRunner().invoke(app, ["status", "sweep.yaml", "--cluster", "ray.yaml"])
    assert status.exit_code == 0 and "2 finished" in status.output, status.output


@pytest.mark.slow
def test_a_killed_trial_is_retried_and_resumes_from_its_checkpoint(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = SWEEP.replace("size: 96", "size: 512").replace("epochs: 2, warmup", "epochs: 5, warmup")
    root = study(tmp_path, sweep)
    monkeypatch.chdir(root)
    (job,), ctx = jobs_of(root, "method=supervised")
    checkpoints = job.run_dir / "checkpoints"

    def epoch_one() -> bool:  # the first epoch's checkpoint (its step follows the data)
        return any(int(p.stem.split("-")[1]) > 0 for p in checkpoints.glob("ckpt-*.pt"))

    killed: list[int] = []

    def kill_after_epoch_one() -> None:
        wait_for(epoch_one)
        pid = int((job.run_dir / ".lock").read_text().split()[0])  # the trial's actor
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_after_epoch_one, daemon=True)
    killer.start()
    (outcome,) = ray_backend.RayBackend().submit([job], ctx)
    killer.join(timeout=1)
    assert killed and outcome.state == "finished", outcome
    text = (job.run_dir / LOG).read_text()
    assert text.count(f"ray trial {job.run_id}") == 2 and "resumed from step" in text

    from scaling.train.trainer import run

    run(job.spec, root / "reference", threads=1)
    assert_identical(job.run_dir, root / "reference")
    assert len(mlflow_runs(root)) == 1


@pytest.mark.slow
def test_two_rank_torch_trainer_matches_one_process_with_two_micro_batches(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = ray_profile(gpus_per_run=2, gpus_per_node=2)
    root = study(tmp_path, profile=profile)
    monkeypatch.chdir(root)
    (job,), ctx = jobs_of(root, "method=simclr")
    # CPU ranks have no SyncBN: BN sees each rank's 16 images, so the second view comes
    # from the shuffled batch (shuffle-BN), as in one process with two micro-batches
    assert job.layout == Layout(
        micro_batch=16,
        accum_steps=1,
        gpus=2,
        nodes=1,
        precision="fp32",
        bn_batch=16,
        bn_grouping="second_view_shuffled",
    )
    (outcome,) = ray_backend.RayBackend().submit([job], ctx)
    assert outcome.state == "finished", outcome

    from scaling.train.trainer import run

    reference = root / "reference"
    run(job.spec, reference, Layout(micro_batch=16, accum_steps=2, gpus=1), threads=1)
    # One line per epoch: only rank 0 writes. (Its loss is rank 0's share of the global
    # objective, not the whole batch's: the trainer does not all-reduce epoch metrics.)
    assert len(list(read_jsonl(job.run_dir / METRICS))) == 2
    # Parameters match; BN running statistics cannot: each rank tracks its own half of
    # the batch (CPU has no SyncBatchNorm), the single process both micro-batches.
    a, b = newest_weights(job.run_dir), newest_weights(reference)
    params = [
        k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert a.keys() == b.keys() and len(params) > len(a) / 3
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    got, want = read_json(job.run_dir / RESULT) or {}, read_json(reference / RESULT) or {}
    assert got["layout"]["gpus"] == 2 and got["steps"] == want["steps"] == 6
    assert len(mlflow_runs(root)) == 1


@pytest.mark.slow
def test_cancel_stops_running_and_pending_trials_leaving_them_resumable(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scaling.run.state import run_state

    sweep = SWEEP.replace("seeds: [0]", "seeds: [0, 1]").replace(
        "epochs: 2, warmup", "epochs: 200, warmup"
    )
    root = study(tmp_path, sweep, ray_profile(max_parallel=1))
    monkeypatch.chdir(root)
    jobs, ctx = jobs_of(root, "method=supervised")
    backend = ray_backend.RayBackend()
    seen: dict[str, Any] = {}

    def cancel_after_one_epoch() -> None:
        wait_for(lambda: any(len(list(read_jsonl(j.run_dir / METRICS))) >= 1 for j in jobs))
        seen["status"] = backend.status(jobs, ctx)
        seen["cancelled"] = backend.cancel(jobs, ctx)

    canceller = threading.Thread(target=cancel_after_one_epoch, daemon=True)
    canceller.start()
    outcomes = backend.submit(jobs, ctx)
    canceller.join(timeout=1)
    assert sorted(seen["status"].values()) == ["PENDING", "RUNNING"] and seen["cancelled"] == 2
    states = sorted(o.state for o in outcomes)
    assert states == ["cancelled", "preempted"], outcomes
    first = next(j for j in jobs if seen["status"][j.run_id] == "RUNNING")
    assert run_state(first.run_dir).state == "resumable"
    assert not (first.run_dir / FAILURE).exists() and not (first.run_dir / RESULT).exists()
    assert backend.status(jobs, ctx) == {}  # no live submit: the run directories say the rest
