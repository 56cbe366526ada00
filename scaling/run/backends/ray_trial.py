"""What runs inside Ray for the Ray backend: the Tune trial, and Ray Train's workers.

A trial trains its run in its actor with `scaling.run.tracked.run_tracked` (the run lock,
MLflow mirroring, per-epoch checkpoints and result.json of every backend), or, for
layout.gpus > 1, drives a Ray Train TorchTrainer with one worker per rank; the training
core's distributed code then runs on the process group Ray Train set up
(init_distributed keeps an existing group). A thread reports each epoch's metrics to
Tune with a pointer checkpoint (run directory and epoch): the training state is the run
directory's own checkpoint, so a retried trial resumes where the run stopped.

Signals: Tune and Ray Train call the training function on a thread of their actor, where
no signal handler can be installed, so SIGTERM checkpointing does not apply there. A
cancel is a file, <storage>/cancel/<run_id>; a watcher thread turns it into
scaling.train.signals.EXTERNAL_STOP and the run checkpoints after its current step and stops
(rank 0 only for multi-rank runs: Ray Train then tears the other ranks down).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from scaling.plan.layout import Layout
from scaling.run.runfile import read_run_file
from scaling.rundir import (
    FAILURE,
    LOG,
    METRICS,
    RESULT,
    read_json,
    read_metrics,
    write_json,
)

CANCEL_DIR = "cancel"  # <storage>/cancel/<run_id>: asks that run's trial to stop
POLL_SECONDS = 0.5
TERMINAL_KINDS = ("diverged", "oom", "timeout")  # failures a retry would only repeat


@dataclass(frozen=True)
class Settings:
    """What every trial needs, as plain data (pickled once with the trainable)."""

    storage: str
    tracking: tuple[str, str] | None
    device: str
    threads: int | None
    cpus: float
    accelerator_type: str | None
    cwd: str
    extra_env: dict[str, str] = field(default_factory=dict)


def cancel_file(storage: str | Path, run_id: str) -> Path:
    return Path(storage) / CANCEL_DIR / run_id


def trial(config: dict[str, Any], settings: Settings) -> None:
    """One run: train it (here, or through Ray Train), then report its outcome."""
    run_id, run_dir = config["run_id"], Path(config["run_dir"])
    _enter(settings)
    cancel = cancel_file(settings.storage, run_id)
    if cancel.exists():
        tune.report({"outcome": "cancelled", "detail": "cancelled before it started"})
        return
    pointer = tune.get_checkpoint()
    start = (read_json(Path(pointer.path) / "run.json") or {}).get("epoch", 0) if pointer else 0
    with _output_to(run_dir / LOG), _Reporter(run_dir, settings.storage, start) as reporter:
        print(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ray trial {run_id} "
            f"(pid {os.getpid()}, host {socket.gethostname()}, tune epoch {start})",
            flush=True,
        )
        layout = _layout(run_dir)
        train = _train_ranks if layout and layout.gpus > 1 else _train_one
        state, detail = train(run_id, run_dir, settings, cancel)
    tune.report({**reporter.last, "outcome": state, "detail": detail})


def _enter(settings: Settings) -> None:
    """The trial's process works where `submit` was run (relative dataset roots), with its env."""
    os.environ.update(settings.extra_env)
    if os.path.isdir(settings.cwd):
        os.chdir(settings.cwd)
    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" in every log
        logging.getLogger(name).setLevel(logging.WARNING)


def _layout(run_dir: Path) -> Layout | None:
    """The layout submission wrote into spec.json (None: one process, no accumulation)."""
    return read_run_file(run_dir)[1]


def _train_one(run_id: str, run_dir: Path, settings: Settings, cancel: Path) -> tuple[str, str]:
    """Train in this actor. Failures a retry cannot fix end the trial; others raise,
    and Tune retries the trial, which resumes from the run's checkpoint."""
    from scaling.errors import ExitCode, RunFailed, ScalingError
    from scaling.run.entry import train_entry
    from scaling.run.pusher import STOP_PUSH_S
    from scaling.run.tracked import push_within

    with _watching(cancel):
        try:
            ending = train_entry(
                run_dir,
                run_dir,
                settings.tracking,
                device=settings.device,
                threads=settings.threads,
            )
        except ScalingError as exc:
            kind = exc.kind if isinstance(exc, RunFailed) else "error"
            return "failed", f"{kind}: {exc}"
    if ending.code is ExitCode.PREEMPTED:
        push_within(run_dir, settings.tracking, STOP_PUSH_S)
        return "preempted", "cancelled; resumable"
    if ending.code is ExitCode.ALREADY_RUNNING:
        return "already-running", "another process is training it"
    return "finished", f"top-1 {(ending.result or {}).get('top1', float('nan')):.4f}"


