"""MLflow made to reflect a run directory (the local truth).

Training writes its run directory first; `push` then makes MLflow *reflect* it. MLflow
is a copy, so tracking can never lose a result: a failed push (server down, SQLite
busy) logs a warning, notes what is pending in `run_dir/mlflow.json`, returns None and
never raises; any later push or `sync` uploads what is missing.

One MLflow run per run spec: the id cached in mlflow.json, else a search for the tag
`scaling.run_id`, else a new run; an exclusive flock on `run_dir/.mlflow.lock`
serialises pushes of one directory, so racing processes never create two runs. Progress
lives in MLflow itself (tag `scaling.epochs_pushed`, sent with the metrics it covers)
and metric timestamps are deterministic (run start + cumulative epoch seconds), so a
repeated push adds no point even without mlflow.json: the store drops exact duplicates.
A forced rerun (spec.json's `forced_at`) gets a fresh MLflow run; the runs that started
before it keep their history, tagged `scaling.superseded_run_id` instead of the run_id.

Logged: params = RunSpec.flat() + layout (+ `derived.*` from result.json), each only
when missing (MLflow rejects a changed param: a requeue with a new layout updates the
`scaling.<key>` tags instead); tags `scaling.<field>` for every spec field (the grid
coordinates), sweep, layout, git commit, and a finished run's convergence verdict
(`scaling.converged` true/false, `scaling.convergence` why); per-epoch metrics as `train/<key>`, step =
epoch (`train/top1` is the training accuracy); final top1, top5, knn_top1, wall_time_s,
images_seen, train_flops at step = epochs; artifacts; status FINISHED, FAILED (tag
`scaling.failure_kind`) or RUNNING. MLflow is imported inside functions only.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import BadRunDir, ScalingError, SpecError
from scaling.run.locks import file_lock
from scaling.run.tracking import (
    LOCK_TIMEOUT_S,
    RUN_ID_TAG,
    experiment_of,
    mlflow_client,
    redact,
)
from scaling.rundir import (
    FAILURE,
    FINAL_METRICS,
    LOG,
    METRICS,
    RESULT,
    SPEC,
    read_json,
    read_metrics,
    write_json,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

STATE, LOCK = "mlflow.json", ".mlflow.lock"
EPOCHS_TAG = "scaling.epochs_pushed"
SUPERSEDED_TAG = "scaling.superseded_run_id"  # an earlier attempt at a forced rerun
GROUP_TAG = "scaling.group"  # the same for every seed of one run: group by it in the UI
#: a finished run's convergence verdict (true | false) and why (scaling.train.convergence)
CONVERGED_TAG, CONVERGENCE_TAG = "scaling.converged", "scaling.convergence"
FAILURE_TAGS = ("scaling.failure_kind", "scaling.failure_step", "scaling.failure_message")
EPOCH_PREFIX = "train/"
LAYOUT_KEYS = (
    "micro_batch",
    "accum_steps",
    "gpus",
    "nodes",
    "bn_batch",
    "bn_grouping",
    "precision",
)
ARTIFACTS = {"FINISHED": (SPEC, RESULT, METRICS, LOG), "FAILED": (SPEC, FAILURE, METRICS, LOG)}
METRICS_PER_REQUEST = 900  # MLflow caps one log_batch at 1,000 entities
ATTEMPTS = 3  # whole-push retries when SQLite says "database is locked"; pushes are idempotent

# ----------------------------------------------------------------------------- push


@dataclass
class Target:
    """A store and experiment, connected on first use and shared by a whole `sync`."""

    uri: str
    experiment: str
    connection: tuple[MlflowClient, str] | None = None
    error: Exception | None = None  # a store found unreachable is not waited for again

    def connect(self) -> tuple[MlflowClient, str]:
        if self.error is not None:
            raise self.error
        if self.connection is None:
            try:
                client = mlflow_client(self.uri)
                self.connection = client, experiment_of(client, self.uri, self.experiment)
            except Exception as exc:
                if not _transient(exc):
                    self.error = exc
                raise
        return self.connection


def push(run_dir: str | Path, uri: str, experiment: str, *, force: bool = False) -> str | None:
    """Make MLflow reflect `run_dir`; the MLflow run id, "" while the run has not started
    training (nothing to mirror yet), or None when tracking failed (or the run directory
    cannot be read: warned with its path).

    Cheap when nothing changed: mlflow.json remembers the files' sizes and times, and
    then MLflow is not contacted (`force` checks against MLflow anyway).
    """
    try:
        return push_to(Path(run_dir), Target(uri, experiment), force)
    except BadRunDir:
        return None


def needs_push(run_dir: str | Path, uri: str, experiment: str) -> bool:
    """Whether MLflow is behind the run directory: it started training and its last push
    to this store failed, never happened, or predates a change (files only, no MLflow)."""
    run_dir = Path(run_dir)
    if not (run_dir / SPEC).is_file() or not _started(run_dir):
        return False
    state = _read_state(run_dir, Target(uri, experiment))
    return (
        not state or bool(state.get("pending")) or state.get("fingerprint") != _fingerprint(run_dir)
    )


def sync(run_dirs: Iterable[str | Path], uri: str, experiment: str) -> tuple[int, int]:
    """Push every run directory that has a spec.json; returns (pushed, failed)."""
    target, pushed, failed = Target(uri, experiment), 0, 0
    for run_dir in map(Path, run_dirs):
        if (run_dir / SPEC).is_file():  # else not a run (yet)
            try:
                ok = push_to(run_dir, target, False) is not None
            except BadRunDir:  # that run's own problem (warned): the others go on
                ok = False
            pushed, failed = pushed + ok, failed + (not ok)
    return pushed, failed


def push_to(run_dir: Path, target: Target, force: bool = False) -> str | None:
    """`push` to a Target that a whole command shares (one connection). A run directory
    that cannot be read raises BadRunDir (warned with its path): the store is fine and
    the other runs' pushes go on."""
    if not (run_dir / SPEC).is_file():
        log.warning("not pushing %s to MLflow: it has no %s", run_dir, SPEC)
        return None
    if not _started(run_dir):
        # Queued, not yet training: an MLflow run made now would start at `submit`'s
        # time (MLflow cannot move a start), so it waits for the run's own start.
        return ""
    try:
        with file_lock(run_dir / LOCK, LOCK_TIMEOUT_S):
            try:
                return _push_locked(run_dir, target, force)
            except Exception as exc:
                _write_pending(run_dir, target, exc)
                raise
    except BadRunDir as exc:
        log.warning("not mirrored to MLflow: %s (the other runs are)", exc)
        raise
    except Exception as exc:
        log.warning(
            "MLflow push of %s to %s failed (%s: %s); the run directory keeps everything "
            "and a later push (scaling sync) uploads what is pending",
            run_dir,
            redact(target.uri),
            type(exc).__name__,
            redact(str(exc)),
        )
        return None


