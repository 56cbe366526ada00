"""The linear probe of linear evaluation, fitted as the official code fits it.

google-research/simclr, `run.py --train_mode=finetune --fine_tune_after_block=4
--zero_init_logits_layer=True --optimizer=momentum --warmup_epochs=0` (README,
"Finetuning the linear head"): a linear layer on the frozen encoder's features, its
weights and bias initialised to zero, softmax cross-entropy, `MomentumOptimizer(lr, 0.9,
use_nesterov=True)` (model_util.get_optimizer), weight decay as an L2 loss on the layer
(model_util.add_weight_decay: gradient `weight_decay x w`), LR `lr x B/256` decayed by a
cosine to 0 without warmup over `N x E // B + 1` steps (model_util), batches cut from
one stream of shuffled images (`scaling.train.data.stream_batches`). The features are
fed as they are; `standardize` (off unless a sweep asks) first subtracts the training
features' mean and divides by their std.

Where the features of a batch come from is the caller's (`Features`): rows of a stored
table (`features` protocol) or a forward of freshly cropped views (`augmented`). The fit
is checkpointed about once per pass over the images, so a killed evaluation resumes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling.plan.layout import total_steps
from scaling.plan.schedule import warmup_cosine
from scaling.rundir import atomic_write_bytes
from scaling.train import distributed as dist
from scaling.train.data import stream_batches

#: (indices into the fitted images, global step) -> float32 features on the device
Features = Callable[[Tensor, int], Tensor]


class Probe(nn.Module):
    """A linear classifier, optionally on standardised features (mean/std buffers)."""

    def __init__(self, dim: int, num_classes: int, moments: tuple[Tensor, Tensor] | None) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)  # zero_init_logits_layer=True
        nn.init.zeros_(self.linear.bias)
        mean, std = torch.zeros(dim), torch.ones(dim)
        if moments is not None:  # the training features' statistics (a constant feature: 1e-6)
            mean, std = moments[0].detach().float().cpu(), moments[1].detach().float().cpu() + 1e-6
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std)


def probe_lr(config: Mapping[str, Any], batch: int) -> float:
    """`lr` x B/256: the official `learning_rate_scaling=linear` (0.1 x 512/256 on CIFAR)."""
    return float(config["lr"]) * batch / 256


def fit_probe(
    features: Features,
    labels: Tensor,
    dim: int,
    num_classes: int,
    config: Mapping[str, Any],
    seed: int,
    device: torch.device,
    *,
    moments: tuple[Tensor, Tensor] | None = None,
    state: Path | None = None,
    token: str = "",
    save: bool = True,
) -> Probe:
    """Fit the probe on `len(labels)` images (config: batch_size, epochs, lr,
    weight_decay) and return it. `state`: where to checkpoint and resume the fit (rank 0
    writes: `save`); a checkpoint of another network (`token`) is ignored."""
    n = len(labels)
    batch = min(int(config["batch_size"]), n)
    total = total_steps(n, int(config["epochs"]), batch)
    lr = probe_lr(config, batch)
    probe = Probe(dim, num_classes, moments).to(device)
    opt = torch.optim.SGD(
        probe.linear.parameters(),
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=float(config["weight_decay"]),
    )
    start = _restore(state, token, probe, opt)
    dist.barrier()  # every rank has read the checkpoint before rank 0 writes the next
    every = max(1, math.ceil(n / batch))  # about once per pass over the images
    labels = labels.to(device)
    for step, idx in _steps(n, batch, seed, range(start, total)):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, total, 0, lr)
        x = features(idx, step)
        loss = F.cross_entropy(probe(x), labels[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if state is not None and save and ((step + 1) % every == 0 or step + 1 == total):
            _save(state, token, step + 1, probe, opt)
    return probe


def _steps(n: int, batch: int, seed: int, steps: range) -> Iterator[tuple[int, Tensor]]:
    return zip(steps, stream_batches(n, batch, seed, steps), strict=True)


def _restore(state: Path | None, token: str, probe: Probe, opt: torch.optim.Optimizer) -> int:
    if state is None or not state.is_file():
        return 0
    try:
        saved = torch.load(state, map_location="cpu", weights_only=True)
    except Exception:  # a torn file from a kill: start the fit again
        return 0
    if saved.get("token") != token:
        return 0
    probe.load_state_dict(saved["probe"])
    opt.load_state_dict(saved["optimizer"])
    return int(saved["step"])


def _save(state: Path, token: str, step: int, probe: Probe, opt: torch.optim.Optimizer) -> None:
    import io

    buffer = io.BytesIO()
    payload = {
        "token": token,
        "step": step,
        "probe": probe.state_dict(),
        "optimizer": opt.state_dict(),
    }
    torch.save(payload, buffer)
    atomic_write_bytes(state, buffer.getvalue())


@torch.no_grad()
def topk_counts(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows have their label among the k highest logits (k capped at classes)."""
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        hits = (logits.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        out[k] = int(hits.sum())
    return out


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits (k capped at classes)."""
    return {k: c / max(1, len(labels)) for k, c in topk_counts(logits, labels, ks).items()}
