"""The Ray backend: one Ray Tune trial per run, on a local Ray or an existing cluster.

The Tuner's grid is the jobs scaling.submission chose (the trial's config is
{"run_id", "run_dir"}; the run spec is read from the run directory's spec.json, never
sampled). A trial trains in its actor with `scaling.train.run_tracked`, so the run lock,
MLflow mirroring, checkpoints and results are those of every other backend. A run with
layout.gpus > 1 trains through Ray Train's TorchTrainer instead: the trial is only its
driver, one Train worker per rank, and the training core's own distributed code runs on
the process group Ray Train set up (init_distributed keeps an existing group).

Resume: each trial reports every epoch's metrics to Tune with a pointer checkpoint (the
run directory and epoch); the training state itself is the run directory's checkpoint,
written every epoch, so a retried trial (FailureConfig(max_failures)) or a later
`submit` resumes where the run stopped. For the same reason an interrupted Tune
experiment is never restored: `Tuner.restore` would replay trials whose state is
already in the run directories, against the plan of the previous submit, while a new
experiment over what scaling.submission decides now costs the same and is always
current. Each submit is a new experiment under <workdir>/<sweep>/.ray_results.

Signals: Tune and Ray Train run the training function on a thread of their actor, where
no signal handler can be installed, so SIGTERM checkpointing does not apply there;
`scaling cancel` writes <storage>/cancel/<run_id>, a watcher thread sets
scaling.signals.EXTERNAL_STOP, and the run checkpoints after its current step and stops
(rank 0 only for multi-rank runs: Ray Train then tears the other ranks down).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from scaling.backends.base import Context, Job, Outcome
from scaling.cluster import RayConfig
from scaling.rundir import FAILURE, LOG, METRICS, RESULT, read_json, read_jsonl, write_json

log = logging.getLogger(__name__)

STORAGE = ".ray_results"  # <workdir>/<sweep>/.ray_results: Tune's and Train's storage_path
DRIVER_STATE = "driver.json"  # written by a live submit: its pid and each trial's state
CANCEL_DIR = "cancel"  # <storage>/cancel/<run_id>: asks that run's trial to stop
POLL_SECONDS = 0.5
TERMINAL_KINDS = ("diverged", "oom", "timeout")  # failures a retry would only repeat
# Ray puts unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store;
# AF_UNIX paths are limited to 107 bytes on Linux (103 on macOS).
SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's console table off (verbose=0): the live view shows it
    # Each epoch's pointer checkpoint forces a snapshot of the experiment state (a few
    # KB); Tune warns about it as if it were a large checkpoint.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


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


class RayBackend:
    name = "ray"

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]:
        """Run every job as a Tune trial; blocks until all trials end."""
        from scaling.backends.progress import LiveView

        storage = storage_path(ctx)
        for job in jobs:
            _cancel_file(storage, job.run_id).unlink(missing_ok=True)
        with connect(_config(ctx), ctx.workdir), LiveView(len(jobs)) as view:
            progress = _Progress(jobs, view, storage / DRIVER_STATE)
            try:
                with _scoped_env(DRIVER_ENV):
                    results = _tuner(jobs, ctx, progress).fit()
            finally:
                (storage / DRIVER_STATE).unlink(missing_ok=True)
        by_id = {r.config["run_id"]: r for r in results if r.config}
        return [_outcome(job, by_id.get(job.run_id)) for job in jobs]

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """Trial states recorded by a live `submit` ({} when none is alive: the run
        directories say the rest)."""
        state = read_json(storage_path(ctx) / DRIVER_STATE)
        if not state or not _alive(state):
            return {}
        trials = state.get("trials", {})
        return {j.run_id: trials[j.run_id] for j in jobs if j.run_id in trials}

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int:
        """Ask each job's trial to checkpoint and stop (pending ones never start)."""
        from scaling.state import is_locked

        storage = storage_path(ctx)
        live = self.status(jobs, ctx)
        count = 0
        for job in jobs:
            active = live.get(job.run_id) in ("PENDING", "RUNNING", "RETRYING")
            if active or is_locked(job.run_dir):
                path = _cancel_file(storage, job.run_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{time.time()}\n")
                count += 1
        return count


def storage_path(ctx: Context) -> Path:
    return ctx.workdir / ctx.sweep / STORAGE


def _config(ctx: Context) -> RayConfig:
    return ctx.profile.ray or RayConfig()


def _cancel_file(storage: str | Path, run_id: str) -> Path:
    return Path(storage) / CANCEL_DIR / run_id


def _alive(state: dict[str, Any]) -> bool:
    """A driver on this host is alive when its pid is; one elsewhere is trusted."""
    if state.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


# ---------------------------------------------------------------------- connecting


@contextlib.contextmanager
def connect(config: RayConfig, workdir: Path) -> Iterator[None]:
    """Start or join the Ray the profile names, for the duration of the block.

    Already connected (the caller started Ray): used as it is and left running.
    `local`: a Ray started in this process with the profile's CPUs, no dashboard, its
    files under temp_dir (default <workdir>/.ray) and token authentication off
    (RAY_AUTH_MODE=disabled, for this cluster of one process tree only); shut down on
    exit, leaving no process. Any other address (`auto`, `ray://head:10001`) joins a
    running cluster and disconnects on exit.
    """
    if ray.is_initialized():
        yield
        return
    if config.address != "local":
        ray.init(
            address=config.address,
            runtime_env=config.runtime_env or None,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp, scratch = _temp_dir(config, workdir)
    try:
        with _scoped_env({"RAY_AUTH_MODE": "disabled"}):
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                include_dashboard=False,
                _temp_dir=str(temp),
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            try:
                yield
            finally:
                ray.shutdown()
    finally:
        if scratch:
            shutil.rmtree(temp, ignore_errors=True)


def _temp_dir(config: RayConfig, workdir: Path) -> tuple[Path, bool]:
    """Ray's temp dir, and whether it is a scratch dir to delete afterwards.

    <workdir>/.ray (or the profile's temp_dir) when short enough for Ray's unix socket
    paths; otherwise a short /tmp/scaling-ray-XXXX, removed after shutdown (with Ray's
    own logs: each run's log is in its run directory).
    """
    wanted = Path(config.temp_dir).absolute() if config.temp_dir else workdir / ".ray"
    limit = (103 if sys.platform == "darwin" else 107) - SOCKET_SUFFIX
    if len(os.fsencode(str(wanted))) <= limit:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted, False
    base = "/tmp" if os.path.isdir("/tmp") else None
    scratch = Path(tempfile.mkdtemp(prefix="scaling-ray-", dir=base))
    log.info("Ray temp dir %s is too long for unix sockets; using %s", wanted, scratch)
    return scratch, True


@contextlib.contextmanager
def _scoped_env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block only (processes started meanwhile inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------- the driver


def _settings(ctx: Context) -> Settings:
    config = _config(ctx)
    threads = None
    if ctx.device == "cpu":  # the trial's own CPUs, not the driver machine's
        threads = ctx.profile.threads_per_run or max(1, int(config.cpus_per_trial))
    return Settings(
        storage=str(storage_path(ctx)),
        tracking=(ctx.tracking_uri, ctx.experiment),
        device=ctx.device,
        threads=threads,
        cpus=float(config.cpus_per_trial),
        accelerator_type=config.accelerator_type,
        cwd=os.getcwd(),
        extra_env=dict(ctx.extra_env),
    )


def _tuner(jobs: Sequence[Job], ctx: Context, progress: _Progress) -> tune.Tuner:
    settings = _settings(ctx)
    ranks = {j.run_id: j.layout.gpus for j in jobs}
    dirs = {j.run_id: str(j.run_dir) for j in jobs}

    def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return _trial_resources(ranks[config["run_id"]], settings)

    trainable = tune.with_resources(tune.with_parameters(_trial, settings=settings), resources)
    return tune.Tuner(
        trainable,
        param_space={
            "run_id": tune.grid_search([j.run_id for j in jobs]),
            "run_dir": tune.sample_from(lambda config: dirs[config["run_id"]]),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=ctx.max_parallel,
            trial_name_creator=lambda trial: trial.config["run_id"],
            trial_dirname_creator=lambda trial: trial.config["run_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=settings.storage,
            failure_config=tune.FailureConfig(max_failures=_config(ctx).max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[progress],
            verbose=0,
        ),
    )


def _trial_resources(gpus: int, settings: Settings) -> tune.PlacementGroupFactory:
    """One bundle for a single-process trial. A multi-rank trial only drives Ray Train,
    whose workers reserve their own resources; Ray wants a non-empty bundle, so the
    driver asks for a token of memory rather than a CPU the workers may need."""
    if gpus > 1:
        return tune.PlacementGroupFactory([{"memory": 2**20}])
    bundle: dict[str, float] = {"CPU": settings.cpus}
    if settings.device == "cuda":
        bundle["GPU"] = 1
    if settings.accelerator_type:
        bundle[f"accelerator_type:{settings.accelerator_type}"] = 0.001
    return tune.PlacementGroupFactory([bundle])


class _Progress(tune.Callback):
    """Drives the live view and keeps <storage>/driver.json (what `status` reads)."""

    def __init__(self, jobs: Sequence[Job], view: Any, state_path: Path) -> None:
        self.jobs = {j.run_id: j for j in jobs}
        self.view, self.path = view, state_path
        self.tasks: dict[str, Any] = {}
        self.states = dict.fromkeys(self.jobs, "PENDING")
        self._write()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (tuner.pkl); a console is not
        # picklable and means nothing elsewhere.
        return {**self.__dict__, "view": _NullView(), "tasks": {}}

    def _write(self) -> None:
        write_json(self.path, {"pid": os.getpid(), "host": socket.gethostname(),
                               "updated": time.time(), "trials": self.states})  # fmt: skip

    def _set(self, run_id: str, state: str) -> None:
        self.states[run_id] = state
        self._write()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = trial.config["run_id"]
        if run_id not in self.tasks:
            self.tasks[run_id] = self.view.start(self.jobs[run_id])
        self._set(run_id, "RUNNING")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        task = self.tasks.get(trial.config["run_id"])
        if task is not None and "epoch" in result:
            self.view.update(task, int(result["epoch"]))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = trial.config["run_id"]
        self.view.note(f"retrying {run_id} (failure {trial.num_failures}); it resumes from its checkpoint")  # fmt: skip
        self._set(run_id, "RETRYING")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "trial errored")

    def _finish(self, trial: Any, error: str | None) -> None:
        run_id = trial.config["run_id"]
        outcome = _outcome_of(self.jobs[run_id], trial.last_result or {}, error)
        self._set(run_id, outcome.state.upper())
        if run_id in self.tasks:
            self.view.finish(self.tasks.pop(run_id), outcome)


class _NullView:
    def start(self, job: Job) -> None: ...
    def update(self, task: Any, epochs: int) -> None: ...
    def finish(self, task: Any, outcome: Outcome) -> None: ...
    def note(self, text: str) -> None: ...


def _outcome(job: Job, result: Any) -> Outcome:
    if result is None:
        return Outcome(job.run_id, "failed", "Ray Tune returned no result for this trial")
    error = None if result.error is None else str(result.error)
    return _outcome_of(job, result.metrics or {}, error)


def _outcome_of(job: Job, last: dict[str, Any], error: str | None) -> Outcome:
    if error is None and last.get("outcome"):
        return Outcome(job.run_id, str(last["outcome"]), str(last.get("detail", "")))
    failure = read_json(job.run_dir / FAILURE) or {}
    reason = [ln for ln in (error or "no outcome reported").splitlines() if ln.strip()][-1:]
    tail = " | ".join(reason + _tail(job.run_dir / LOG, 3))
    return Outcome(job.run_id, "failed", f"{failure.get('kind', 'error')}: {tail}")


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        return []


# ---------------------------------------------------------------------- the trial


def _trial(config: dict[str, Any], settings: Settings) -> None:
    """One run: train it (here, or through Ray Train), then report its outcome."""
    run_id, run_dir = config["run_id"], Path(config["run_dir"])
    _enter(settings)
    cancel = _cancel_file(settings.storage, run_id)
    if cancel.exists():
        tune.report({"outcome": "cancelled", "detail": "cancelled before it started"})
        return
    pointer = tune.get_checkpoint()
    start = (read_json(Path(pointer.path) / "run.json") or {}).get("epoch", 0) if pointer else 0
    with _output_to(run_dir / LOG), _Reporter(run_dir, settings.storage, start) as reporter:
        print(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ray trial {run_id} "
              f"(pid {os.getpid()}, host {socket.gethostname()}, tune epoch {start})", flush=True)  # fmt: skip
        layout = _layout(run_dir)
        train = _train_ranks if layout.gpus > 1 else _train_one
        state, detail = train(run_id, run_dir, settings, cancel)
    tune.report({**reporter.last, "outcome": state, "detail": detail})


def _enter(settings: Settings) -> None:
    """The trial's process works where `submit` was run (relative dataset roots), with its env."""
    os.environ.update(settings.extra_env)
    if os.path.isdir(settings.cwd):
        os.chdir(settings.cwd)
    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" in every log
        logging.getLogger(name).setLevel(logging.WARNING)


def _layout(run_dir: Path) -> Any:
    from scaling.layout import Layout

    data = read_json(run_dir / "spec.json") or {}
    return Layout.from_dict(data["layout"]) if "layout" in data else Layout(1, 1)


def _load(run_dir: Path) -> tuple[Any, Any]:
    from scaling.spec import RunSpec

    path = run_dir / "spec.json"
    data = read_json(path)
    if data is None:
        raise FileNotFoundError(f"{path}: no run spec (scaling.submission writes it first)")
    return RunSpec.from_dict(data, file=str(path)), _layout(run_dir)


def _train_one(run_id: str, run_dir: Path, settings: Settings, cancel: Path) -> tuple[str, str]:
    """Train in this actor. Failures a retry cannot fix end the trial; others raise,
    and Tune retries the trial, which resumes from the run's checkpoint."""
    from scaling.errors import RunFailed, ScalingError
    from scaling.state import AlreadyRunning
    from scaling.train import Preempted, run_tracked

    spec, layout = _load(run_dir)
    with _watching(cancel):
        try:
            result = run_tracked(spec, run_dir, layout, settings.tracking,
                                 device=settings.device, threads=settings.threads)  # fmt: skip
        except Preempted:
            return "preempted", "cancelled; resumable"
        except AlreadyRunning:
            return "already-running", "another process is training it"
        except ScalingError as exc:
            kind = exc.kind if isinstance(exc, RunFailed) else "error"
            return "failed", f"{kind}: {exc}"
    return "finished", f"top-1 {result.get('top1', float('nan')):.4f}"


def _train_ranks(run_id: str, run_dir: Path, settings: Settings, cancel: Path) -> tuple[str, str]:
    """Drive a TorchTrainer with one worker per rank; settle from the run directory."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    layout = _layout(run_dir)
    cuda = settings.device == "cuda"
    per_worker: dict[str, float] = {"CPU": settings.cpus, **({"GPU": 1.0} if cuda else {})}
    trainer = TorchTrainer(
        _rank_main,
        train_loop_config={"run_dir": str(run_dir), "settings": settings},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=layout.gpus, use_gpu=cuda, resources_per_worker=per_worker,
            accelerator_type=settings.accelerator_type,
        ),  # fmt: skip
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

    from scaling.train import run, run_tracked

    settings: Settings = config["settings"]
    run_dir = Path(config["run_dir"])
    _enter(settings)
    spec, layout = _load(run_dir)
    options = {"device": settings.device, "threads": settings.threads}
    if ray.train.get_context().get_world_rank() != 0:
        with _output_to(run_dir / LOG):
            run(spec, run_dir, layout, **options)
        return
    with _output_to(run_dir / LOG), _watching(_cancel_file(settings.storage, spec.run_id)):
        run_tracked(spec, run_dir, layout, settings.tracking, **options)


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
            except BaseException:
                traceback.print_exc()
                raise


@contextlib.contextmanager
def _watching(cancel: Path) -> Iterator[None]:
    """Set EXTERNAL_STOP when the cancel file appears (polled by a daemon thread)."""
    from scaling.signals import EXTERNAL_STOP

    EXTERNAL_STOP.clear()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            if cancel.exists():
                EXTERNAL_STOP.set()
                return

    thread = threading.Thread(target=watch, name="scaling-cancel-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
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
        for record in read_jsonl(self.run_dir / METRICS):
            if int(record.get("epoch", 0)) <= self.epoch:
                continue
            self.epoch = int(record["epoch"])
            self.last = record
            self.storage.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.storage, prefix=".pointer-") as tmp:
                pointer = {"run_dir": str(self.run_dir), "epoch": self.epoch, "step": record.get("step")}  # fmt: skip
                write_json(Path(tmp) / "run.json", pointer)
                tune.report(record, checkpoint=tune.Checkpoint.from_directory(tmp))
