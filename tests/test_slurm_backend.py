"""The Slurm backend against a real one-machine Slurm with accounting (tests/slurm_cluster.py).

Everything goes through the real CLI (`scaling submit/status/cancel`), real sbatch,
srun, sacct, scancel and scontrol, and a real SQLite MLflow store; results are compared
with the same runs trained in this process by `scaling.train.trainer.run` (bit-identical at one
thread). Parameter validation and the golden sbatch file need no cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.errors import SpecError
from scaling.plan.layout import Layout
from scaling.run.backends import slurm as slurm_backend
from scaling.run.backends import slurm_state
from scaling.run.backends.base import Context, Job
from scaling.run.backends.slurm_state import RECORD
from scaling.run.submission import make_context
from scaling.rundir import METRICS, RESULT, read_json, read_jsonl, run_dir_of
from scaling.sweep.cluster import load_profile
from scaling.sweep.spec import RunSpec, load_sweep
from tests.conftest import REPO, write

if TYPE_CHECKING:  # registered by pytest_plugins in conftest.py
    from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

GOLDEN = REPO / "tests" / "golden" / "slurm_multinode.sbatch"
WAIT_S = 300.0  # generous: two cores are shared with everything else

TINY = """\
name: tiny
dataset: {name: synthetic, image_size: 16, size: 96}
seeds: [0, 1, 2]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  simclr: {batch_size: 32, epochs: 1, projection_dim: 16, warmup_epochs: 0.5, eval: {epochs: 3}}
  supervised: {batch_size: 32, epochs: 1, warmup_epochs: 0.5}
tracking: {experiment: "tiny 'quoted' \\"name\\""}
"""
# Long enough (16 epochs of 16 steps, ~0.5 s each) to be interrupted three times.
LONG = """\
name: long
dataset: {name: synthetic, image_size: 16, size: 512}
seeds: [0]
model: {depth: 10, width: 0.25, stem: cifar}
methods:
  supervised: {batch_size: 32, epochs: 16, warmup_epochs: 0.5}
"""
BROKEN = """\
name: broken
dataset: {name: cifar10, root: nowhere, image_size: 16}
seeds: [0]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  supervised: {batch_size: 32, epochs: 1}
"""
TWO_RANKS = """\
name: ranks
dataset: {name: synthetic, image_size: 16, size: 96}
seeds: [0]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  simclr: {batch_size: 32, epochs: 2, projection_dim: 16, warmup_epochs: 0.5, eval: {epochs: 3}}
"""


def profile_text(workdir: Path, db: Path, partition: str, **extra: Any) -> str:
    """The shipped cluster/slurm-local.yaml (so it cannot rot) with this test's workdir,
    store and partition; JSON is YAML, so any path is quoted correctly."""
    profile: dict[str, Any] = yaml.safe_load((REPO / "cluster" / "slurm-local.yaml").read_text())
    profile.update(workdir=str(workdir), tracking={"uri": f"sqlite:///{db}"})
    profile["slurm"]["partition"] = partition
    profile.update(extra)
    return json.dumps(profile)


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def epochs_done(run_dir: Path) -> int:
    return len(list(read_jsonl(run_dir / METRICS)))


def job_log(run_dir: Path, job_id: str | None = None, task: int = 0) -> str:
    """A job's submitit log (stdout and stderr together, see executor_parameters)."""
    from submitit.core.utils import JobPaths

    record = read_json(run_dir / RECORD) or {}
    paths = JobPaths(record["folder"], job_id=job_id or record["job_id"], task_id=task)
    return paths.stdout.read_text(errors="replace") if paths.stdout.exists() else ""


def context(study: Path, sweep_file: str, profile_file: str) -> Context:
    from scaling.run.submission import make_context

    return make_context(load_sweep(study / sweep_file), load_profile(study / profile_file))


def scheduler_states(study: Path, sweep_file: str, profile_file: str) -> dict[str, str]:
    """What `scaling status` shows in its scheduler column (backend.status)."""
    ctx = context(study, sweep_file, profile_file)
    runs = load_sweep(study / sweep_file).runs
    jobs = [
        Job(
            r,
            Layout.single(int(r.config["batch_size"])),
            run_dir_of(ctx.workdir, ctx.sweep, r.run_id),
            int(r.config["epochs"]),
        )
        for r in runs
    ]
    return slurm_backend.SlurmBackend().status(jobs, ctx)


