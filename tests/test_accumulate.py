"""Gradient caching against full-batch autograd on the same network."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from scaling.train.accumulate import cached_backward, plain_backward
from scaling.train.losses import nt_xent

N = 8
loss_fn = partial(nt_xent, temperature=0.5)


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, 3, 6, 6, generator=g, dtype=torch.float64),
        torch.randn(N, 3, 6, 6, generator=g, dtype=torch.float64),
    )


def _net(kind: str) -> nn.Module:
    torch.manual_seed(1)
    layers: dict[str, list[nn.Module]] = {
        "plain": [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6)],
        "bn": [
            nn.Conv2d(3, 4, 3, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 6, bias=False),
            nn.BatchNorm1d(6),
        ],
        "dropout": [nn.Flatten(), nn.Linear(108, 16), nn.Dropout(0.5), nn.Linear(16, 6)],
    }
    return nn.Sequential(*layers[kind]).double().train()


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _full_graph(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, micro: int) -> torch.Tensor:
    """Reference: one autograd graph over the whole batch, forwarded in the same chunks
    (x1's, then x2's) so that batch-norm sees the same batches."""
    z = torch.cat([model(c) for c in [*x1.split(micro), *x2.split(micro)]])
    z1, z2 = z.chunk(2)
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach()


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("micro", [1, 2, 4, 8])
def test_equals_full_batch_gradient_without_bn(micro: int) -> None:
    x1, x2 = _views()
    model = _net("plain")
    ref = copy.deepcopy(model)
    ref_loss = loss_fn(ref(x1), ref(x2))  # the plain full-batch objective
    ref_loss.backward()
    loss = cached_backward(model, x1, x2, micro, loss_fn)
    assert not loss.requires_grad
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-12)
    _assert_same(_grads(model), _grads(ref))


@pytest.mark.parametrize("micro", [2, 4])
def test_bn_gradient_and_running_stats_match_one_pass_per_chunk(micro: int) -> None:
    x1, x2 = _views(seed=3)
    model = _net("bn")
    ref = copy.deepcopy(model)
    ref_loss = _full_graph(ref, x1, x2, micro)
    loss = cached_backward(model, x1, x2, micro, loss_fn)
    assert torch.allclose(loss, ref_loss, rtol=1e-12)
    _assert_same(_grads(model), _grads(ref))
    # Running statistics moved exactly as in one forward of each chunk, not two.
    _assert_same(list(model.buffers()), list(ref.buffers()))
    assert int(model[1].num_batches_tracked) == 2 * N // micro
    assert not torch.allclose(model[1].running_mean, torch.zeros(4, dtype=torch.float64))


def test_dropout_masks_are_replayed() -> None:
    x1, x2 = _views(seed=4)
    model = _net("dropout")
    ref = copy.deepcopy(model)
    torch.manual_seed(123)
    _full_graph(ref, x1, x2, 2)
    after_ref = torch.rand(3)
    torch.manual_seed(123)
    cached_backward(model, x1, x2, 2, loss_fn)
    after_cached = torch.rand(3)
    _assert_same(_grads(model), _grads(ref))
    # The generator advanced as if the network had run once.
    assert torch.equal(after_ref, after_cached)


def test_gradients_accumulate_like_backward() -> None:
    x1, x2 = _views(seed=5)
    model = _net("plain")
    cached_backward(model, x1, x2, 4, loss_fn)
    once = _grads(model)
    cached_backward(model, x1, x2, 2, loss_fn)
    _assert_same(_grads(model), [2 * g for g in once])


def test_plain_backward_equals_cached_with_one_chunk_per_view() -> None:
    x1, x2 = _views(seed=6)
    model = _net("bn")
    other = copy.deepcopy(model)
    loss_a = plain_backward(model, x1, x2, loss_fn)
    loss_b = cached_backward(other, x1, x2, N, loss_fn)
    assert torch.allclose(loss_a, loss_b, rtol=1e-12)
    _assert_same(_grads(model), _grads(other))
    _assert_same(list(model.buffers()), list(other.buffers()))
    assert int(model[1].num_batches_tracked) == 2


@pytest.mark.parametrize("micro", [0, 3, 16])
def test_micro_batch_must_divide_batch(micro: int) -> None:
    x1, x2 = _views()
    with pytest.raises(ValueError, match="divide"):
        cached_backward(_net("plain"), x1, x2, micro, loss_fn)


def test_views_must_match() -> None:
    x1, x2 = _views()
    with pytest.raises(ValueError, match="views"):
        cached_backward(_net("plain"), x1, x2[:4], 4, loss_fn)
    with pytest.raises(ValueError, match="views"):
        plain_backward(_net("plain"), x1, x2[:4], loss_fn)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dropout_masks_are_replayed_on_cuda() -> None:
    x1, x2 = (x.cuda() for x in _views(seed=8))
    model = _net("dropout").cuda()
    ref = copy.deepcopy(model)
    torch.manual_seed(321)  # seeds the CUDA generator too
    _full_graph(ref, x1, x2, 4)
    after_ref = torch.rand(3, device="cuda")
    torch.manual_seed(321)
    cached_backward(model, x1, x2, 4, loss_fn)
    _assert_same(_grads(model), _grads(ref))
    assert torch.equal(after_ref, torch.rand(3, device="cuda"))
