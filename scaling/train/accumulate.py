"""Gradient accumulation that keeps every negative: gradient caching (Gao et al. 2021).

"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv 2101.06983). Plain accumulation computes NT-Xent inside each micro-batch and
so divides the number of negatives by the number of accumulation steps; the paper's
finding that bigger batches help (Fig. 9) is then not reproduced. Gradient caching
gets the exact gradient of the loss over the whole batch with the memory of one
micro-batch, for one extra forward pass (4 passes' worth of FLOPs instead of 3):

1. forward every micro-batch without a graph and keep only the projections;
2. compute the loss over all projections and backpropagate it to them alone;
3. forward each micro-batch again, with a graph and the same RNG state, and
   backpropagate the cached projection gradient through the network.

Batch norm: statistics are computed per micro-batch (as in any accumulation), one view
per micro-batch (the x1 chunks come first, then the x2 chunks). If chunk j of x2 held the
same images as chunk j of x1, the two views of an image would share BN statistics that
its negatives from other chunks do not: a signal that tells positives apart (measured:
NT-Xent 0.12-0.15 nats lower with aligned chunks than with shuffled ones on the same
network). Callers therefore pass x2 as the second views of a shuffled copy of the batch
and unshuffle the projections inside `loss_fn` (MoCo's shuffle-BN; `scaling.train.steps`
and `scaling.train.views`). Running statistics are updated once per micro-batch: the
no-graph pass restores every buffer it touched.

Without accumulation, `joint_backward` forwards both views as one batch, as the official
code does (`tf.concat(features_list, 0)`): BN over 2N images, all of the batch's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["cached_backward", "joint_backward", "plain_backward"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CPU and (for CUDA inputs) the device's generator state; host reads, no sync."""
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(x1: torch.Tensor, x2: torch.Tensor, micro_batch: int) -> list[torch.Tensor]:
    """Micro-batches of x1, then of x2: a chunk never mixes the two views."""
    if x1.shape != x2.shape:
        raise ValueError(f"the two views differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    n = x1.shape[0]
    if micro_batch <= 0 or n % micro_batch != 0:
        raise ValueError(f"micro_batch {micro_batch} must be positive and divide the batch {n}")
    return list(x1.split(micro_batch)) + list(x2.split(micro_batch))


def cached_backward(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, micro_batch: int, loss_fn: LossFn
) -> torch.Tensor:
    """Accumulate into `p.grad` the gradient of `loss_fn(model(x1), model(x2))`
    computed with micro-batches of `micro_batch` images, and return the detached loss.

    `p.grad` is added to, as by `loss.backward()`: zero it before. Exact for networks
    without batch norm; with batch norm it equals full-graph training on the same
    micro-batches. When distributed, pass a `loss_fn` that gathers across ranks
    (`nt_xent` does) and average gradients once afterwards (`average_gradients`):
    every rank must use the same number of micro-batches. Do not wrap the model in
    DistributedDataParallel: it would all-reduce after every micro-batch's backward.
    """
    chunks = _chunks(x1, x2, micro_batch)
    device = x1.device

    # (1) Projections without a graph. Buffers (BN running stats, num_batches_tracked)
    # are restored afterwards so that they move once per chunk, in pass (3).
    buffers = list(model.buffers())
    saved = [b.clone() for b in buffers]
    states, outputs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            outputs.append(model(chunk))
        for b, s in zip(buffers, saved, strict=True):
            b.copy_(s)
    # Under autocast, pass (1) filled the autocast cache with low-precision copies of
    # the weights made without a graph; PyTorch releases before the fix of
    # pytorch/pytorch#112583 reuse them in pass (3), so every conv and linear weight gets
    # grad=None and only batch norm trains, silently. Dropping the cache here costs one
    # re-cast of the weights and is right on every version (a no-op outside autocast).
    torch.clear_autocast_cache()
    after_first_pass = _rng_state(device)

    # (2) Loss over the whole batch, backward to the projections only.
    z = torch.cat(outputs).requires_grad_(True)
    z1, z2 = z.chunk(2)
    loss = loss_fn(z1, z2)
    loss.backward()
    if z.grad is None:
        raise RuntimeError("loss_fn does not depend on the projections; nothing to backpropagate")
    grads = z.grad.split([o.shape[0] for o in outputs])

    # (3) Re-forward each chunk with a graph, same RNG (dropout, stochastic depth), and
    # push the cached gradient through the network.
    for chunk, state, grad in zip(chunks, states, grads, strict=True):
        _set_rng_state(state, device)
        model(chunk).backward(grad)
    # Leave the generators as if the network had run once.
    _set_rng_state(after_first_pass, device)
    return loss.detach()


def joint_backward(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """One step without accumulation, as the official code: both views in one forward
    (batch norm over all 2N images), the loss, backward."""
    if x1.shape != x2.shape:
        raise ValueError(f"the two views differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach()


def plain_backward(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """Forward x1 and x2 as two separate batches (one view each), backward.

    For a rank whose batch norm sees only its own rows (no SyncBatchNorm): with x2 the
    second views of shuffled rows, BN groups views as `cached_backward` does, whose result
    this equals with `micro_batch=len(x1)`, running statistics included.
    """
    if x1.shape != x2.shape:
        raise ValueError(f"the two views differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    loss = loss_fn(model(x1), model(x2))
    loss.backward()
    return loss.detach()
