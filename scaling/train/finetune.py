"""Fine-tuning a pretrained encoder on a labelled subset (`eval.protocol: finetune`).

The paper's Appendix B.5 by default (`methods.FinetuneConfig`): a copy of the whole
encoder (optionally with the projection head's first layer, as SimCLRv2) and a
zero-initialised linear head trained together with Nesterov momentum, batch 4096 capped
at the subset, LR 0.05 x B/256 with the official cosine schedule and no warmup, no weight
decay, crop + flip only; the step count the official code's (N x E // B + 1). The
pretrained network is never changed (the run's other evaluations start from it too).

Resumable on its own: a checkpoint (network, optimizer, step) every pass over the subset
in the evaluation's folder; the batches and crops of a step depend on (seed, step) alone,
so a killed fine-tune resumes to the same result, bit for bit on the CPU. Every rank runs
the whole batch (the same numbers as one process; ranks do not speed it up).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling.plan.layout import total_steps
from scaling.plan.schedule import warmup_cosine
from scaling.sweep.methods import FinetuneConfig
from scaling.train.augment import CropFlipAugment
from scaling.train.data import stream_batches
from scaling.train.probe import restore_fit, save_fit

STATE = "finetune.pt"


class Tuned(nn.Module):
    """The encoder (and the projection's first layer, when asked) and a linear head."""

    def __init__(self, encoder: nn.Module, first: nn.Module | None, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.first = first if first is not None else nn.Identity()
        dim = int(first[0].out_features) if first is not None else int(encoder.num_features)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)  # the official head: zero-initialised
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.first(self.encoder(x)))


def tuned_network(net: nn.Module, tune: FinetuneConfig, num_classes: int) -> Tuned:
    """A copy of `net`'s encoder (and projection's first layer) with a new linear head."""
    first = None
    if tune.from_projection:
        layer = getattr(getattr(net, "head", None), "first_layer", None)
        if layer is None:
            raise ValueError("eval.finetune.from_projection: this network has no projection head")
        first = copy.deepcopy(layer())
    return Tuned(copy.deepcopy(net.encoder), first, num_classes)


def optimizer(model: Tuned, tune: FinetuneConfig, batch: int) -> torch.optim.SGD:
    """Nesterov SGD over every parameter at `lr` x B/256, the recipe's momentum and decay."""
    return torch.optim.SGD(
        model.parameters(),
        lr=tune.lr * batch / 256,
        momentum=tune.momentum,
        nesterov=tune.nesterov,
        weight_decay=tune.weight_decay,
    )


def finetune(
    net: nn.Module,
    fit: Any,
    config: Mapping[str, Any],
    fraction: float,
    seed: int,
    device: torch.device,
    *,
    folder: Path | None = None,
    token: str = "",
    save: bool = True,
) -> Tuned:
    """Fine-tune a copy of `net`'s encoder on every image of `fit` (the labelled subset)
    with the `finetune` recipe of the `eval` section `config`, resuming from and
    checkpointing to `folder` (rank 0 writes: `save`; another network's `token` is
    ignored). Returns the tuned network in eval mode."""
    tune = FinetuneConfig(**(config.get("finetune") or {}))
    n = len(fit)
    batch = min(tune.batch_size, n)
    total = total_steps(n, tune.epochs_at(fraction), batch)
    model = tuned_network(net, tune, fit.num_classes).to(device)
    opt = optimizer(model, tune, batch)
    lr = opt.param_groups[0]["lr"]
    size = int(fit.image_size)
    crop_flip = CropFlipAugment(size, crop_scale=(tune.crop_min_scale, 1.0))
    folder_images = getattr(fit, "decodes_on_cpu", False)
    state = None if folder is None else Path(folder) / STATE
    parts = {"model": model, "optimizer": opt}
    start = restore_fit(state, token, parts)
    every = max(1, math.ceil(n / batch))  # about once per pass over the subset
    model.train()
    steps = range(start, total)
    for step, idx in zip(steps, stream_batches(n, batch, seed, steps), strict=True):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, total, 0, lr)
        g = torch.Generator(device=device).manual_seed(_tune_seed(seed, step))
        params = crop_flip.sample_params(len(idx), None if folder_images else size, size, g)
        if folder_images:
            images = fit.crops(idx, [params.crop_draws.cpu()], crop_flip.crop_ratio)[0]
        else:
            images = fit.batch(idx)[0]
        labels = fit.labels[idx.to(fit.labels.device)].to(device)
        loss = F.cross_entropy(model(crop_flip.apply(images.to(device), params)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if state is not None and save and ((step + 1) % every == 0 or step + 1 == total):
            save_fit(state, token, step + 1, parts)
    return model.eval()


def _tune_seed(seed: int, step: int) -> int:
    """The crops of a fine-tuning step depend on (seed, step) alone (resumable)."""
    return (seed * 1_000_003 + step * 7919 + 611_953) % (2**63)