def _started(run_dir: Path) -> bool:
    """Training began (spec.json's started_at) or the run has an outcome to show."""
    if any((run_dir / name).exists() for name in (RESULT, FAILURE, METRICS)):
        return True
    return bool((read_json(run_dir / SPEC) or {}).get("started_at"))


def _push_locked(run_dir: Path, target: Target, force: bool) -> str:
    state = _read_state(run_dir, target)
    fingerprint = _fingerprint(run_dir)  # before reading: a change mid-push goes next time
    if not force and state and not state.get("pending") and state.get("fingerprint") == fingerprint:
        return str(state["mlflow_run_id"])
    for attempt in range(ATTEMPTS):
        try:
            return _upload(run_dir, target, state, fingerprint)
        except Exception as exc:
            if attempt + 1 == ATTEMPTS or not _transient(exc):
                raise
            log.info("MLflow store busy (%s); retrying the push of %s", exc, run_dir)
            time.sleep(0.2 * 2**attempt + 0.2 * random.random())
    raise AssertionError("unreachable")


def _upload(run_dir: Path, target: Target, state: dict[str, Any] | None, fingerprint: Any) -> str:
    spec = readable_spec(run_dir)  # the run's own files first: never blamed on the store
    client, experiment_id = target.connect()
    # A new MLflow run starts when the run first started training (spec.json's
    # started_at, kept across resumes), so Duration and the timeline are the run's own.
    started = _number(spec.get("started_at"))
    start_ms = round(1000 * started) if started else _mtime_ms(run_dir / SPEC)
    run = _find_or_create(client, experiment_id, spec, state, start_ms)
    ids = {"experiment_id": experiment_id, "mlflow_run_id": run.info.run_id}
    if state is None or state.get("mlflow_run_id") != run.info.run_id:
        _write_state(run_dir, target, pending=True, **ids)  # remember it before logging
    result = read_json(run_dir / RESULT)
    records = list(read_metrics(run_dir / METRICS))
    _log_params_and_tags(client, run, spec, result, records)
    epochs = _log_epochs(client, run, records)
    status = _log_status(client, run, run_dir, result, epochs)
    _write_state(
        run_dir,
        target,
        pending=False,
        epochs_pushed=epochs,
        status=status,
        fingerprint=fingerprint,
        **ids,
    )
    return str(run.info.run_id)