@pytest.fixture
def cancel_leftovers() -> Iterator[list[Path]]:
    """Workdirs whose recorded jobs are scancelled at the end, even when a test fails."""
    workdirs: list[Path] = []
    yield workdirs
    for workdir in workdirs:
        ids = [str(r["job_id"]) for p in workdir.glob(f"*/*/{RECORD}") if (r := read_json(p))]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


# ---------------------------------------------------------------------- no cluster needed


def multinode_profile(tmp_path: Path) -> Path:
    return write(
        tmp_path / "multinode.yaml",
        """\
backend: slurm
device: cuda
accelerator: {name: A100-80GB, memory_gb: 80, peak_tflops: 312}
gpus_per_node: 8
gpus_per_run: 16
workdir: /shared/scaling/runs
slurm:
  partition: gpu
  account: vision
  qos: high
  time_min: 720
  cpus_per_task: 10
  mem_gb: 480
  constraint: a100
  exclude: "node[001-002]"
  array_parallelism: 32
  max_timeouts: 5
  setup: ["module load cuda/12.4", "source /shared/venv/bin/activate"]
  additional: {mail_type: FAIL, additional_parameters: {reservation: scaling}}
""",
    )


def test_profile_becomes_submitit_parameters_one_task_per_gpu(tmp_path: Path) -> None:
    profile = load_profile(multinode_profile(tmp_path))
    params = slurm_backend.executor_parameters(profile, "cuda", sweep="imagenet")
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 8 and params["gpus_per_node"] == 8
    assert (params["partition"], params["account"], params["qos"]) == ("gpu", "vision", "high")
    assert (params["time"], params["cpus_per_task"], params["mem"]) == (720, 10, "480GB")
    assert params["mail_type"] == "FAIL" and params["additional_parameters"] == {
        "reservation": "scaling"
    }
    assert params["job_name"] == "scaling-imagenet"
    # A CPU profile: one task per rank, no GPU request, threads = cpus_per_task.
    cpu = load_profile(
        None,
        [
            "backend=slurm",
            "device=cpu",
            "gpus_per_run=2",
            "gpus_per_node=2",
            "slurm.cpus_per_task=3",
        ],
    )
    params = slurm_backend.executor_parameters(cpu, "cpu")
    assert (params["nodes"], params["ntasks_per_node"], "gpus_per_node" in params) == (1, 2, False)
    assert "export OMP_NUM_THREADS=3" in params["setup"]
    # The data workers and the collective timeout reach every task's environment.
    tuned = load_profile(None, ["backend=slurm", "data_workers=6", "dist_timeout_min=90"])
    ctx = make_context(load_sweep(REPO / "sweeps" / "quickstart.yaml"), tuned, "cuda")
    params = slurm_backend.executor_parameters(tuned, "cuda", extra_env=ctx.extra_env)
    assert "export SCALING_DATA_WORKERS=6" in params["setup"]
    assert "export SCALING_DIST_TIMEOUT_MIN=90.0" in params["setup"]
    assert load_profile(None).dist_timeout_min == 60 and load_profile(None).data_workers is None
    slurm_backend.check_profile(
        load_profile(REPO / "cluster" / "slurm.yaml")
    )  # the example is valid


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        (
            "slurm.additional={mail_typo: FAIL}",
            ["slurm.additional", "mail_typo", "valid:", "mail_type", "gres"],
        ),
        ("slurm.additional={time: 5}", ["slurm.additional", "time (set by time_min)"]),
        ("slurm.additional={additional_parameters: 3}", ["slurm", "submitit rejects"]),
        ("gpus_per_run=9", ["gpus_per_run", "multiple of gpus_per_node"]),
        ("device=auto", ["device", "cuda"]),
        ("workdir=/shared/100%/runs", ["workdir", "has a '%'", "filename pattern"]),
    ],
)
def test_bad_profile_is_a_one_line_spec_error_when_planning(
    tmp_path: Path, override: str, fragments: list[str]
) -> None:
    profile = load_profile(multinode_profile(tmp_path), [override])
    with pytest.raises(SpecError) as err:
        slurm_backend.check_profile(profile, "multinode.yaml")
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    # ... and `scaling plan` reports it before costing anything (the planning hook).
    import yaml

    sweep = write(tmp_path / "sweep.yaml", TINY)
    bad = write(tmp_path / "bad.yaml", yaml.safe_dump(profile.model_dump()))
    result = CliRunner().invoke(app, ["plan", str(sweep), "--cluster", str(bad)])
    assert result.exit_code == 2, result.output
    assert all(f in " ".join(result.output.split()) for f in fragments), result.output