def _train_ranks(run_id: str, run_dir: Path, settings: Settings, cancel: Path) -> tuple[str, str]:
    """Drive a TorchTrainer with one worker per rank; settle from the run directory."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    layout = _layout(run_dir)
    assert layout is not None  # only multi-rank layouts come here
    cuda = settings.device == "cuda"
    per_worker: dict[str, float] = {"CPU": settings.cpus, **({"GPU": 1.0} if cuda else {})}
    trainer = TorchTrainer(
        _rank_main,
        train_loop_config={"run_dir": str(run_dir), "settings": settings},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=layout.gpus,
            use_gpu=cuda,
            resources_per_worker=per_worker,
            accelerator_type=settings.accelerator_type,
        ),
        run_config=ray.train.RunConfig(
            name=f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=settings.storage,
            failure_config=ray.train.FailureConfig(max_failures=0),  # Tune retries
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        failure = read_json(run_dir / FAILURE) or {}
        if (run_dir / RESULT).exists():
            pass
        elif cancel.exists():
            return "preempted", "cancelled; resumable"
        elif "AlreadyRunning" in str(exc):
            return "already-running", "another process is training it"
        elif failure.get("kind") in TERMINAL_KINDS:
            return "failed", f"{failure['kind']}: {failure.get('message', '')}"
        else:
            raise
    result = read_json(run_dir / RESULT) or {}
    return "finished", f"top-1 {result.get('top1', float('nan')):.4f}"


def _rank_main(config: dict[str, Any]) -> None:
    """One rank of a multi-rank run, on a Ray Train worker (the process group exists).

    Rank 0 trains under the run's lock and mirrors to MLflow; the other ranks train
    without them (a second lock holder would be refused). Only rank 0 watches for a
    cancel: it checkpoints and raises, and Ray Train stops the rest of the group.
    """
    import ray.train

    from scaling.run.pusher import STOP_PUSH_S
    from scaling.run.tracked import push_within, run_tracked
    from scaling.train.trainer import Preempted, run

    settings: Settings = config["settings"]
    run_dir = Path(config["run_dir"])
    _enter(settings)
    spec, layout = read_run_file(run_dir)
    options = {"device": settings.device, "threads": settings.threads}
    if ray.train.get_context().get_world_rank() != 0:
        with _output_to(run_dir / LOG):
            run(spec, run_dir, layout, **options)
        return
    with _output_to(run_dir / LOG), _watching(cancel_file(settings.storage, spec.run_id)):
        try:
            run_tracked(spec, run_dir, layout, settings.tracking, **options)
        except Preempted:
            push_within(run_dir, settings.tracking, STOP_PUSH_S)
            raise


# ---------------------------------------------------------------------- trial helpers


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout/stderr appended to the run's train.log (one run per actor),
    with the traceback of whatever escapes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as stream:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                yield
            except BaseException as exc:
                if type(exc).__name__ == "Preempted":  # a cancel, not an error: one line
                    print(f"{type(exc).__name__}: {exc}", flush=True)
                else:
                    traceback.print_exc()
                raise


@contextlib.contextmanager
def _watching(cancel: Path) -> Iterator[None]:
    """Set EXTERNAL_STOP when the cancel file appears (polled by a daemon thread)."""
    from scaling.train.signals import EXTERNAL_STOP, stop_when

    EXTERNAL_STOP.clear()
    try:
        with stop_when(cancel.exists, POLL_SECONDS, "scaling-cancel-watch"):
            yield
    finally:
        EXTERNAL_STOP.clear()


class _Reporter:
    """Reports each new line of metrics.jsonl to Tune, with a pointer checkpoint.

    A thread that tails the file rather than a hook in the trainer: it works the same
    whether this process trains or drives Ray Train workers elsewhere.
    """

    def __init__(self, run_dir: Path, storage: str, start_epoch: int) -> None:
        self.run_dir, self.storage = run_dir, Path(storage)
        self.epoch = int(start_epoch)
        self.last: dict[str, Any] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scaling-tune-report", daemon=True)

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._report_new()

    def _loop(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            self._report_new()

    def _report_new(self) -> None:
        for record in read_metrics(self.run_dir / METRICS):
            if record["epoch"] <= self.epoch:
                continue
            self.epoch = int(record["epoch"])
            self.last = record
            self.storage.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.storage, prefix=".pointer-") as tmp:
                pointer = {
                    "run_dir": str(self.run_dir),
                    "epoch": self.epoch,
                    "step": record.get("step"),
                }
                write_json(Path(tmp) / "run.json", pointer)
                tune.report(record, checkpoint=tune.Checkpoint.from_directory(tmp))
