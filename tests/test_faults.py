"""Faults that must lose nothing and stall nothing (issue 16): a tracking server that
accepts and never answers, a stop that lands after the training loop, a kill between
checkpoints, a forced rerun, credentials in a tracking URI. Real MLflow (SQLite) and
real training throughout; the servers are real sockets."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from scaling.run import mirror, tracking
from scaling.run.pusher import Pusher
from scaling.rundir import METRICS, RESULT, SPEC, read_json, read_jsonl, write_json
from scaling.train import checkpoint
from scaling.train.signals import EXTERNAL_STOP
from scaling.train.trainer import Preempted, run
from tests.conftest import HungServer, RecordingServer
from tests.test_tracking import (
    finish,
    make_run_dir,
    make_spec,
    runs_tagged,
)  # noqa: F401
from tests.test_train import tiny_spec

# ----------------------------------------------------------------------------- tracking


def test_a_push_to_a_hung_server_gives_up_within_the_short_timeouts(
    hung_server: HungServer, tmp_path: Path
) -> None:
    run_dir = make_run_dir(tmp_path, make_spec(), epochs=2)
    started = time.monotonic()
    assert mirror.push(run_dir, hung_server.url, "hung") is None
    # one retry of a 5 s read time-out (MLflow's defaults: ~4 minutes; before: ~67 s)
    assert time.monotonic() - started < 20
    assert (read_json(run_dir / mirror.STATE) or {})["pending"] is True


def test_the_pusher_never_blocks_its_caller_and_remembers_the_outage(
    hung_server: HungServer, store: str, tmp_path: Path
) -> None:
    dirs = [make_run_dir(tmp_path, make_spec(seed=s), epochs=2) for s in (1, 2, 3)]
    pusher = Pusher(hung_server.url, "hung")
    started = time.monotonic()
    for run_dir in dirs:
        pusher.add(run_dir)
    assert time.monotonic() - started < 0.5  # the scheduler goes on at once
    assert pusher.close() == set(dirs)  # all pending ...
    assert time.monotonic() - started < 20  # ... after one time-out, not three
    assert pusher.outage
    # Nothing was lost: a later command's pusher finds them stale and uploads them.
    assert all(mirror.needs_push(d, store, "caught-up") for d in dirs)
    with Pusher(store, "caught-up") as later:
        assert later.add_stale(dirs) == 3
    assert not any(mirror.needs_push(d, store, "caught-up") for d in dirs)
    found = tracking.find_runs(store, "caught-up")
    assert sorted(found) == sorted(read_json(d / SPEC)["run_id"] for d in dirs)


def test_a_stopped_run_does_not_wait_for_tracking_before_it_stops(
    hung_server: HungServer, tmp_path: Path
) -> None:
    """Preemption: the job must requeue within Slurm's signal lead time, so the stopping
    run pushes nothing itself (the caller pushes within a time box, after requeueing)."""
    from scaling.run.tracked import push_within, run_tracked

    spec = tiny_spec("supervised", epochs=2)
    EXTERNAL_STOP.set()
    try:
        with pytest.raises(Preempted):
            run_tracked(spec, tmp_path / "run", None, (hung_server.url, "x"), threads=1)
    finally:
        EXTERNAL_STOP.clear()
    assert hung_server.connections == []  # no push was even attempted
    started = time.monotonic()
    assert push_within(tmp_path / "run", (hung_server.url, "x"), 1.0) is False
    assert time.monotonic() - started < 3


def test_a_forced_rerun_gets_a_fresh_mlflow_run_and_supersedes_the_old(
    store: str, client: MlflowClient, tmp_path: Path
) -> None:
    from scaling.run.tracked import _start_over

    spec = make_spec(seed=40)
    run_dir = make_run_dir(tmp_path, spec, epochs=3)
    finish(run_dir, spec)
    old = mirror.push(run_dir, store, "forced")
    assert old
    _start_over(run_dir)  # what `scaling train --force` does (submit --force: a new dir)
    assert "started_at" not in read_json(run_dir / SPEC)
    time.sleep(0.01)
    write_json(run_dir / SPEC, {**read_json(run_dir / SPEC), "started_at": time.time()})
    (run_dir / METRICS).write_text('{"epoch": 1, "loss": 9.0, "seconds": 1.0}\n')
    write_json(run_dir / RESULT, {**read_json(run_dir / SPEC), "top1": 0.5, "epochs": 1})
    new = mirror.push(run_dir, store, "forced")
    assert new and new != old
    found = tracking.find_runs(store, "forced")
    assert found[spec.run_id]["mlflow_run_id"] == new
    assert found[spec.run_id]["metrics"]["top1"] == 0.5
    assert [r.info.run_id for r in runs_tagged(client, "forced", spec.run_id)] == [new]
    superseded = client.get_run(old)
    assert superseded.data.tags[mirror.SUPERSEDED_TAG] == spec.run_id
    assert superseded.data.metrics["top1"] == 0.71  # the old history is kept
    (run_dir / mirror.STATE).unlink()  # mlflow.json lost: found again, nothing new made
    assert mirror.push(run_dir, store, "forced", force=True) == new


def test_credentials_in_a_tracking_uri_are_used_but_never_stored_or_shown(
    recording_server: RecordingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in tracking.CREDENTIAL_VARS:
        monkeypatch.setenv(name, "")  # restored afterwards, whatever the code sets
    secret_uri = f"http://alice:s3cr%40t@127.0.0.1:{recording_server.port}"
    uri = tracking.resolve_uri(secret_uri)
    assert uri == f"http://127.0.0.1:{recording_server.port}"
    run_dir = make_run_dir(tmp_path, make_spec(seed=41), epochs=1)
    assert mirror.push(run_dir, uri, "auth") is None  # the server answers 503
    sent = {h.get("Authorization") for h in recording_server.headers}
    assert sent == {"Basic " + base64.b64encode(b"alice:s3cr@t").decode()}
    stored = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())
    shown = caplog.text + "".join(capsys.readouterr())
    for text in (stored, shown):
        assert "s3cr" not in text and "alice" not in text
    assert tracking.redact(f"failed for {secret_uri}/api") == (
        f"failed for http://***@127.0.0.1:{recording_server.port}/api"
    )


# ----------------------------------------------------------------------------- training


def test_a_stop_after_the_last_step_is_honoured_before_evaluation(tmp_path: Path) -> None:
    spec = tiny_spec("supervised", epochs=2)

    def stop_at_the_end(record: dict) -> None:
        if record["epoch"] == 2:
            EXTERNAL_STOP.set()  # after the loop's last check: the final epoch's record

    try:
        with pytest.raises(Preempted):
            run(spec, tmp_path / "run", threads=1, on_epoch=stop_at_the_end)
    finally:
        EXTERNAL_STOP.clear()
    assert not (tmp_path / "run" / RESULT).exists()
    resumed = run(spec, tmp_path / "run", threads=1)  # evaluates, trains nothing more
    reference = run(spec, tmp_path / "reference", threads=1)
    assert resumed["top1"] == reference["top1"] and resumed["steps"] == reference["steps"]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / METRICS)] == [1, 2]


def test_time_based_checkpoints_land_mid_epoch_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec("simclr", epochs=2)
    saved: list[int] = []
    real = checkpoint.save_state

    def recording(*args: object, **kwargs: object) -> None:
        saved.append(int(args[5]))  # step_in_epoch
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "save_state", recording)
    often = run(spec, tmp_path / "often", threads=1, checkpoint_every_s=1e-9)
    assert any(step > 0 for step in saved)  # mid-epoch, not only at epoch ends
    saved.clear()
    never = run(spec, tmp_path / "never", threads=1, checkpoint_every_s=0)
    assert saved == [0, 0]
    for key in ("top1", "top5", "steps"):
        assert often[key] == never[key], key
    losses = [[r["loss"] for r in read_jsonl(tmp_path / d / METRICS)] for d in ("often", "never")]
    assert losses[0] == losses[1]


def test_the_profile_sets_the_checkpoint_interval_in_spec_json(tmp_path: Path) -> None:
    from scaling.run.planning import build_plan
    from scaling.run.submission import context_of, decide, prepare
    from tests.test_submit import SWEEP

    (tmp_path / "sweep.yaml").write_text(SWEEP)
    (tmp_path / "profile.yaml").write_text(
        f"device: cpu\nworkdir: {tmp_path / 'runs'}\ncheckpoint_every_min: 2.5\n"
    )
    plan = build_plan(tmp_path / "sweep.yaml", tmp_path / "profile.yaml", [], "method=supervised")
    ctx = context_of(plan)
    jobs = prepare(decide(plan, ctx), ctx)
    assert jobs and all(read_json(j.spec_path)["checkpoint_every_s"] == 150.0 for j in jobs)


# ----------------------------------------------------------------------------- locks


def test_cancel_signals_only_a_matching_scaling_train_on_this_host(tmp_path: Path) -> None:
    """The lock names its holder (pid, host, process start): a lock written on another
    machine, or naming a PID that now belongs to another process, is never signalled."""
    import os
    import socket
    import subprocess
    import sys

    from scaling.run.locks import LOCK, lock_holder, process_start, run_lock

    with run_lock(tmp_path):  # held by this pytest process: not a `scaling train`
        assert lock_holder(tmp_path) is None
        me, start = os.getpid(), process_start(os.getpid())
        assert start and (tmp_path / LOCK).read_text().split() == [
            str(me),
            socket.gethostname(),
            start,
        ]
    # A real `scaling train` holding the lock is found; another host's line is not.
    spec = tiny_spec("supervised", epochs=30)
    (tmp_path / "spec.json").write_text(__import__("json").dumps(spec.to_dict()))
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "scaling",
        "train",
        str(tmp_path / "spec.json"),
        "--run-dir",
        str(run_dir),
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while lock_holder(run_dir) is None:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert lock_holder(run_dir) == proc.pid
        line = (run_dir / LOCK).read_text().split()
        (run_dir / LOCK).write_text(f"{line[0]} another-host {line[2]}\n")
        assert lock_holder(run_dir) is None
        (run_dir / LOCK).write_text(f"{line[0]} {line[1]} 1\n")  # a recycled PID
        assert lock_holder(run_dir) is None
    finally:
        proc.kill()
        proc.wait()


def test_a_filesystem_without_flock_is_one_line_that_names_the_mount_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    from scaling.errors import ScalingError
    from scaling.run.locks import run_lock

    def no_locks(fd: int, op: int) -> None:  # what Lustre mounted `noflock` answers
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ScalingError, match=r"does not support file locks.*-o flock"):
        with run_lock(tmp_path):
            pass


def test_a_retried_run_no_longer_reads_as_failed_from_an_earlier_attempt(tmp_path: Path) -> None:
    """A Ray retry (or a --rerun-failed) that is then stopped: the first attempt's
    failure.json must not make the resumable run read as failed."""
    from scaling.run.state import run_state
    from scaling.run.tracked import run_tracked
    from scaling.rundir import FAILURE

    run_dir = tmp_path / "run"
    write_json(run_dir / FAILURE, {"kind": "error", "message": "the first attempt", "time": 1.0})
    EXTERNAL_STOP.set()
    try:
        with pytest.raises(Preempted):
            run_tracked(tiny_spec("supervised"), run_dir, None, None, threads=1)
    finally:
        EXTERNAL_STOP.clear()
    assert run_state(run_dir).state == "resumable"


def test_malformed_metrics_lines_are_skipped_everywhere_they_are_read(
    store: str, client: MlflowClient, tmp_path: Path
) -> None:
    from scaling.run.state import run_state
    from scaling.rundir import truncate_metrics

    spec = make_spec(seed=42)
    run_dir = make_run_dir(tmp_path, spec, epochs=2)
    with (run_dir / METRICS).open("a") as f:
        f.write('{"epoch": "x", "loss": 1.0}\n{"loss": 2.0}\n{"epoch": 3}\n[1]\n{"epoch": true}\n')
    mlflow_id = mirror.push(run_dir, store, "malformed")
    assert mlflow_id
    assert [m.step for m in client.get_metric_history(mlflow_id, "train/loss")] == [1, 2]
    assert run_state(run_dir).epoch == 3 and "loss" not in (run_state(run_dir).last or {})
    truncate_metrics(run_dir / METRICS, 2)
    assert [r["epoch"] for r in read_jsonl(run_dir / METRICS)] == [1, 2]


def test_a_run_directory_that_cannot_be_read_is_that_runs_problem_not_an_outage(
    store: str, client: MlflowClient, tmp_path: Path
) -> None:
    """A garbled spec.json (after the run started) is named with its path; the store is
    not marked down, and every other run directory of the command is mirrored (the
    finished one reaches FINISHED, not left RUNNING behind a false outage)."""
    bad_spec, good_spec = make_spec(seed=51), make_spec(seed=52)
    bad = make_run_dir(tmp_path, bad_spec, epochs=2)
    (bad / SPEC).write_text('{"run_id": "' + bad_spec.run_id + '", "meth')  # cut mid-write
    good = make_run_dir(tmp_path, good_spec, epochs=2)
    finish(good, good_spec)
    with Pusher(store, "broken") as pusher:
        pusher.add(bad)  # first in line: an outage here would silence the next
        pusher.add(good)
        left = pusher.close()
        broken = pusher.broken
    assert not pusher.outage and left == set()
    assert list(broken) == [bad] and str(bad / SPEC) in broken[bad]
    (run,) = runs_tagged(client, "broken", good_spec.run_id)
    assert run.info.status == "FINISHED"
    assert mirror.push(bad, store, "broken") is None  # the one-call helper: never raises
    pushed, failed = mirror.sync([bad, good], store, "broken")
    assert (pushed, failed) == (1, 1)


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 20 MB filesystem (tmpfs), as a full disk is seen by the trainer."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_is_retried_by_a_plain_resubmit(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workdir's disk fills up mid-run: the run fails with kind `disk`, not as a
    permanent error; once there is room, `scaling submit` alone (no --rerun-failed)
    resumes it and it finishes."""
    from typer.testing import CliRunner

    from scaling.cli.app import app
    from tests.conftest import write

    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "sweep.yaml",
        "name: full\ndataset: {name: synthetic, image_size: 16, size: 96}\n"
        "model: {depth: 10, width: 0.25}\n"
        "methods: {supervised: {batch_size: 32, epochs: 2, warmup_epochs: 0.5}}\n",
    )
    write(tmp_path / "p.yaml", f"backend: local\ndevice: cpu\nworkdir: {small_disk}\n")
    filler = small_disk / "filler"
    with filler.open("wb") as f:  # leave about 1.5 MB: spec and metrics fit, a checkpoint not
        f.write(b"\0" * (20 * 2**20 - 1536 * 2**10))
    args = ["sweep.yaml", "--cluster", "p.yaml"]
    first = CliRunner().invoke(app, ["submit", *args])
    assert first.exit_code == 1 and "1 failed" in first.output, first.output
    (run_dir,) = (small_disk / "full").iterdir()
    failure = read_json(run_dir / "failure.json")
    assert failure is not None and failure["kind"] == "disk", failure
    filler.unlink()
    again = CliRunner().invoke(app, ["submit", *args])
    assert again.exit_code == 0 and "retry" in again.output and "1 finished" in again.output, (
        again.output
    )
    assert read_json(run_dir / RESULT) is not None
