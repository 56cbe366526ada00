"""The one training entry: a run directory trained under its lock, ended as an ExitCode.

`scaling train`, the local backend's persistent worker, the Slurm task and the Ray
trial all train a run through `train_entry`: the run spec read from spec.json
(`read_run_file`), trained by `run_tracked` (lock, MLflow and W&B mirror, resume), and
its ending told as an `Ending`: OK with the result, PREEMPTED (a signal stopped it
after a checkpoint: resumable) or ALREADY_RUNNING (another process holds the lock).
What each caller then does differs (exit, answer its parent, requeue the Slurm job,
report to Tune), not how the run is trained. A bad spec raises SpecError and a failed
run raises as it is, for the caller's own error path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ExitCode
from scaling.run.locks import AlreadyRunning
from scaling.run.runfile import read_run_file
from scaling.run.tracked import run_tracked
from scaling.train.trainer import Preempted


@dataclass(frozen=True)
class Ending:
    code: ExitCode
    message: str = ""  # why it stopped, one line (PREEMPTED, ALREADY_RUNNING)
    result: dict[str, Any] | None = None  # result.json's content (OK)


def train_entry(
    spec_path: Path,
    run_dir: Path,
    tracking: tuple[str, str | None] | None,
    **options: Any,
) -> Ending:
    """Train the run of `spec_path` (a spec.json, or a run directory) in `run_dir`,
    mirrored to `tracking` (MLflow URI, experiment: None for the run's sweep); `options`
    go to the trainer (device, threads, compile, force)."""
    spec, layout = read_run_file(spec_path)
    mirror = None
    if tracking is not None:
        mirror = (tracking[0], tracking[1] or spec.sweep or "scaling")
    try:
        result = run_tracked(spec, Path(run_dir), layout, mirror, **options)
    except Preempted as exc:
        return Ending(ExitCode.PREEMPTED, str(exc))
    except AlreadyRunning as exc:
        return Ending(ExitCode.ALREADY_RUNNING, str(exc))
    return Ending(ExitCode.OK, result=result)
