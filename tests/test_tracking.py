"""scaling.run.tracking and scaling.run.mirror against a real SQLite MLflow store, on run
directories written here in the formats training writes (spec.json, metrics.jsonl,
result.json, failure.json)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from mlflow import MlflowClient

from scaling.errors import ScalingError
from scaling.run import mirror, tracking
from scaling.rundir import FAILURE, LOG, METRICS, RESULT, SPEC, append_jsonl, read_json, write_json
from scaling.sweep.methods import METHODS
from scaling.sweep.spec import DatasetConfig, ModelConfig, RunSpec, Sweep, TrackingConfig

LAYOUT = {"micro_batch": 16, "accum_steps": 2, "gpus": 2, "nodes": 1}
EPOCH_KEYS = ("step", "loss", "top1", "lr", "images_per_s", "peak_memory_mb", "seconds")
FORK = mp.get_context("fork")


# ----------------------------------------------------------------------------- fixtures


def make_spec(method: str = "simclr", depth: int = 18, seed: int = 0, epochs: int = 4) -> RunSpec:
    config = METHODS[method].config(batch_size=64, epochs=epochs).model_dump()
    dataset = DatasetConfig(name="digits", image_size=16).model_dump()
    return RunSpec(
        method, dataset, ModelConfig(depth=depth, width=0.5).model_dump(), seed, config, sweep="t"
    )


def epoch_record(epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "loss": 5.0 / epoch,
        "top1": 0.1 * epoch,
        "lr": 0.3 / epoch,
        "images_per_s": 100.0 + epoch,
        "peak_memory_mb": 50.5,
        "seconds": 1.25,
    }


def make_run_dir(
    root: Path, spec: RunSpec, epochs: int = 0, layout: dict[str, int] = LAYOUT
) -> Path:
    run_dir = root / spec.run_id
    write_json(
        run_dir / SPEC,
        {**spec.to_dict(), "layout": layout, "code": {"commit": "0123abcd", "dirty": False}},
    )
    for epoch in range(1, epochs + 1):
        append_jsonl(run_dir / METRICS, epoch_record(epoch))
    (run_dir / LOG).write_text("epoch 1 ...\n")
    return run_dir


def finish(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    result = {
        "run_id": spec.run_id,
        "method": spec.method,
        "top1": 0.71,
        "top5": 0.95,
        "knn_top1": 0.6,
        "epochs": spec.config["epochs"],
        "steps": 40,
        "images_seen": 2560,
        "train_flops": 1.5e12,
        "wall_time_s": 12.5,
        "derived": {"lr": 0.075},
        "layout": LAYOUT,
    }
    write_json(run_dir / RESULT, result)
    return result


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def runs_tagged(client: MlflowClient, experiment: str, run_id: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], f"tags.`scaling.run_id` = '{run_id}'"))


# ----------------------------------------------------------------------------- URIs


def test_resolve_uri_precedence_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("http://sweep:5000", "http://profile:5000") == "http://profile:5000"
    assert tracking.resolve_uri("http://sweep:5000", None) == "http://sweep:5000"
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"
    assert tracking.resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_uri("./mlruns") == str(tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_uri(None) == "http://env:5000"
    assert tracking.resolve_uri("sqlite:///s.db") == f"sqlite:///{tmp_path}/s.db"


def test_sqlite_uri_names_the_file_sqlalchemy_opens(tmp_path: Path) -> None:
    path = tmp_path / "a b 'c' %41 ?q #h" / "m.db"
    uri = tracking.sqlite_uri(path)
    assert sqlalchemy.engine.make_url(uri).database == str(path)
    assert tracking.resolve_uri(uri) == uri


def test_experiment_name_and_run_url() -> None:
    sweep = Sweep("cifar", "", "s.yaml", TrackingConfig(), (), {})
    assert tracking.experiment_name(sweep) == "cifar"
    named = Sweep("cifar", "", "s.yaml", TrackingConfig(experiment="paper-b9"), (), {})
    assert tracking.experiment_name(named) == "paper-b9"
    assert (
        tracking.run_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    )
    assert tracking.run_url("sqlite:////x/mlflow.db", "3", "abc") is None
    assert "scaling ui" in tracking.run_hint("sqlite:////x/mlflow.db", "3", "abc")


# ----------------------------------------------------------------------------- push


def test_push_logs_the_run_directory(store: str, store_dir: Path, client: MlflowClient) -> None:
    root = store_dir / "runs-full"
    spec = make_spec()
    run_dir = make_run_dir(root, spec, epochs=4)
    result = finish(run_dir, spec)
    mlflow_id = mirror.push(run_dir, store, "full")
    assert mlflow_id is not None
    run = client.get_run(mlflow_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name("full").experiment_id
    flat = spec.flat()
    expected_params = {k: str(v) for k, v in {**flat, **LAYOUT}.items()} | {"derived.lr": "0.075"}
    assert run.data.params == expected_params
    tags = run.data.tags
    assert tags["scaling.run_id"] == spec.run_id and tags["scaling.sweep"] == "t"
    assert tags["scaling.method"] == "simclr" and tags["scaling.depth"] == "18"
    assert tags["scaling.batch_size"] == "64" and tags["scaling.seed"] == "0"
    assert tags["scaling.micro_batch"] == "16" and tags["mlflow.source.git.commit"] == "0123abcd"
    # the convergence verdict on its curve (5, 2.5, 1.67, 1.25: 11% of its fall last)
    assert tags["scaling.converged"] == "true"
    assert tags["scaling.convergence"] == "train top-1 0.40, converged"
    for key in EPOCH_KEYS:
        assert history(client, mlflow_id, f"train/{key}") == [
            (e, float(epoch_record(e)[key])) for e in range(1, 5)
        ]
    # deterministic timestamps (run start = spec.json's time, + 1.25 s a epoch), so a
    # repeated point is an exact duplicate the store drops; progress kept in a tag
    assert run.info.start_time == int((run_dir / SPEC).stat().st_mtime * 1000)
    stamps = sorted((m.step, m.timestamp) for m in client.get_metric_history(mlflow_id, "train/lr"))
    assert stamps == [(e, run.info.start_time + 1250 * e) for e in range(1, 5)]
    assert tags[mirror.EPOCHS_TAG] == "4"
    for key in ("top1", "top5", "knn_top1", "wall_time_s", "images_seen", "train_flops"):
        assert history(client, mlflow_id, key) == [(4, float(result[key]))]
    artifacts = {f.path for f in client.list_artifacts(mlflow_id)}
    assert artifacts == {SPEC, RESULT, METRICS, LOG}
    local = Path(client.download_artifacts(mlflow_id, RESULT, str(root)))
    assert read_json(local) == result
    # artifacts live beside the database, not in ./mlruns of the working directory
    assert run.info.artifact_uri.startswith(str(store_dir / "mlartifacts" / "full"))
    state = mirror.read_state(run_dir)
    assert state and state["mlflow_run_id"] == mlflow_id and state["epochs_pushed"] == 4
    assert state["pending"] is False and state["uri"] == store


def test_no_stray_percent_encoded_folder(store: str, store_dir: Path) -> None:
    # MLflow mkdirs a percent-encoded sqlite path without decoding it
    assert [p.name for p in store_dir.parent.iterdir()] == [store_dir.name]


def test_push_is_idempotent_and_incremental(
    store: str, client: MlflowClient, tmp_path: Path
) -> None:
    spec = make_spec(seed=1)
    run_dir = make_run_dir(tmp_path, spec, epochs=2)
    first = mirror.push(run_dir, store, "incr")
    assert first and client.get_run(first).info.status == "RUNNING"
    assert mirror.push(run_dir, store, "incr") == first
    assert mirror.push(run_dir, store, "incr", force=True) == first
    (run_dir / mirror.STATE).unlink()  # lost state: found again through the tag
    assert mirror.push(run_dir, store, "incr") == first
    assert history(client, first, "train/loss") == [(1, 5.0), (2, 2.5)]
    for epoch in (3, 4):
        append_jsonl(run_dir / METRICS, epoch_record(epoch))
    assert mirror.push(run_dir, store, "incr") == first
    assert [s for s, _ in history(client, first, "train/loss")] == [1, 2, 3, 4]
    finish(run_dir, spec)
    assert mirror.push(run_dir, store, "incr") == first
    (run_dir / mirror.STATE).unlink()
    assert mirror.push(run_dir, store, "incr", force=True) == first
    assert len(runs_tagged(client, "incr", spec.run_id)) == 1
    for key in EPOCH_KEYS:
        assert len(client.get_metric_history(first, f"train/{key}")) == 4
    assert len(client.get_metric_history(first, "top1")) == 1
    assert client.get_run(first).info.status == "FINISHED"


def test_unchanged_run_dir_is_not_sent_again_unless_forced(
    store: str, client: MlflowClient, tmp_path: Path
) -> None:
    run_dir = make_run_dir(tmp_path, make_spec(seed=4), epochs=1)
    first = mirror.push(run_dir, store, "cached")
    client.delete_run(first)
    assert mirror.push(run_dir, store, "cached") == first  # files unchanged: MLflow not asked
    again = mirror.push(run_dir, store, "cached", force=True)  # asked: the run is gone
    assert again is not None and again != first
    assert history(client, again, "train/loss") == [(1, 5.0)]


def test_failure_then_retry_then_success(store: str, client: MlflowClient, tmp_path: Path) -> None:
    spec = make_spec(seed=2)
    run_dir = make_run_dir(tmp_path, spec, epochs=1)
    write_json(
        run_dir / FAILURE,
        {
            "kind": "oom",
            "message": "CUDA out of memory",
            "step": 7,
            "traceback": "...",
            "time": time.time(),
        },
    )
    mlflow_id = mirror.push(run_dir, store, "fail")
    assert mlflow_id is not None
    run = client.get_run(mlflow_id)
    assert run.info.status == "FAILED" and run.data.tags["scaling.failure_kind"] == "oom"
    assert FAILURE in {f.path for f in client.list_artifacts(mlflow_id)}
    # requeued with another layout: the failure is gone, params keep their first values
    (run_dir / FAILURE).unlink()
    make_run_dir(
        tmp_path, spec, layout={"micro_batch": 32, "accum_steps": 1, "gpus": 2, "nodes": 1}
    )
    assert mirror.push(run_dir, store, "fail") == mlflow_id
    run = client.get_run(mlflow_id)
    assert run.info.status == "RUNNING" and "scaling.failure_kind" not in run.data.tags
    assert run.data.tags["scaling.micro_batch"] == "32" and run.data.params["micro_batch"] == "16"
    finish(run_dir, spec)
    assert mirror.push(run_dir, store, "fail") == mlflow_id
    assert client.get_run(mlflow_id).info.status == "FINISHED"


def test_push_without_spec_does_nothing(store: str, tmp_path: Path) -> None:
    assert mirror.push(tmp_path / "empty", store, "nothing") is None
    assert not (tmp_path / "empty" / mirror.STATE).exists()


def test_deleted_experiment_is_reported_not_raised(
    store: str, client: MlflowClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    experiment_id = tracking.ensure_experiment(store, "gone")
    client.delete_experiment(experiment_id)
    with pytest.raises(ScalingError, match="restore"):
        tracking.ensure_experiment(store, "gone")
    run_dir = make_run_dir(tmp_path, make_spec(seed=3), epochs=1)
    with caplog.at_level(logging.WARNING, logger="scaling.run.mirror"):
        assert mirror.push(run_dir, store, "gone") is None
    assert "restore" in caplog.text
    state = mirror.read_state(run_dir)
    assert state and state["pending"] is True and "deleted" in state["error"]


def test_unreachable_server_fails_fast_then_catches_up(
    store: str, client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = "http://127.0.0.1:9"
    specs = [make_spec(seed=s) for s in (10, 11)]
    dirs = [make_run_dir(tmp_path, s, epochs=3) for s in specs]
    finish(dirs[0], specs[0])
    started = time.monotonic()
    assert mirror.push(dirs[0], dead, "late") is None
    assert mirror.sync(dirs, dead, "late") == (0, 2)
    assert time.monotonic() - started < 10
    state = mirror.read_state(dirs[0])
    assert state and state["pending"] is True and state["uri"] == dead and state["error"]
    with pytest.raises(ScalingError):
        tracking.find_runs(dead, "late")
    assert mirror.sync(dirs, store, "late") == (2, 0)
    found = tracking.find_runs(store, "late")
    assert {k: v["status"] for k, v in found.items()} == {
        specs[0].run_id: "FINISHED",
        specs[1].run_id: "RUNNING",
    }
    first = found[specs[0].run_id]["mlflow_run_id"]
    assert history(client, first, "train/top1") == [(e, 0.1 * e) for e in (1, 2, 3)]
    assert found[specs[0].run_id]["metrics"]["top1"] == 0.71


def test_sync_skips_folders_without_spec(store: str, tmp_path: Path) -> None:
    dirs = [make_run_dir(tmp_path, make_spec(depth=d), epochs=1) for d in (10, 34)]
    (tmp_path / "not-a-run").mkdir()
    assert mirror.sync([*dirs, tmp_path / "not-a-run"], store, "skips") == (2, 0)
    assert len(tracking.find_runs(store, "skips")) == 2
    assert tracking.find_runs(store, "no-such-experiment") == {}


# ----------------------------------------------------------------------------- find_runs


def _create_runs(client: MlflowClient, experiment_id: str, count: int) -> None:
    for i in range(count):
        client.create_run(experiment_id, start_time=1_000 + i, tags={"scaling.run_id": f"{i:012x}"})


def test_find_runs_follows_page_tokens(store: str, client: MlflowClient) -> None:
    experiment_id = tracking.ensure_experiment(store, "pages")
    _create_runs(client, experiment_id, 120)
    client.create_run(experiment_id, tags={"other": "report"})  # no scaling.run_id: left out
    newer = client.create_run(experiment_id, start_time=5_000, tags={"scaling.run_id": f"{0:012x}"})
    found = tracking.find_runs(store, "pages", page_size=50)
    assert sorted(found) == [f"{i:012x}" for i in range(120)]
    assert found[f"{0:012x}"]["mlflow_run_id"] != newer.info.run_id  # the oldest wins


@pytest.mark.slow
def test_find_runs_beyond_one_thousand(store: str, client: MlflowClient) -> None:
    experiment_id = tracking.ensure_experiment(store, "thousands")
    _create_runs(client, experiment_id, 1_100)
    assert len(tracking.find_runs(store, "thousands")) == 1_100


# ----------------------------------------------------------------------------- concurrency


def _push_as_it_trains(run_dir: str, uri: str, epochs: int, barrier: Any, out: Any) -> None:
    spec = RunSpec.from_dict(read_json(Path(run_dir) / SPEC) or {})
    barrier.wait()
    ids = []
    for epoch in range(1, epochs + 1):
        append_jsonl(Path(run_dir) / METRICS, epoch_record(epoch))
        ids.append(mirror.push(run_dir, uri, "many"))
    finish(Path(run_dir), spec)
    ids.append(mirror.push(run_dir, uri, "many"))
    out.put((run_dir, ids))


def _run_all(target: Any, args: list[tuple[Any, ...]]) -> Iterator[Any]:
    out = FORK.Queue()
    procs = [FORK.Process(target=target, args=(*a, out)) for a in args]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return iter(results)


def test_eight_processes_on_one_new_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    uri = tracking.sqlite_uri(tmp_path / "fresh" / "mlflow.db")  # schema made by the racers
    specs = [make_spec(seed=s, epochs=3) for s in range(8)]
    dirs = [str(make_run_dir(tmp_path / "runs", s)) for s in specs]
    barrier = FORK.Barrier(8)
    results = dict(_run_all(_push_as_it_trains, [(d, uri, 3, barrier) for d in dirs]))
    client = MlflowClient(uri)
    found = tracking.find_runs(uri, "many")
    assert sorted(found) == sorted(s.run_id for s in specs)
    for spec, run_dir in zip(specs, dirs, strict=True):
        ids = results[run_dir]
        assert set(ids) == {found[spec.run_id]["mlflow_run_id"]}, ids  # every push succeeded
        assert found[spec.run_id]["status"] == "FINISHED"
        for key in EPOCH_KEYS:
            assert len(client.get_metric_history(ids[0], f"train/{key}")) == 3


def _race(run_dirs: list[str], uri: str, barrier: Any, out: Any) -> None:
    ids = []
    for run_dir in run_dirs:
        barrier.wait()
        ids.append(mirror.push(run_dir, uri, "race"))
    out.put(ids)


def test_two_processes_racing_on_one_run_dir_make_one_run(store: str, tmp_path: Path) -> None:
    tracking.ensure_experiment(store, "race")
    specs = [make_spec(seed=s) for s in (20, 21, 22)]
    dirs = [make_run_dir(tmp_path, s, epochs=2) for s in specs]
    for run_dir, spec in zip(dirs, specs, strict=True):
        finish(run_dir, spec)
    barrier = FORK.Barrier(2)
    a, b = _run_all(_race, [([str(d) for d in dirs], store, barrier)] * 2)
    assert a == b and None not in a
    client = MlflowClient(store)
    for spec, mlflow_id in zip(specs, a, strict=True):
        assert [r.info.run_id for r in runs_tagged(client, "race", spec.run_id)] == [mlflow_id]
        assert len(client.get_metric_history(mlflow_id, "train/loss")) == 2
    assert os.path.exists(dirs[0] / mirror.LOCK)


def test_monitor_metrics_keep_their_own_name(
    store: str, store_dir: Path, client: MlflowClient
) -> None:
    spec = make_spec(seed=7)
    run_dir = make_run_dir(store_dir / "runs-monitor", spec, epochs=0)
    for epoch in (1, 2):
        append_jsonl(run_dir / METRICS, {**epoch_record(epoch), "monitor/knn_top1": 0.3 * epoch})
    mlflow_id = mirror.push(run_dir, store, "monitor")
    assert history(client, mlflow_id, "monitor/knn_top1") == [(1, 0.3), (2, 0.6)]
    assert history(client, mlflow_id, "train/loss") == [(1, 5.0), (2, 2.5)]
