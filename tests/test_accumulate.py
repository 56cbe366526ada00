"""Gradient caching against full-batch autograd on the same network; batch-norm grouping
(both views together without accumulation, shuffle-BN with it) and the leak probe."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from scaling.models.resnet import build_network
from scaling.plan.layout import Layout
from scaling.sweep.methods import BNGrouping, get_method
from scaling.sweep.spec import RunSpec
from scaling.train import checkpoint
from scaling.train.accumulate import cached_backward, joint_backward, plain_backward
from scaling.train.augment import AUGMENTATIONS
from scaling.train.data import stream_batches
from scaling.train.losses import nt_xent
from scaling.train.readers import load_dataset
from scaling.train.steps import simclr_step, unshuffle
from scaling.train.trainer import run
from scaling.train.views import local_views

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


# -- batch-norm grouping: the official joint forward, shuffle-BN under accumulation --------


def test_joint_backward_puts_both_views_in_one_batch_norm_batch() -> None:
    """Without accumulation both views go through the network as one batch (the official
    code's `tf.concat(features_list, 0)`): BN statistics over all 2N images."""
    x1, x2 = _views(seed=7)
    model = _net("bn")
    ref, per_view = copy.deepcopy(model), copy.deepcopy(model)
    loss = joint_backward(model, x1, x2, loss_fn)
    z1, z2 = ref(torch.cat([x1, x2])).chunk(2)
    ref_loss = loss_fn(z1, z2)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-12)
    _assert_same(_grads(model), _grads(ref))
    _assert_same(list(model.buffers()), list(ref.buffers()))
    assert int(model[1].num_batches_tracked) == 1
    plain_backward(per_view, x1, x2, loss_fn)  # one view per batch: other statistics
    assert not torch.allclose(_grads(per_view)[0], _grads(model)[0])


def _shuffled(perm: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """NT-Xent on second-view projections of the rows `perm`, put back in order first."""
    return lambda z1, z2s: loss_fn(z1, unshuffle(z2s, perm))


@pytest.mark.parametrize("micro", [2, 4])
def test_a_shuffled_second_view_keeps_the_full_batch_gradient(micro: int) -> None:
    """x2's rows shuffled before chunking (shuffle-BN), unshuffled before the loss: the
    gradient equals one autograd graph over the same chunks, and, without BN, the plain
    full-batch gradient (the shuffle changes which images share a BN batch, nothing else)."""
    x1, x2 = _views(seed=9)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    for kind in ("bn", "plain"):
        model = _net(kind)
        ref = copy.deepcopy(model)
        loss = cached_backward(model, x1, x2[perm], micro, _shuffled(perm))
        outputs = [ref(c) for c in [*x1.split(micro), *x2[perm].split(micro)]]
        z1, z2s = torch.cat(outputs).chunk(2)
        ref_loss = loss_fn(z1, z2s[perm.argsort()])  # row i: the second view of image i
        ref_loss.backward()
        assert torch.allclose(loss, ref_loss.detach(), rtol=1e-12)
        _assert_same(_grads(model), _grads(ref))
        if kind == "plain":
            full = copy.deepcopy(_net(kind))
            loss_fn(full(x1), full(x2)).backward()
            _assert_same(_grads(model), _grads(full))


LEAK_BATCHES = 48


@pytest.mark.slow
def test_the_leak_probe_finds_no_pairing_leak_under_accumulation(tmp_path: Path) -> None:
    """The leak probe of issue 21 on a network the trainer trained with accumulation (8
    micro-batches of 16): the loss and positive top-1 as the training step computes them
    (its own shuffle) against a neutral grouping (an independent shuffle), batch by batch
    on the same views. With aligned chunks (chunk j of x2 the images of chunk j of x1, the
    grouping before shuffle-BN) the probe sees the leak: the loss is lower beyond noise."""
    spec = RunSpec.from_dict(
        {
            "method": "simclr",
            "dataset": {"name": "digits", "image_size": 8},
            "model": {"depth": 10, "width": 0.125},
            "seed": 0,
            "config": {
                "batch_size": 128,
                "epochs": 5,
                "lr_rule": "sqrt",
                "projection_dim": 64,
                "color_strength": 0.5,
                "crop_min_scale": 0.25,
                "eval": {"protocol": "features", "epochs": 1},
            },
        }
    )
    layout = Layout(micro_batch=16, accum_steps=8).with_grouping("simclr")
    assert layout.bn_grouping == BNGrouping.SECOND_VIEW_SHUFFLED
    spec = spec.with_bn_batch(16, layout.bn_grouping)
    run(spec, tmp_path / "run", layout, threads=1)
    net = build_network("simclr", depth=10, width=0.125, stem="cifar", projection_dim=64)
    net.load_state_dict(checkpoint.restore(tmp_path / "run")["model"])
    data = load_dataset("digits", image_size=8, split="train")
    aug = AUGMENTATIONS[get_method("simclr").augmentation](8, spec.config, False)
    gen, neutral = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    scores = []  # per batch: (loss, top-1) as trained, aligned, neutral
    for idx in stream_batches(len(data), 128, 5, range(LEAK_BATCHES)):
        (v1, v2), perm = local_views(aug, data.batch(idx)[0], gen, slice(0, 128), 2, True)
        in_order = torch.empty_like(v2).index_copy(0, perm, v2)  # row i: image i's view
        q = torch.randperm(128, generator=neutral)
        scores.append(
            [
                _scored(net, v1, v2, layout, perm),  # the training step's own grouping
                _scored(net, v1, in_order, layout, None),  # aligned chunks
                _scored(net, v1, in_order[q], layout, q),  # neutral
            ]
        )
    t = torch.tensor(scores, dtype=torch.float64)  # (batches, grouping, metric)

    def z(grouping: int, metric: int) -> float:
        d = t[:, grouping, metric] - t[:, 2, metric]
        return float(d.mean() / (d.std() / math.sqrt(len(d))))

    assert z(1, 0) < -3  # aligned chunks lower the loss: the probe detects a leak
    assert abs(z(0, 0)) < 3 and abs(z(0, 1)) < 3  # the trainer's grouping: no leak


def _scored(
    net: nn.Module, v1: torch.Tensor, v2: torch.Tensor, layout: Layout, perm: torch.Tensor | None
) -> list[float]:
    """(NT-Xent, positive top-1) of one batch as `simclr_step` computes them (batch norm
    on the batch's statistics, a copy of the network so nothing moves)."""
    loss, top1 = simclr_step(
        copy.deepcopy(net).train(), v1, v2, layout, 0.5, contextlib.nullcontext(), perm
    )
    return [float(loss), float(top1)]
