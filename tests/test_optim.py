"""LARS against steps worked out by hand from the official formula; parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scaling.errors import SpecError
from scaling.train.optim import LARS, build_optimizer, param_groups


def _param(values: list, grad: list) -> nn.Parameter:
    p = nn.Parameter(torch.tensor(values, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def _close(p: torch.Tensor, expected: list) -> bool:
    return torch.allclose(
        p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_two_steps_with_weight_decay_and_momentum() -> None:
    # w = [3, 4], g = [0.6, 0.8], wd 0.1, lr 2, m 0.9, eta 0.001.
    # Step 1: g' = g + 0.1 w = [0.9, 1.2], |g'| = 1.5, |w| = 5, trust = 0.001 * 5 / 1.5 = 1/300
    #         v = 2/300 * [0.9, 1.2] = [0.006, 0.008], w = [2.994, 3.992] (= 0.998 [3, 4])
    # Step 2: g' = [0.6 + 0.2994, 0.8 + 0.3992] = 1.499 [0.6, 0.8], |w| = 4.99,
    #         lr * trust * g' = 2 * 0.001 * 4.99 / 1.499 * 1.499 [0.6, 0.8] = [0.005988, 0.007984]
    #         v = 0.9 [0.006, 0.008] + that = [0.011388, 0.015184], w = [2.982612, 3.976816]
    p = _param([3.0, 4.0], [0.6, 0.8])
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=0.1)
    opt.step()
    assert _close(p, [2.994, 3.992])
    assert _close(opt.state[p]["momentum_buffer"], [0.006, 0.008])
    opt.step()
    assert _close(p, [2.982612, 3.976816])


def test_zero_weight_norm_uses_trust_one() -> None:
    # |w| = 0: trust 1, so v = lr * (g + wd * 0) = 0.5 [1, 2].
    p = _param([0.0, 0.0], [1.0, 2.0])
    LARS([p], lr=0.5, weight_decay=0.1).step()
    assert _close(p, [-0.5, -1.0])


def test_zero_gradient_norm_uses_trust_one() -> None:
    # g = 0 and wd = 0: |g| = 0, trust 1, v = 0, nothing moves.
    p = _param([3.0, 4.0], [0.0, 0.0])
    LARS([p], lr=1.0).step()
    assert _close(p, [3.0, 4.0])


def test_zero_gradient_with_weight_decay() -> None:
    # g' = 0.1 [3, 4], trust = 0.001 * 5 / 0.5 = 0.01, v = 1 * 0.01 * [0.3, 0.4].
    p = _param([3.0, 4.0], [0.0, 0.0])
    LARS([p], lr=1.0, weight_decay=0.1).step()
    assert _close(p, [2.997, 3.996])


def test_excluded_group_gets_its_decay_no_trust() -> None:
    # Excluded with the group's wd 0.1 (the supervised head): g' = g + 0.1 w = [0.9, 1.2],
    # no trust ratio: v = 2 g' = [1.8, 2.4], w = [1.2, 1.6].
    p = _param([3.0, 4.0], [0.6, 0.8])
    LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.1}], lr=2.0).step()
    assert _close(p, [1.2, 1.6])


def test_excluded_group_without_decay_no_trust_and_classic_momentum() -> None:
    # Excluded (BN, bias: wd 0): v = m v + lr g. Step 1 lr 2: v = [1.2, 1.6], w = [1.8, 2.4].
    # Step 2 lr 1 (lr inside the buffer): v = 0.9 [1.2, 1.6] + [0.6, 0.8] = [1.68, 2.24],
    # w = [0.12, 0.16]. (Momentum applied after lr would give [0.66, 0.88] instead.)
    p = _param([3.0, 4.0], [0.6, 0.8])
    opt = LARS(
        [{"params": [p], "lars_exclude": True, "weight_decay": 0.0}], lr=2.0, weight_decay=0.1
    )
    opt.step()
    assert _close(p, [1.8, 2.4])
    opt.param_groups[0]["lr"] = 1.0
    opt.step()
    assert _close(p, [0.12, 0.16])


def test_trust_ratio_is_per_tensor() -> None:
    # a: trust 0.001 * 5 / 1 -> v = 0.005 [0.6, 0.8]; b: |w| 1, |g| 2 -> trust 0.0005.
    a = _param([3.0, 4.0], [0.6, 0.8])
    b = _param([[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]])
    LARS([a, b], lr=1.0).step()
    assert _close(a, [2.997, 3.996])
    assert _close(b, [[1.0, -0.001], [0.0, 0.0]])


def _reference_steps(ws: list, gs: list, lr: float, m: float, wd: float, eta: float, steps: int):
    """The official update in plain Python floats, one flattened tensor at a time."""
    ws = [list(w) for w in ws]
    vs = [[0.0] * len(w) for w in ws]
    for _ in range(steps):
        for w, g, v in zip(ws, gs, vs, strict=True):
            gd = [gi + wd * wi for gi, wi in zip(g, w, strict=True)]
            wn, gn = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in gd))
            trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
            for i in range(len(w)):
                v[i] = m * v[i] + lr * trust * gd[i]
                w[i] -= v[i]
    return ws


def test_many_tensors_match_plain_python_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,), (2, 2, 2), (5,)]
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    expected = _reference_steps(
        [p.detach().flatten().tolist() for p in params],
        [p.grad.flatten().tolist() for p in params],
        lr=0.7,
        m=0.9,
        wd=1e-3,
        eta=0.01,
        steps=3,
    )
    opt = LARS(params, lr=0.7, momentum=0.9, weight_decay=1e-3, eta=0.01)
    for _ in range(3):
        opt.step()
    for p, e in zip(params, expected, strict=True):
        assert torch.allclose(
            p.detach().flatten(), torch.tensor(e, dtype=torch.float64), atol=1e-12
        )


def test_step_never_mutates_grad_and_skips_params_without_grad() -> None:
    p = _param([3.0, 4.0], [0.6, 0.8])
    grad = p.grad
    idle = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    LARS([p, idle], lr=1.0, weight_decay=0.5).step()
    assert p.grad is grad and _close(p.grad, [0.6, 0.8])
    assert _close(idle, [1.0, 2.0]) and idle not in LARS([idle], lr=1.0).state


def test_closure_is_called_with_grad_enabled() -> None:
    p = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = LARS([p], lr=1.0)

    def closure() -> float:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == 2.0
    assert p.grad is not None


def test_rejects_bad_settings() -> None:
    p = _param([1.0], [1.0])
    with pytest.raises(ValueError):
        LARS([p], lr=-1.0)
    with pytest.raises(ValueError):
        LARS([p], lr=1.0, eta=0.0)


def _toy_net() -> nn.Sequential:
    """Conv with bias, BN, GroupNorm, Linear with bias, LayerNorm, and a tied Linear."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
        nn.LayerNorm(4),
        nn.Linear(4, 4, bias=False),
    )
    net[7].weight = net[5].weight  # shared: must appear once
    return net


