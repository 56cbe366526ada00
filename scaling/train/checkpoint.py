"""Checkpoints that survive a kill at any moment.

Saved every epoch and on SIGTERM/SIGUSR1 to a temporary file renamed into place; the
newest one that loads is restored. Only a file that does not decode (truncated, corrupt,
not a checkpoint) is skipped; an error of the storage itself (EIO, a stale NFS handle)
propagates, so the run fails with the path instead of restarting from scratch over its
metrics, and when checkpoints exist but none decodes the run fails too. Loaded onto the
CPU (no device memory needed to read one) with `weights_only=True`: a checkpoint holds
tensors and plain data.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from scaling.errors import RunFailed
from scaling.rundir import CHECKPOINTS, atomic_write_bytes

log = logging.getLogger(__name__)
KEEP = 2  # the newest two survive, so one bad write never leaves nothing to resume from
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def save(run_dir: Path, global_step: int, state: dict[str, Any]) -> Path:
    """Write `state` as checkpoints/ckpt-<global_step>.pt atomically; prune old ones."""
    folder = run_dir / CHECKPOINTS
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = folder / f"ckpt-{global_step:09d}.pt"
    atomic_write_bytes(path, buffer.getvalue())
    for old in _ordered(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


#: what a file that does not decode raises (torch's zip reader raises RuntimeError)
DECODE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError)


def restore(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that decodes (on the CPU), or None when there is none.

    Raises OSError when the storage fails, and RunFailed when checkpoints exist but none
    decodes: either way the run directory, its metrics included, is left as it was."""
    paths = _ordered(run_dir / CHECKPOINTS)
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise  # the disk, not the file: do not restart from scratch over it
        except DECODE_ERRORS as exc:  # truncated, corrupt, or not a checkpoint at all
            log.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
            continue
        if isinstance(state, dict) and "global_step" in state:
            return state
        log.warning("skipping checkpoint without a training state: %s", path.name)
    if paths:
        raise RunFailed(
            f"{run_dir / CHECKPOINTS}: no checkpoint decodes ({len(paths)} tried; "
            "see train.log); move them away to restart this run from scratch"
        )
    return None


def _ordered(folder: Path) -> list[Path]:
    """Checkpoints, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_state(
    run_dir: Path,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
    sums: dict[str, float],
    main: bool,
    elapsed_s: float = 0.0,
    run_id: str = "",
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Everything a run needs to continue bit for bit: weights, optimizer, the position in
    the data order, the augmentation and global RNG streams, the epoch's running sums,
    the wall time spent so far over every attempt (a resumed run's cost is all of it)
    and the metrics lines of the epochs done (`history`: what repairs a metrics.jsonl
    cut by a kill or a full disk). Only rank 0 writes (the ranks hold identical weights)."""
    if not main:
        return
    save(
        run_dir,
        global_step,
        {
            "global_step": global_step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "aug_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            # The device's default generators (dropout, anything random run on the GPU):
            # without them a resumed CUDA run is no longer bit-identical.
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "sums": sums,
            "elapsed_s": elapsed_s,
            "run_id": run_id,  # a checkpoint resumes only its own run
            "history": list(history or ()),
        },
    )


def repair_metrics(run_dir: Path, history: list[dict[str, Any]] | None = None) -> int:
    """Put back the epochs metrics.jsonl lost (cut by a kill mid-write, a full disk, a
    hand edit) from a checkpoint's `history` (the newest checkpoint's when None); the
    epochs restored (0: nothing was missing, or no checkpoint holds them)."""
    from scaling.rundir import METRICS, read_metrics, write_metrics

    if history is None:
        state = restore(run_dir)
        history = list((state or {}).get("history") or ())
    kept = {r["epoch"]: r for r in read_metrics(run_dir / METRICS)}
    missing = [r for r in history if isinstance(r, dict) and r.get("epoch") not in kept]
    if not missing:
        return 0
    merged = sorted([*kept.values(), *missing], key=lambda r: r["epoch"])
    write_metrics(run_dir / METRICS, merged)
    return len(missing)


def restore_rng(state: dict[str, Any]) -> None:
    """The global CPU (and, when saved, CUDA) generators of a checkpoint."""
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda = state.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