def readable_spec(run_dir: Path) -> dict[str, Any]:
    """spec.json as a valid run spec, or BadRunDir naming the file and what is wrong."""
    from scaling.sweep.spec import RunSpec

    path = run_dir / SPEC
    spec = read_json(path)
    if spec is None:
        raise BadRunDir(f"{path}: not a JSON object (garbled or cut); the run directory's spec")
    try:
        RunSpec.from_dict(spec, file=str(path))
    except SpecError as exc:
        raise BadRunDir(str(exc)) from None
    return spec


def _find_or_create(
    client: MlflowClient,
    experiment_id: str,
    spec: Mapping[str, Any],
    state: dict[str, Any] | None,
    start_ms: int,
) -> Run:
    from mlflow.exceptions import MlflowException

    run_id = str(spec.get("run_id", ""))
    if not re.fullmatch(r"[0-9a-f]{6,64}", run_id):
        raise ScalingError(f"spec.json has no valid run_id ({run_id!r})")
    if state and state.get("mlflow_run_id"):
        try:
            run = client.get_run(state["mlflow_run_id"])
            if (
                run.info.lifecycle_stage == "active"
                and run.info.experiment_id == experiment_id
                and run.data.tags.get(RUN_ID_TAG) == run_id
                and run.info.start_time >= 1000 * (_number(spec.get("forced_at")) or 0)
            ):
                return run
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    found = client.search_runs(
        [experiment_id],
        f"tags.`{RUN_ID_TAG}` = '{run_id}'",
        max_results=10,
        order_by=["attributes.start_time ASC"],
    )
    forced = _number(spec.get("forced_at"))
    if forced is not None:  # a forced rerun: what ran before it is superseded
        old = [r for r in found if r.info.start_time < round(1000 * forced)]
        found = [r for r in found if r not in old]
        for run in old:
            _supersede(client, run, run_id)
    if len(found) > 1:
        log.warning("%d MLflow runs carry %s=%s; using the oldest", len(found), RUN_ID_TAG, run_id)
    if found:
        return found[0]
    model, config = spec.get("model", {}), spec.get("config", {})
    name = (
        f"{spec.get('method')}-r{model.get('depth')}x{model.get('width')}"
        f"-b{config.get('batch_size')}-e{config.get('epochs')}-s{spec.get('seed')}-{run_id[:6]}"
    )
    return client.create_run(
        experiment_id, start_time=start_ms, tags={RUN_ID_TAG: run_id}, run_name=name
    )


def _supersede(client: MlflowClient, run: Run, run_id: str) -> None:
    """An MLflow run of an earlier attempt at a forced run: kept for the record, tagged
    superseded and no longer found as the run's (its scaling.run_id tag is renamed)."""
    client.set_tag(run.info.run_id, SUPERSEDED_TAG, run_id)
    client.delete_tag(run.info.run_id, RUN_ID_TAG)
    log.info("MLflow run %s of %s superseded by a forced rerun", run.info.run_id, run_id)


def _log_params_and_tags(
    client: MlflowClient,
    run: Run,
    spec: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    records: list[dict[str, Any]],
) -> None:
    from mlflow.entities import Param, RunTag

    from scaling.sweep.methods import get_method
    from scaling.sweep.spec import RunSpec
    from scaling.train.convergence import of_result

    run_spec = RunSpec.from_dict(spec, file=SPEC)
    flat = run_spec.flat()
    layout = {k: v for k, v in dict(spec.get("layout") or {}).items() if k in LAYOUT_KEYS}
    params = {k: str(v) for k, v in {**flat, **layout}.items()}
    params.update(
        {f"derived.{k}": str(v) for k, v in ((result or {}).get("derived") or {}).items()}
    )
    old = run.data.params
    if changed := sorted(k for k, v in params.items() if k in old and old[k] != v):
        log.info("MLflow params cannot change; kept the first values of %s", ", ".join(changed))
    tags = {f"scaling.{k}": str(v) for k, v in {**flat, **layout}.items()}
    tags["scaling.sweep"] = str(spec.get("sweep", ""))
    tags[GROUP_TAG] = run_spec.group_id()  # the same run but its seed
    verdict = of_result(result, records, get_method(run_spec.method).accuracy_plateaus)
    if verdict is not None:  # the trainer's verdict on its curve (a finished run's)
        tags[CONVERGED_TAG] = str(verdict.converged).lower()
        tags[CONVERGENCE_TAG] = verdict.describe()
    code = dict(spec.get("code") or {})
    if code.get("commit"):
        tags.update(
            {
                "mlflow.source.git.commit": str(code["commit"]),
                "scaling.git_dirty": str(code.get("dirty")),
            }
        )
    client.log_batch(
        run.info.run_id,
        params=[Param(k, v) for k, v in params.items() if k not in old],
        tags=[RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v],
    )