def test_multinode_sbatch_script_matches_golden_file(tmp_path: Path) -> None:
    profile = load_profile(multinode_profile(tmp_path))
    ctx = Context(
        profile, "imagenet", Path(profile.workdir), "http://mlflow:5000", "imagenet", "cuda", 1, 64
    )
    text = slurm_backend.sbatch_script(ctx, runs=3, python="python")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


SLURM_SYNTAX = {
    "partition": "gpu,gpu-long",
    "account": "lab_1.x",
    "qos": "high",
    "constraint": "[a100*2&ib]|h100",
    "exclude": "node[001-004],gpu7",
}


@pytest.mark.parametrize("field", sorted(SLURM_SYNTAX))
def test_slurm_fields_take_slurm_syntax_and_nothing_that_breaks_the_script(
    tmp_path: Path, field: str
) -> None:
    """What Slurm allows in a field reaches the sbatch script as one #SBATCH line, and the
    script keeps its --time and --signal lines (preemption handling); a newline or a shell
    character is refused when the profile is read, before anything is queued."""
    text = "backend: slurm\ndevice: cpu\nworkdir: runs\nslurm: {time_min: 60}\n"
    good = write(tmp_path / "good.yaml", text)
    profile = load_profile(good, [f"slurm.{field}={SLURM_SYNTAX[field]}"])
    ctx = Context(profile, "s", tmp_path / "runs", "http://mlflow:5000", "s", "cpu", 1, 4)
    script = slurm_backend.sbatch_script(ctx, runs=2, python="python")
    header = script.split("# Parameters\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("#SBATCH --") for line in header), header
    option = "--" + field.replace("_", "-") + "="
    assert sum(option in line and SLURM_SYNTAX[field] in line for line in header) == 1, header
    assert "#SBATCH --time=60" in header and "#SBATCH --signal=USR2@90" in header
    for bad in ("x\nhostname", "x\r#SBATCH --time=99999", "x; touch /tmp/p", "x y", "$(id)"):
        with pytest.raises(SpecError, match=rf"slurm\.{field}"):
            load_profile(good, [f"slurm.{field}={json.dumps(bad)}"])


def test_arrays_are_chunked_by_index_limit() -> None:
    items = list(range(10))
    assert [len(c) for c in slurm_backend.chunks(items, 4)] == [4, 4, 2]  # type: ignore[arg-type]
    assert [len(c) for c in slurm_backend.chunks(items, 0)] == [1] * 10  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the real cluster


def test_the_job_record_keeps_every_job_under_a_lock_and_tolerates_bad_records(
    tmp_path: Path,
) -> None:
    import multiprocessing as mp

    from scaling.run.backends import slurm_state

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    procs = [
        mp.get_context("fork").Process(
            target=slurm_state.record_job, args=(run_dir, f"{100 + i}", tmp_path)
        )
        for i in range(12)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert sorted(slurm_state.job_ids(run_dir)) == [str(100 + i) for i in range(12)]
    for bad in ({}, {"job_id": None}, {"previous": "41", "job_id": True}, [1, 2]):
        (run_dir / RECORD).write_text(json.dumps(bad))
        assert slurm_state.job_ids(run_dir) == []  # no traceback, no job
        assert not slurm_state.just_submitted(run_dir)


def test_a_host_oom_kill_fails_the_run_and_other_scheduler_ends_leave_it_resumable() -> None:
    from scaling.run.backends.slurm_state import scheduler_failure

    failure = scheduler_failure("OUT_OF_MEMORY", "41_2", "0:125")
    assert failure is not None and failure["kind"] == "oom" and "slurm.mem_gb" in failure["message"]
    for state in ("NODE_FAIL", "BOOT_FAIL", "TIMEOUT", "PREEMPTED", "CANCELLED", "COMPLETED"):
        assert scheduler_failure(state, "41_2", "0:0") is None, state


def test_sqlite_tracking_is_refused_when_slurm_nodes_are_other_machines(
    slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scaling.errors import SubmissionError
    from scaling.run.backends import slurm_state

    slurm_state.check_tracking("sqlite:////tmp/x/mlflow.db", slurm_cluster.partition)  # this host
    slurm_state.check_tracking("http://mlflow:5000", slurm_cluster.partition)
    # A partition of other machines (this cluster has only this one: its sinfo answer).
    monkeypatch.setattr(slurm_state, "_partition_nodes", lambda partition: ["gpu001", "gpu002"])
    with pytest.raises(SubmissionError, match=r"only one machine can write.*gpu001.*mlflow server"):
        slurm_state.check_tracking("sqlite:////tmp/x/mlflow.db", "gpu")


def test_max_array_size_is_read_from_scontrol(slurm_cluster: SlurmCluster) -> None:
    assert slurm_backend.max_array_size() == slurm_cluster.max_array_size


@pytest.mark.slow
def test_sweep_runs_end_to_end_in_chunked_arrays_like_the_local_backend(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    weird_tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancel_leftovers: list[Path],
) -> None:
    # Quotes and spaces in every path the jobs touch (workdir, submitit folder, sweep
    # file) and in the MLflow experiment name. Not in the working directory: MLflow's
    # SQLite store derives its Default experiment's artifact root from it and cannot
    # insert a path with a quote (its own bug: "near 'dir': syntax error").
    study = weird_tmp_path
    monkeypatch.chdir(tmp_path)
    write(study / "sweep.yaml", TINY)
    workdir = study / "runs 'w'"
    write(
        study / "slurm.yaml", profile_text(workdir, tmp_path / "mlflow.db", slurm_cluster.partition)
    )
    cancel_leftovers.append(workdir)
    limit = min(slurm_cluster.max_array_size, 4)  # 6 runs: two arrays (the cap is real when small)
    monkeypatch.setattr(slurm_backend, "max_array_size", lambda: limit)

    sweep_file, profile_file = str(study / "sweep.yaml"), str(study / "slurm.yaml")
    result = invoke("submit", sweep_file, "--cluster", profile_file)
    assert result.exit_code == 0, result.output
    assert "6 submitted" in result.output and "queued as job" in result.output
    sweep = load_sweep(study / "sweep.yaml")
    run_dirs = {r.run_id: workdir / "tiny" / r.run_id for r in sweep.runs}
    ids = {rid: read_json(d / RECORD)["job_id"] for rid, d in run_dirs.items()}
    arrays: dict[str, list[str]] = {}
    for job_id in ids.values():
        arrays.setdefault(job_id.split("_")[0], []).append(job_id)
    assert sorted(len(v) for v in arrays.values()) == [2, 4], ids
    assert all(job_id.split("_")[1] in {"0", "1", "2", "3"} for job_id in ids.values())

    wait_for(lambda: all((d / RESULT).exists() for d in run_dirs.values()), "6 results")
    wait_for(
        lambda: all(
            s.startswith("COMPLETED")
            for s in scheduler_states(study, "sweep.yaml", "slurm.yaml").values()
        ),
        "sacct: COMPLETED",
    )
    # The sbatch file submitit wrote is the one sbatch_script() previews.
    ctx = context(study, "sweep.yaml", "slurm.yaml")
    first = min(arrays, key=lambda a: len(arrays[a]) == 2)
    written = (workdir / "tiny" / ".submitit" / first / f"{first}_submission.sh").read_text()
    assert written == slurm_backend.sbatch_script(ctx, runs=4, chunks=2)

    # The same specs trained here, at one thread: bit-identical results and metrics.
    from scaling.train.trainer import run

    for spec in (sweep.runs_of("simclr")[0], sweep.runs_of("supervised")[2]):
        reference = run(spec, tmp_path / "reference" / spec.run_id, threads=1)
        got = read_json(run_dirs[spec.run_id] / RESULT)
        for key in ("top1", "top5", "knn_top1", "steps", "images_seen", "train_flops"):
            assert got.get(key) == reference.get(key), (spec.method, key)
        mine = [(m["loss"], m["top1"]) for m in read_jsonl(run_dirs[spec.run_id] / METRICS)]
        assert mine == [
            (m["loss"], m["top1"])
            for m in read_jsonl(tmp_path / "reference" / spec.run_id / METRICS)
        ]

    from scaling.run.tracking import find_runs

    tracked = find_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny 'quoted' \"name\"")
    assert set(tracked) == set(run_dirs)
    assert all(t["status"] == "FINISHED" and "top1" in t["metrics"] for t in tracked.values())

    again = invoke("submit", sweep_file, "--cluster", profile_file)
    assert again.exit_code == 0 and "nothing to run" in again.output, again.output
    assert {rid: read_json(d / RECORD)["job_id"] for rid, d in run_dirs.items()} == ids


@pytest.mark.slow
def test_requeue_timeout_and_cancel_each_resume_into_the_same_mlflow_run(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancel_leftovers: list[Path],
) -> None:
    import submitit

    from scaling.run.state import is_locked, run_state
    from scaling.train.trainer import run

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sweep.yaml", LONG)
    write(
        tmp_path / "slurm.yaml",
        profile_text(tmp_path / "runs", tmp_path / "mlflow.db", slurm_cluster.partition),
    )
    cancel_leftovers.append(tmp_path / "runs")
    spec = load_sweep(tmp_path / "sweep.yaml").runs[0]
    run_dir = tmp_path / "runs" / "long" / spec.run_id
    assert invoke("submit", "sweep.yaml", "--cluster", "slurm.yaml").exit_code == 0
    wait_for(lambda: epochs_done(run_dir) >= 1 and (run_dir / "mlflow.json").exists(), "epoch 1")
    mlflow_id = read_json(run_dir / "mlflow.json")["mlflow_run_id"]
    job_id = read_json(run_dir / RECORD)["job_id"]
    assert scheduler_states(tmp_path, "sweep.yaml", "slurm.yaml") == {
        spec.run_id: f"RUNNING (job {job_id})"
    }
    # A second submit while the job runs, with another profile: the run is left as it is.
    extra = {"precision": "bf16"}
    write(
        tmp_path / "bf16.yaml",
        profile_text(tmp_path / "runs", tmp_path / "mlflow.db", slurm_cluster.partition, **extra),
    )
    spec_json = (run_dir / "spec.json").read_bytes()
    again = invoke("submit", "sweep.yaml", "--cluster", "bf16.yaml")
    assert again.exit_code == 0 and "queued or running" in again.output, again.output
    assert (run_dir / "spec.json").read_bytes() == spec_json
    assert read_json(run_dir / RECORD)["job_id"] == job_id

    # 1. `scontrol requeue` (an administrator, a node failure policy): SIGTERM, checkpoint.
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    reference = run(spec, tmp_path / "reference", threads=1)  # while Slurm holds the job back
    wait_for(
        lambda: job_log(run_dir).count("resumed from step") == 1 and epochs_done(run_dir) >= 2,
        "resume 1",
    )

    # 2. submitit's simulated time-out: USR2 -> checkpoint() -> scontrol requeue.
    done = epochs_done(run_dir)
    submitit.SlurmJob(folder=read_json(run_dir / RECORD)["folder"], job_id=job_id)._interrupt(
        timeout=True
    )
    wait_for(
        lambda: job_log(run_dir).count("resumed from step") == 2 and epochs_done(run_dir) > done,
        "resume 2",
    )
    assert "Requeued job" in job_log(run_dir)

    # 3. `scaling cancel`: SIGTERM, checkpoint, CANCELLED; the run stays resumable.
    result = invoke("cancel", "sweep.yaml", "--cluster", "slurm.yaml")
    assert "cancelled 1 runs" in result.output, result.output
    wait_for(
        lambda: (
            scheduler_states(tmp_path, "sweep.yaml", "slurm.yaml")[spec.run_id].startswith(
                "CANCELLED"
            )
            and not is_locked(run_dir)
        ),
        "CANCELLED",
    )
    assert run_state(run_dir).state == "resumable", (
        "cancelled after training ended: make LONG longer"
    )
    assert job_log(run_dir).count("checkpoint written") == 3

    # 4. submit again: a new job resumes the run.
    result = invoke("submit", "sweep.yaml", "--cluster", "slurm.yaml")
    assert result.exit_code == 0 and "resume 1" in result.output, result.output
    wait_for(lambda: (run_dir / RESULT).exists(), "result")
    record = read_json(run_dir / RECORD)
    assert record["previous"] == [job_id] and record["job_id"] != job_id
    assert "resumed from step" in job_log(run_dir)

    resumed = read_json(run_dir / RESULT)
    for key in ("top1", "top5", "steps", "images_seen"):
        assert resumed[key] == reference[key], key
    import mlflow

    from scaling.run.tracking import find_runs

    def tracked() -> dict[str, Any]:
        return find_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "long")[spec.run_id]

    # The job pushes to MLflow after it wrote result.json: wait for that push.
    wait_for(lambda: tracked()["status"] == "FINISHED", "FINISHED in MLflow", timeout=60)
    assert tracked()["mlflow_run_id"] == mlflow_id
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("long").experiment_id])) == 1
    history = client.get_metric_history(mlflow_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 17))


