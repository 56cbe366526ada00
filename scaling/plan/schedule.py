"""Learning-rate rules and schedules: pure functions of the batch and the optimizer step."""

from __future__ import annotations

import math

LR_RULES = ("linear", "sqrt")


def lr_for_batch(rule: str | float, batch_size: int, base: float | None = None) -> float:
    """Peak learning rate for an effective batch of `batch_size` images.

    SimCLR, Appendix B.1: "LearningRate = 0.3 x BatchSize/256" (linear scaling rule) or
    "LearningRate = 0.075 x sqrt(BatchSize)" (square-root scaling, better for small
    batches and short training). `base` replaces 0.3 or 0.075 (the official code's
    `learning_rate` flag, e.g. 1.0 for CIFAR-10). A number is used as it is.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule)
    if rule == "linear":
        return (0.3 if base is None else base) * batch_size / 256
    if rule == "sqrt":
        return (0.075 if base is None else base) * math.sqrt(batch_size)
    raise ValueError(f"unknown lr rule {rule!r}; allowed: {', '.join(LR_RULES)} or a number")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine decay to 0.

    Counted in optimizer steps (not micro-steps), as the official code's
    `learning_rate_schedule` (model_util.py): `global_step / warmup_steps * scaled_lr`
    during warmup (step 0 at LR 0), then `cosine_decay(scaled_lr, global_step -
    warmup_steps, total_steps - warmup_steps)`.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
