"""Weights & Biases made to reflect a run directory, as MLflow is (`scaling.run.mirror`).

Optional: a sweep with `tracking: {wandb: {project: P, entity: null, mode: online}}`
gets `run_dir/wandb.json` at submit (the settings, then what was pushed); every push of
the run directory (the local backend's parent, rank 0 of a Slurm or Ray job, `scaling
sync`) then also pushes here. One W&B run per run spec: its id is the run_id, resumed
with `resume="allow"`, and a push with nothing new never calls `wandb.init` (each init
writes a new local folder, even for the same id). Logged: config = the spec, layout and
code version; group = the run without its seed; per-epoch metrics at step = epoch;
the final result in the summary. A failed push (no network, W&B down) warns, leaves the
state pending and never raises; the next push or `scaling sync` catches up.

W&B's files go under `run_dir/wandb/`. While a run trains, pushes are at most every
THROTTLE_S seconds (an init costs about a second); its end is always pushed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from scaling.errors import BadRunDir, SpecError
from scaling.run.locks import file_lock
from scaling.run.tracking import LOCK_TIMEOUT_S
from scaling.rundir import (
    FAILURE,
    FINAL_METRICS,
    METRICS,
    RESULT,
    SPEC,
    read_json,
    read_metrics,
    write_json,
)

log = logging.getLogger(__name__)

STATE, LOCK = "wandb.json", ".wandb.lock"
THROTTLE_S = 300.0


def configure(run_dir: Path, settings: dict[str, Any] | None) -> None:
    """Record the sweep's W&B settings in the run directory (keeping what was pushed)."""
    path = run_dir / STATE
    if settings is None:
        return
    state = read_json(path) or {}
    write_json(path, {**state, "settings": dict(settings)})


def forget_progress(run_dir: Path) -> None:
    """A run trained again from scratch: its W&B progress restarts (settings kept)."""
    state = read_json(run_dir / STATE)
    if state and state.get("settings"):
        write_json(run_dir / STATE, {"settings": state["settings"]})


def needs_push(run_dir: str | Path) -> bool:
    """Whether W&B is behind the run directory: it asks for W&B, and has epochs or an
    ending that were never pushed (files only, no W&B)."""
    run_dir = Path(run_dir)
    state = read_json(run_dir / STATE)
    if not state or not state.get("settings") or state.get("finished"):
        return False
    ended = (run_dir / RESULT).exists() or (run_dir / FAILURE).exists()
    pushed = int(state.get("epochs_pushed", 0))
    newest = max((r["epoch"] for r in read_metrics(run_dir / METRICS)), default=0)
    return newest > pushed or (ended and not state.get("ended"))


def push(run_dir: str | Path, *, final: bool = False) -> bool | None:
    """Make W&B reflect `run_dir`: True when up to date, None when the run has no W&B
    settings, False when the push failed (warned; pending for the next push)."""
    run_dir = Path(run_dir)
    state = read_json(run_dir / STATE)
    if not state or not state.get("settings"):
        return None
    try:
        with file_lock(run_dir / LOCK, LOCK_TIMEOUT_S):
            return _push_locked(run_dir, read_json(run_dir / STATE) or state, final)
    except (BadRunDir, SpecError) as exc:  # the run's own files: not a W&B outage
        log.warning("not mirrored to W&B: %s (the other runs are)", exc)
        raise BadRunDir(str(exc)) from None
    except Exception as exc:
        log.warning(
            "W&B push of %s failed (%s: %s); the run directory keeps everything and "
            "a later push (scaling sync) uploads it",
            run_dir,
            type(exc).__name__,
            exc,
        )
        return False


def _push_locked(run_dir: Path, state: dict[str, Any], final: bool) -> bool:
    records = list(read_metrics(run_dir / METRICS))
    result = read_json(run_dir / RESULT)
    failure = None if result else read_json(run_dir / FAILURE)
    ended = result is not None or failure is not None
    pushed = int(state.get("epochs_pushed", 0))
    new = [r for r in records if r["epoch"] > pushed]
    if state.get("finished") or not (new or (ended and not state.get("ended"))):
        return True  # nothing new: no init, no new local folder
    if not (final or ended) and time.time() - float(state.get("pushed_at", 0)) < THROTTLE_S:
        return True
    import wandb

    spec = read_json(run_dir / SPEC) or {}
    settings = state["settings"]
    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        mode=settings.get("mode", "online"),
        id=str(spec["run_id"]),
        resume="allow",
        dir=str(run_dir),
        group=_group(spec),
        name=_name(spec),
        config=_config(spec),
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        for record in new:
            run.log(
                {k: v for k, v in record.items() if k != "epoch" and _number(v)},
                step=int(record["epoch"]),
            )
        if result is not None:
            run.summary.update({k: result[k] for k in FINAL_METRICS if _number(result.get(k))})
        if failure is not None:
            run.summary.update(
                {
                    "failure_kind": failure.get("kind"),
                    "failure_message": str(failure.get("message", ""))[:1000],
                }
            )
    finally:
        run.finish(exit_code=1 if failure is not None else 0)
    last = max((r["epoch"] for r in records), default=pushed)
    write_json(
        run_dir / STATE,
        {
            **state,
            "epochs_pushed": last,
            "pushed_at": time.time(),
            "finished": result is not None,
            "ended": ended,
        },
    )
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _group(spec: dict[str, Any]) -> str:
    from scaling.sweep.spec import RunSpec

    return RunSpec.from_dict(spec, file=SPEC).group_id()


def _name(spec: dict[str, Any]) -> str:
    model, config = spec.get("model", {}), spec.get("config", {})
    return (
        f"{spec.get('method')}-r{model.get('depth')}x{model.get('width')}"
        f"-b{config.get('batch_size')}-e{config.get('epochs')}-s{spec.get('seed')}"
    )


def _config(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        k: spec.get(k)
        for k in (
            "run_id",
            "sweep",
            "method",
            "dataset",
            "model",
            "seed",
            "config",
            "layout",
            "code",
            "bn_batch",
            "bn_grouping",
        )
    }