def _log_epochs(client: MlflowClient, run: Run, records: list[dict[str, Any]]) -> int:
    """Log the epochs MLflow lacks; returns the last epoch MLflow now has."""
    from mlflow.entities import Metric, RunTag

    pushed = int(run.data.tags.get(EPOCHS_TAG, "0"))
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in records:
        by_epoch.setdefault(record["epoch"], record)  # a redone epoch: the first
    epochs = sorted(e for e in by_epoch if e > 0)
    elapsed_ms, batch = 0, []
    for epoch in epochs:
        record = by_epoch[epoch]
        elapsed_ms += round(1000 * (_number(record.get("seconds")) or 0.0))
        if epoch <= pushed:
            continue
        stamp = run.info.start_time + elapsed_ms  # deterministic: a repeat is a duplicate
        batch += [
            Metric(k if "/" in k else EPOCH_PREFIX + k, v, stamp, epoch)
            for k, value in record.items()
            if k != "epoch" and (v := _number(value)) is not None
        ]
        if len(batch) >= METRICS_PER_REQUEST or epoch == epochs[-1]:
            # One request: MLflow applies the tag after the metrics it covers.
            client.log_batch(run.info.run_id, metrics=batch, tags=[RunTag(EPOCHS_TAG, str(epoch))])
            batch, pushed = [], epoch
    return pushed


def _log_status(
    client: MlflowClient, run: Run, run_dir: Path, result: Mapping[str, Any] | None, epochs: int
) -> str:
    from mlflow.entities import Metric, RunTag

    run_id, start, tags = run.info.run_id, run.info.start_time, run.data.tags
    failure = None if result is not None else read_json(run_dir / FAILURE)
    status = "FINISHED" if result is not None else "FAILED" if failure is not None else "RUNNING"
    if status != "FAILED":
        for key in FAILURE_TAGS:
            if key in tags:
                client.delete_tag(run_id, key)  # a requeued run that no longer fails
    if status == "RUNNING":
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return status
    if result is not None:
        if run.info.status == status:
            return status  # metrics, artifacts and status went up before
        end = _mtime_ms(run_dir / RESULT)
        step = int(_number(result.get("epochs")) or epochs)
        stamp = start + round(1000 * (_number(result.get("wall_time_s")) or 0.0))
        finals = [
            Metric(k, v, stamp, step)
            for k in FINAL_METRICS
            if (v := _number(result.get(k))) is not None
        ]
        client.log_batch(run_id, metrics=finals)
    else:
        assert failure is not None
        values = (failure.get("kind"), failure.get("step"), str(failure.get("message", ""))[:1000])
        why = {k: str(v) for k, v in zip(FAILURE_TAGS, values, strict=True)}
        if run.info.status == status and all(tags.get(k) == v for k, v in why.items()):
            return status
        end = round(1000 * float(failure.get("time") or 0)) or _mtime_ms(run_dir / FAILURE)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in why.items()])
    for name in ARTIFACTS[status]:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id, status=status, end_time=max(end, start))
    return status


def _number(value: Any) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)


def _mtime_ms(path: Path) -> int:
    return int(path.stat().st_mtime * 1000)


def _transient(exc: Exception) -> bool:
    return "database is locked" in str(exc).lower()


# ----------------------------------------------------------------------------- state


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    """mlflow.json: uri, experiment, mlflow_run_id, epochs_pushed, status, pending, error."""
    return read_json(Path(run_dir) / STATE)


def _read_state(run_dir: Path, target: Target) -> dict[str, Any] | None:
    """mlflow.json if it describes this store and experiment (else it does not apply)."""
    state = read_state(run_dir)
    where = (redact(target.uri), target.experiment)
    same = state and (state.get("uri"), state.get("experiment")) == where
    return state if same else None


def _write_state(run_dir: Path, target: Target, **fields: Any) -> None:
    base = {"uri": redact(target.uri), "experiment": target.experiment, "error": None}
    write_json(run_dir / STATE, {**base, **fields, "updated": time.time()})


def _write_pending(run_dir: Path, target: Target, exc: Exception) -> None:
    """The last good state for this store (if any), marked pending with the error."""
    state = _read_state(run_dir, target) or {}
    state.pop("fingerprint", None)
    state.pop("updated", None)
    _write_state(
        run_dir,
        target,
        **{**state, "pending": True, "error": redact(f"{type(exc).__name__}: {exc}")[:2000]},
    )


def _fingerprint(run_dir: Path) -> dict[str, Any]:
    """Size and modification time of every file a push reads (None when absent)."""
    out: dict[str, Any] = {}
    for name in (SPEC, METRICS, RESULT, FAILURE):
        try:
            st = (run_dir / name).stat()
            out[name] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out[name] = None
    return out
