"""One optimizer step's worth of forward/backward for each training objective.

`STEPS` maps each objective a method names (scaling.sweep.methods.Objective) to its
step, called as `step(net, batch, layout, config, autocast)` with the method's config.
Both functions receive this rank's views of the global batch (`scaling.train.views`:
every rank draws the same augmentation parameters for the whole batch and applies its
slice), so a run on W ranks sees exactly the views a single process would: distributed
results can be compared with single-process ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling.plan.layout import Layout
from scaling.sweep.methods import BNGrouping, Objective
from scaling.train import distributed as dist
from scaling.train.accumulate import cached_backward, joint_backward, plain_backward
from scaling.train.losses import nt_xent, positive_top1
from scaling.train.views import StepViews


def simclr_step(
    net: nn.Module,
    v1: Tensor,
    v2: Tensor,
    layout: Layout,
    temperature: float,
    autocast: AbstractContextManager[Any],
    shuffle: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """NT-Xent over the whole batch; returns (loss, positive top-1), both detached.

    Batch norm groups the views as the layout says (Layout.bn_grouping): without
    accumulation, both views in one forward (the official code); otherwise one view per
    forward, `v2` holding the second views of the rows `shuffle[rows]` of the global batch
    (shuffle-BN, `scaling.train.views`), unshuffled here before the loss. With
    accumulation (accum_steps > 1) the gradient is cached (Gao et al. 2021) so every
    image still sees the negatives of the whole batch, not only its micro-batch's.
    """
    accuracy: list[Tensor] = []

    def loss_fn(z1: Tensor, z2: Tensor) -> Tensor:
        # The loss in fp32 even under bf16 autocast: the softmax over 2N-1 logits at a
        # low temperature is where bf16's 8-bit mantissa would hurt.
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = z1.float(), unshuffle(z2.float(), shuffle)
            accuracy.append(positive_top1(z1.detach(), z2.detach()))
            return nt_xent(z1, z2, temperature)

    with autocast:
        if layout.bn_grouping == BNGrouping.VIEWS_TOGETHER:
            loss = joint_backward(net, v1, v2, loss_fn)
        elif layout.accum_steps > 1:
            loss = cached_backward(net, v1, v2, layout.micro_batch, loss_fn)
        else:
            loss = plain_backward(net, v1, v2, loss_fn)
    return loss, accuracy[0]


def unshuffle(z2: Tensor, shuffle: Tensor | None) -> Tensor:
    """This rank's second-view projections in its own rows' order, from those of the rows
    `shuffle[rows]`: gathered from every rank (with gradient), put back in the batch's
    order, this rank's rows taken. Identity when `shuffle` is None."""
    if shuffle is None:
        return z2
    every = dist.all_gather_with_grad(z2)  # row j: the second view of image shuffle[j]
    ordered = torch.empty_like(every).index_copy(0, shuffle.to(every.device), every)
    start = dist.rank() * z2.shape[0]
    return ordered[start : start + z2.shape[0]]


def supervised_step(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    layout: Layout,
    autocast: AbstractContextManager[Any],
) -> tuple[Tensor, Tensor]:
    """Cross-entropy with plain accumulation (exact here: the loss is a mean over images)."""
    total = x.shape[0]
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for xc, yc in zip(x.split(layout.micro_batch), y.split(layout.micro_batch), strict=True):
        with autocast:
            logits = net(xc)
            loss = F.cross_entropy(logits.float(), yc)
        (loss * (len(yc) / total)).backward()
        loss_sum += loss.detach() * len(yc)
        correct += (logits.detach().argmax(1) == yc).sum()
    return loss_sum / total, correct / total


def _nt_xent_step(
    net: nn.Module,
    batch: StepViews,
    layout: Layout,
    config: Mapping[str, Any],
    autocast: AbstractContextManager[Any],
) -> tuple[Tensor, Tensor]:
    v1, v2 = batch.views
    temperature = float(config["temperature"])
    return simclr_step(net, v1, v2, layout, temperature, autocast, batch.shuffle)


def _cross_entropy_step(
    net: nn.Module,
    batch: StepViews,
    layout: Layout,
    config: Mapping[str, Any],
    autocast: AbstractContextManager[Any],
) -> tuple[Tensor, Tensor]:
    (x,) = batch.views
    return supervised_step(net, x, batch.labels, layout, autocast)


Step = Callable[
    [nn.Module, StepViews, Layout, Mapping[str, Any], AbstractContextManager[Any]],
    tuple[Tensor, Tensor],
]
#: one optimizer step's forward/backward for each objective: (loss, top-1), detached
STEPS: dict[Objective, Step] = {
    Objective.NT_XENT: _nt_xent_step,
    Objective.CROSS_ENTROPY: _cross_entropy_step,
}
