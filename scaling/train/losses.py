"""NT-Xent, the contrastive loss of SimCLR (Chen et al. 2020, arXiv 2002.05709).

Algorithm 1 of the paper:

    s_{i,j} = z_i^T z_j / (||z_i|| ||z_j||)        # pairwise similarity
    define l(i,j) as l(i,j) = -log [ exp(s_{i,j}/tau) / sum_{k=1}^{2N} 1[k != i] exp(s_{i,k}/tau) ]
    L = 1/(2N) sum_{k=1}^{N} [ l(2k-1, 2k) + l(2k, 2k-1) ]

and Section 2.1: "Instead, given a positive pair, [...] we treat the other 2(N - 1)
augmented examples within a minibatch as negative examples."

Scale: the value is the official code's (`objective.py`, `add_contrastive_loss`),
loss_a + loss_b, each a mean over the N anchors of one view: twice the L above. The
paper's learning rates and weight decay were tuned at that scale. The factor is not a
learning-rate detail under LARS: the trust ratio cancels the gradient's size but not its
ratio to the weight decay, and the BN and bias parameters (no trust ratio) step with the
raw gradient, so Algorithm 1's mean would act as twice the weight decay and half the
BN/bias learning rate of the paper's recipe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.train import distributed

__all__ = ["nt_xent", "positive_top1"]


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            "z1 and z2 must be (n, d) tensors of the same shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )


def _logits_and_targets(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity logits of this rank's 2n anchors against all 2N samples, self masked.

    Candidates are [all first views of every rank; all second views of every rank],
    gathered with gradient. Anchor i of z1 on rank r sits at global index r*n + i among
    the first views; its positive is the same index among the second views.
    """
    n = z1.shape[0]
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    # One collective for both views: (n, 2, d) -> (N, 2, d).
    both = distributed.all_gather_with_grad(torch.stack([z1, z2], dim=1))
    big_n = both.shape[0]
    candidates = torch.cat([both[:, 0], both[:, 1]], dim=0)  # (2N, d)
    anchors = torch.cat([z1, z2], dim=0)  # (2n, d)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)

    offset = distributed.rank() * n
    idx = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([idx, idx + big_n])
    targets = torch.cat([idx + big_n, idx])
    # Exclude k == i from the denominator (the indicator 1[k != i] of Algorithm 1).
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_index] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return logits, targets


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy over the 2N views of a batch.

    `z1[i]` and `z2[i]` are the projections of two views of image i; they need not be
    normalised (the similarity is the cosine). The official scale: loss_a + loss_b, i.e.
    twice the mean over the 2N anchors of Algorithm 1.

    Distributed (world size W > 1): each rank passes its own n pairs; its 2n anchors
    are scored against the 2N = 2nW views of every rank and the loss is twice the mean
    over this rank's anchors (loss_a + loss_b over this rank's share, as on each core of
    the official code). Averaging the per-rank gradients then equals the gradient of
    the single-process loss on the concatenated batch, because the gather's backward
    sums every rank's contribution.
    """
    _check_pair(z1, z2)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits, targets = _logits_and_targets(z1, z2, temperature)
    return 2.0 * F.cross_entropy(logits, targets)  # = loss_a + loss_b


@torch.no_grad()
def positive_top1(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Fraction of this rank's anchors whose most similar other view is their positive.

    The contrastive task's accuracy, over the same candidates as `nt_xent` (global
    when distributed). A cheap health signal: near 1/(2N-1) means collapse or no signal.
    """
    _check_pair(z1, z2)
    logits, targets = _logits_and_targets(z1, z2, 1.0)
    return (logits.argmax(dim=1) == targets).float().mean()
