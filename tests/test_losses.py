"""NT-Xent against references written from the paper and the official code, not from ours.

Our value is the official code's loss_a + loss_b, i.e. twice Algorithm 1's mean over
the 2N anchors: `official_tf_style` must match exactly, `naive_nt_xent` (Algorithm 1)
up to that factor of 2.
"""

from __future__ import annotations

import math

import pytest
import torch

from scaling.train.losses import nt_xent, positive_top1


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Algorithm 1 of SimCLR, one anchor at a time, with the paper's interleaved indices.

    z_{2k-1} is the first view of image k and z_{2k} the second (0-based: 2k and 2k+1).
    Scalar torch ops only, so autograd gives an independent reference gradient.
    """
    n = z1.shape[0]
    z = []
    for k in range(n):
        z += [z1[k], z2[k]]

    def sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))

    def ell(i: int, j: int) -> torch.Tensor:
        den = sum(torch.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(sim(z[i], z[j]) / tau) / den)

    total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n))
    return total / (2 * n)


def official_tf_style(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """google-research/simclr objective.py re-expressed: loss_a + loss_b (LARGE_NUM mask)."""
    h1 = z1 / z1.norm(dim=1, keepdim=True)
    h2 = z2 / z2.norm(dim=1, keepdim=True)
    n = h1.shape[0]
    masks = torch.eye(n, dtype=h1.dtype) * 1e9
    labels = torch.arange(n)
    aa = h1 @ h1.T / tau - masks
    bb = h2 @ h2.T / tau - masks
    ab = h1 @ h2.T / tau
    ba = h2 @ h1.T / tau
    ce = torch.nn.functional.cross_entropy
    return ce(torch.cat([ab, aa], 1), labels) + ce(torch.cat([ba, bb], 1), labels)


def _pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, d, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 3, 7])
def test_matches_naive_loop(n: int, tau: float) -> None:
    z1, z2 = _pair(n, 5, seed=n)
    assert torch.allclose(
        nt_xent(z1, z2, tau), 2 * naive_nt_xent(z1, z2, tau), rtol=1e-10, atol=1e-12
    )


def test_hand_computed_orthogonal_pairs() -> None:
    # Two images, both views identical and the images orthogonal: s(pos) = 1, the two
    # negatives have s = 0, so every anchor has l = -log(e^{1/t} / (e^{1/t} + 2)); the
    # official loss is loss_a + loss_b, twice the mean over anchors.
    e = torch.eye(2, dtype=torch.float64)
    for tau in (0.5, 1.0):
        expected = 2 * math.log1p(2 * math.exp(-1 / tau))
        assert nt_xent(e, e.clone(), tau).item() == pytest.approx(expected, rel=1e-12)


def test_single_pair_has_no_negatives_and_zero_loss() -> None:
    z1, z2 = _pair(1, 4, seed=0)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
@pytest.mark.parametrize("n", [1, 6])
def test_equals_the_official_tf_loss(n: int, tau: float) -> None:
    # The official code returns loss_a + loss_b (means over N each): our value exactly,
    # with its gradient, so the paper's LR and weight decay mean the same here.
    a1, a2 = _pair(n, 8, seed=3 + n)
    a1.requires_grad_(True), a2.requires_grad_(True)
    ours = nt_xent(a1, a2, tau)
    ours.backward()
    b1, b2 = a1.detach().clone().requires_grad_(True), a2.detach().clone().requires_grad_(True)
    official = official_tf_style(b1, b2, tau)
    official.backward()
    assert torch.allclose(ours, official, rtol=1e-10, atol=1e-12)
    assert torch.allclose(a1.grad, b1.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(a2.grad, b2.grad, rtol=1e-9, atol=1e-12)


def test_invariances() -> None:
    z1, z2 = _pair(5, 4, seed=1)
    base = nt_xent(z1, z2, 0.3)
    assert torch.allclose(nt_xent(z2, z1, 0.3), base, rtol=1e-12)  # view swap
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(nt_xent(z1[perm], z2[perm], 0.3), base, rtol=1e-12)  # pair order
    scales = torch.tensor([[2.0], [0.5], [7.0], [1.0], [3.0]], dtype=torch.float64)
    assert torch.allclose(nt_xent(z1 * scales, z2 * 4.0, 0.3), base, rtol=1e-12)  # norms


def test_temperature_changes_loss_as_the_formula_says() -> None:
    z1, z2 = _pair(4, 3, seed=2)
    losses = [nt_xent(z1, z2, t).item() for t in (0.1, 0.5, 2.0)]
    assert len(set(losses)) == 3
    for t, got in zip((0.1, 0.5, 2.0), losses, strict=True):
        assert got == pytest.approx(2 * naive_nt_xent(z1, z2, t).item(), rel=1e-10)


@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_gradient_matches_naive_autograd(tau: float) -> None:
    a1, a2 = _pair(5, 4, seed=7)
    a1.requires_grad_(True), a2.requires_grad_(True)
    nt_xent(a1, a2, tau).backward()
    b1, b2 = a1.detach().clone().requires_grad_(True), a2.detach().clone().requires_grad_(True)
    (2 * naive_nt_xent(b1, b2, tau)).backward()
    assert torch.allclose(a1.grad, b1.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(a2.grad, b2.grad, rtol=1e-9, atol=1e-12)


def test_gradcheck() -> None:
    z1, z2 = _pair(4, 3, seed=11)
    z1.requires_grad_(True), z2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_rejects_bad_inputs() -> None:
    z1, z2 = _pair(4, 3, seed=0)
    with pytest.raises(ValueError):
        nt_xent(z1, z2[:3], 0.5)
    with pytest.raises(ValueError):
        nt_xent(z1[0], z2[0], 0.5)
    with pytest.raises(ValueError):
        nt_xent(z1, z2, 0.0)


def naive_top1(z1: torch.Tensor, z2: torch.Tensor) -> float:
    z = [*z1, *z2]
    n = z1.shape[0]
    hits = 0
    for i in range(2 * n):
        sims = {
            k: float((z[i] @ z[k]) / (z[i].norm() * z[k].norm())) for k in range(2 * n) if k != i
        }
        hits += max(sims, key=sims.__getitem__) == (i + n) % (2 * n)
    return hits / (2 * n)


def test_positive_top1_hand_case() -> None:
    e = torch.eye(3)
    # Image 0's views agree; images 1 and 2 have their second views swapped, so the
    # nearest other view of each of their four anchors is the wrong image's: 2 / 6.
    z1, z2 = e, e[[0, 2, 1]]
    assert positive_top1(z1, z2).item() == pytest.approx(1 / 3)
    assert positive_top1(e, e.clone()).item() == 1.0


def test_positive_top1_matches_naive() -> None:
    z1, z2 = _pair(9, 3, seed=5)
    z2 = z1 + 0.8 * z2  # noisy positives: some anchors right, some wrong
    got = positive_top1(z1, z2).item()
    assert got == pytest.approx(naive_top1(z1, z2))
    assert 0.0 < got < 1.0