@pytest.mark.slow
def test_failing_job_is_reported_failed_with_its_log_tail(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancel_leftovers: list[Path],
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sweep.yaml", BROKEN)  # no CIFAR-10 files: the job raises
    write(
        tmp_path / "slurm.yaml",
        profile_text(tmp_path / "runs", tmp_path / "mlflow.db", slurm_cluster.partition),
    )
    cancel_leftovers.append(tmp_path / "runs")
    assert invoke("submit", "sweep.yaml", "--cluster", "slurm.yaml").exit_code == 0
    run_id = load_sweep(tmp_path / "sweep.yaml").runs[0].run_id
    job_id = read_json(tmp_path / "runs" / "broken" / run_id / RECORD)["job_id"]

    def failed() -> bool:
        return scheduler_states(tmp_path, "sweep.yaml", "slurm.yaml")[run_id].startswith("FAILED")

    wait_for(failed, "FAILED in sacct")
    state, *tail = scheduler_states(tmp_path, "sweep.yaml", "slurm.yaml")[run_id].splitlines()
    assert state == f"FAILED (exit 1:0, job {job_id})"
    assert (
        any("CIFAR-10 not found" in line for line in tail)
        and len(tail) <= slurm_state.LOG_TAIL_LINES
    )
    status = invoke("status", "sweep.yaml", "--cluster", "slurm.yaml")
    assert "FAILED (exit 1:0" in status.output and "CIFAR-10 not found" in status.output, (
        status.output
    )


@pytest.mark.slow
def test_two_task_job_trains_with_global_negatives_like_one_process(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancel_leftovers: list[Path],
) -> None:
    """gpus_per_run: 2 on a CPU profile: one job, two srun tasks, gloo.

    Equal to one process with two cached micro-batches of the per-rank size: same
    views (every rank draws the global batch's augmentations), same global negatives,
    same per-micro-batch batch-norm statistics (the second view of the shuffled batch,
    one permutation for both ranks), averaged gradients: the same weights
    and the same epoch losses. What differs: BN *running* statistics (each rank tracks
    its own half, rank 0's are saved; one process tracks all four chunks), hence
    eval-mode numbers, and the logged top-1 (each rank ranks its positives among its
    own views only).
    """
    import torch

    from scaling.train import checkpoint
    from scaling.train.trainer import run

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sweep.yaml", TWO_RANKS)
    write(
        tmp_path / "slurm.yaml",
        profile_text(
            tmp_path / "runs",
            tmp_path / "mlflow.db",
            slurm_cluster.partition,
            gpus_per_run=2,
            gpus_per_node=2,
        ),
    )
    cancel_leftovers.append(tmp_path / "runs")
    assert invoke("submit", "sweep.yaml", "--cluster", "slurm.yaml").exit_code == 0
    # Two CPU ranks without SyncBN normalise BN over each rank's 16 images: in the identity.
    # ... and the second view cut from the shuffled batch (shuffle-BN): in the identity too.
    spec: RunSpec = load_sweep(tmp_path / "sweep.yaml").runs[0]
    spec = spec.with_bn_batch(16, "second_view_shuffled")
    run_dir = tmp_path / "runs" / "ranks" / spec.run_id
    assert read_json(run_dir / "spec.json")["layout"] == {
        "micro_batch": 16,
        "accum_steps": 1,
        "gpus": 2,
        "nodes": 1,
        "precision": "fp32",
        "bn_batch": 16,
        "bn_grouping": "second_view_shuffled",
    }
    run(spec, tmp_path / "reference", Layout(micro_batch=16, accum_steps=2, gpus=1), threads=1)
    wait_for(lambda: (run_dir / RESULT).exists(), "result")
    assert "global_rank=1(2)" in job_log(run_dir, task=1) and "x 2 ranks" in job_log(run_dir)

    ranks = checkpoint.restore(run_dir)["model"]
    single = checkpoint.restore(tmp_path / "reference")["model"]
    weights = [k for k, v in ranks.items() if v.dtype.is_floating_point and "running_" not in k]
    assert len(weights) > 20
    for key in weights:
        torch.testing.assert_close(ranks[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    losses = [m["loss"] for m in read_jsonl(run_dir / METRICS)]
    expected = [m["loss"] for m in read_jsonl(tmp_path / "reference" / METRICS)]
    assert len(losses) == 2 and losses == pytest.approx(expected, rel=1e-5)
