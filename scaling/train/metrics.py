"""What one epoch logs: running sums folded without a sync per step, divergence checks."""

from __future__ import annotations

from typing import Any

import torch

from scaling.errors import RunFailed


def new_sums() -> dict[str, float]:
    return {"loss": 0.0, "top1": 0.0, "steps": 0.0, "seconds": 0.0, "lr": 0.0}


def fold(
    sums: dict[str, float],
    losses: list[torch.Tensor],
    accs: list[torch.Tensor],
    seconds: float,
    lr: float,
    *,
    across_ranks: bool = False,
) -> None:
    """Fold the steps since the last fold into the epoch's running sums (one sync).

    across_ranks averages the sums over every rank (a collective: call it at the same
    point on every rank, i.e. at the end of an epoch), so a multi-rank run logs the
    whole batch's loss and accuracy, not rank 0's share.
    """
    if losses:
        both = torch.stack([torch.stack(losses).double().sum(), torch.stack(accs).double().sum()])
        if (
            across_ranks
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            torch.distributed.all_reduce(both)
            both /= torch.distributed.get_world_size()
        loss_sum, acc_sum = both.tolist()
        sums["loss"] += loss_sum
        sums["top1"] += acc_sum
        sums["steps"] += len(losses)
    sums["seconds"] += seconds
    sums["lr"] = lr


def check_finite(losses: list[torch.Tensor], global_step: int) -> None:
    """Divergence stops the run with the step it happened at (one sync per check)."""
    if not losses:
        return
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        step = global_step - len(losses) + first + 1
        raise RunFailed(
            f"loss became {stacked[first].item()} at step {step}", kind="diverged", step=step
        )


def epoch_record(
    epoch: int, global_step: int, sums: dict[str, float], batch: int, dev: torch.device
) -> dict[str, Any]:
    steps = max(1.0, sums["steps"])
    seconds = max(1e-9, sums["seconds"])
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "epoch": epoch + 1,
        "step": global_step,
        "loss": sums["loss"] / steps,
        "top1": sums["top1"] / steps,
        "lr": sums["lr"],
        "images_per_s": sums["steps"] * batch / seconds,
        "peak_memory_mb": peak_mb,
        "seconds": seconds,
    }


def format_epoch(r: dict[str, Any]) -> str:
    return (
        f"epoch {r['epoch']} step {r['step']}: loss {r['loss']:.4f} top-1 {r['top1']:.3f} "
        f"lr {r['lr']:.4g} {r['images_per_s']:.0f} img/s peak {r['peak_memory_mb']:.0f} MB"
    )