def test_param_groups_on_toy_net() -> None:
    net = _toy_net()
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    net.append(frozen)
    groups = param_groups(net, weight_decay=1e-6)
    decay, excluded = groups
    assert decay["weight_decay"] == 1e-6 and decay["lars_exclude"] is False
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(net[0].weight), id(net[5].weight)}
    assert ids(excluded["params"]) == ids(
        [net[0].bias, net[5].bias, *net[1].parameters(), *net[2].parameters(), *net[6].parameters()]
    )
    assert len(decay["params"]) + len(excluded["params"]) == len(
        ids(decay["params"] + excluded["params"])
    )


def test_param_groups_on_resnet_excludes_every_bn_and_bias() -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    decay, excluded = param_groups(net, weight_decay=1e-6)
    bn = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    biases = {id(p) for n, p in net.named_parameters() if n.endswith(".bias")}
    weights = {id(m.weight) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {id(p) for p in excluded["params"]} == bn | biases
    assert {id(p) for p in decay["params"]} == weights
    assert len(decay["params"]) + len(excluded["params"]) == len(list(net.parameters()))


def test_build_optimizer() -> None:
    net = _toy_net()
    lars = build_optimizer("lars", net, lr=0.3, weight_decay=1e-6)
    assert isinstance(lars, LARS)
    assert [g["lars_exclude"] for g in lars.param_groups] == [False, True]
    assert [g["weight_decay"] for g in lars.param_groups] == [1e-6, 0.0]
    sgd = build_optimizer("sgd", net, lr=0.1, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in sgd.param_groups)
    with pytest.raises(SpecError, match="lars, sgd"):
        build_optimizer("adam", net, lr=0.1, weight_decay=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_has_no_host_sync_on_cuda() -> None:
    net = _toy_net().cuda()
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt = build_optimizer("lars", net, lr=0.3, weight_decay=1e-6)
    opt.step()  # state allocation outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_supervised_head_keeps_decay_but_no_layer_adaptation() -> None:
    # The official code excludes 'head_supervised' from LARS's adaptation and adds its
    # weight decay in the loss: one step moves the classifier by lr * (g + wd * w).
    from scaling.models.resnet import build_network

    torch.manual_seed(0)
    net = build_network("supervised", depth=10, width=0.125, stem="cifar", num_classes=3)
    opt = build_optimizer("lars", net, lr=0.5, weight_decay=0.1)
    head = [g for g in opt.param_groups if any(p is net.fc.weight for p in g["params"])]
    assert len(head) == 1 and head[0]["lars_exclude"] and head[0]["weight_decay"] == 0.1
    assert head[0]["params"] == [net.fc.weight]  # the bias stays in the BN/bias group
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.01)
    w0 = net.fc.weight.detach().clone()
    opt.step()
    assert torch.allclose(net.fc.weight, w0 - 0.5 * (0.01 + 0.1 * w0), atol=1e-7)
    simclr = build_network("simclr", depth=10, width=0.125, stem="cifar", projection_dim=8)
    assert len(build_optimizer("lars", simclr, lr=0.5, weight_decay=0.1).param_groups) == 2
