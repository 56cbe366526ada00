"""Cost model: meta-device traces against real CPU forwards and hand-derived formulas."""

from __future__ import annotations

import dataclasses
import math
import time
from itertools import chain

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scaling.errors import SpecError
from scaling.models.resnet import DEPTHS, build_network
from scaling.plan.costs import (
    DEFAULT_MARGIN_BYTES,
    DEFAULT_MARGIN_FRACTION,
    ArchCost,
    arch_cost,
    choose_layout,
    eval_flops,
    max_micro_batch,
    peak_memory_bytes,
    saved_activation_bytes,
    train_flops,
)

# (method, depth, width, stem, image_size, projection_dim, num_classes)
SMALL_ARCHS = [
    ("simclr", 10, 0.25, "cifar", 16, 16, 10),
    ("supervised", 10, 0.25, "imagenet", 16, 128, 10),
    ("supervised", 18, 0.5, "imagenet", 32, 128, 7),
    ("simclr", 50, 0.125, "cifar", 8, 32, 10),
    ("simclr", 50, 0.25, "imagenet", 64, 128, 10),
]


def conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def hand_costs(
    method: str, depth: int, width: float, stem: str, size: int, proj: int, classes: int
) -> tuple[int, int]:
    """(FLOPs, saved bytes) per image, derived layer by layer for a timm ResNet.

    Saved for backward, per sample: every conv's input (usually the previous ReLU's
    output, already counted), every BN's input, every in-place ReLU's output, the
    max-pool's int64 indices; the add and the mean-pool save nothing.
    """
    kind, counts = DEPTHS[depth]
    r = lambda x: max(1, int(math.floor(x + 0.5)))  # noqa: E731
    c0 = r(64 * width)
    flops, floats, extra_bytes = 0, 3 * size * size, 0  # the input image, saved by conv1
    k, s, p = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
    size = conv_out(size, k, s, p)
    flops += 2 * 3 * c0 * k * k * size * size
    floats += 2 * c0 * size * size  # bn1 input, relu output
    if stem == "imagenet":
        size = conv_out(size, 3, 2, 1)
        floats += c0 * size * size  # max-pool output, saved by layer1's convs
        extra_bytes += 8 * c0 * size * size  # max-pool indices
    inplanes = c0
    for stage, (base, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
        planes = r(base * width)
        for i in range(n):
            stride = 2 if (i == 0 and stage > 0) else 1
            out_size = conv_out(size, 3, stride, 1)
            so2, si2 = out_size * out_size, size * size
            if kind == "basic":
                out = planes
                flops += 2 * 9 * (inplanes * planes + planes * planes) * so2
                floats += 4 * planes * so2  # bn1 in, relu out, bn2 in, final relu out
            else:
                out = 4 * planes
                flops += 2 * inplanes * planes * si2 + 2 * 9 * planes * planes * so2
                flops += 2 * planes * out * so2
                floats += 2 * planes * si2 + 2 * planes * so2 + 2 * out * so2
            if stride != 1 or inplanes != out:
                flops += 2 * inplanes * out * so2
                floats += out * so2  # shortcut BN input
            inplanes, size = out, out_size
    features = inplanes
    if method == "simclr":
        flops += 2 * features * features + 2 * features * proj
        floats += features + 2 * features + proj  # fc1 in; bn1 in, relu out; bn2 in
    else:
        flops += 2 * features * classes
        floats += features
    return flops, 4 * floats + extra_bytes


def naive_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Saved-tensor bytes of a REAL forward, tensors told apart by their data pointers."""
    weights = {t.untyped_storage().data_ptr() for t in chain(model.parameters(), model.buffers())}
    sizes: dict[int, int] = {}
    alive: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            sizes[ptr] = t.untyped_storage().nbytes()
            alive.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(sizes.values())


def real_network(method: str, depth: int, width: float, stem: str, proj: int, classes: int):
    torch.manual_seed(0)
    net = build_network(
        method, depth=depth, width=width, stem=stem, projection_dim=proj, num_classes=classes
    )
    return net.train()


def cost_of(method: str, depth: int, width: float, stem: str, size: int, proj: int, classes: int):
    return arch_cost(method, depth, width, stem, 1.0, size, proj, classes)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_arch_cost_matches_hand_derivation(arch: tuple) -> None:
    cost = cost_of(*arch)
    flops, act = hand_costs(*arch)
    assert cost.flops_per_image == flops
    assert cost.activation_bytes == act


@pytest.mark.parametrize("arch", SMALL_ARCHS[:4])
def test_meta_trace_equals_real_cpu_forward(arch: tuple) -> None:
    method, depth, width, stem, size, proj, classes = arch
    cost = cost_of(*arch)
    net = real_network(method, depth, width, stem, proj, classes)
    real = {b: naive_saved_bytes(net, torch.randn(b, 3, size, size)) for b in (2, 4)}
    # exact per sample in training mode; the rest is each BN's batch mean and inverse std
    assert real[4] - real[2] == 2 * cost.activation_bytes
    bn_channels = sum(
        m.num_features for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    assert real[2] - 2 * cost.activation_bytes == 2 * 4 * bn_channels
    # the meta trace of the whole training-mode forward agrees byte for byte
    with torch.device("meta"):
        meta_net = build_network(
            method, depth=depth, width=width, stem=stem, projection_dim=proj, num_classes=classes
        )
    meta_bytes = saved_activation_bytes(
        meta_net.train(), torch.empty(2, 3, size, size, device="meta")
    )
    assert meta_bytes == real[2]
    # FLOPs of a real forward, counted by torch on real tensors
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, size, size))
    assert counter.get_total_flops() == 2 * cost.flops_per_image


def test_arch_cost_param_counts() -> None:
    cost = arch_cost("simclr", 50, 1.0, "imagenet", 1.0, 224, 128, 1000)
    assert cost.encoder_params == 23_508_032
    head = 2048 * 2048 + 2 * 2048 + 2048 * 128 + 128
    assert cost.total_params == 23_508_032 + head
    sup = arch_cost("supervised", 50, 4.0, "imagenet", 1.0, 224, 128, 1000)
    assert sup.encoder_params == 375_378_176
    assert sup.total_params == 375_378_176 + 8192 * 1000 + 1000
    net = real_network("supervised", 18, 0.25, "cifar", 128, 10)
    small = arch_cost("supervised", 18, 0.25, "cifar", 1.0, 32, 128, 10)
    assert small.total_params == sum(p.numel() for p in net.parameters())
    assert small.encoder_params == sum(p.numel() for p in net.encoder.parameters())


def test_resnet50_known_magnitudes() -> None:
    cost = arch_cost("supervised", 50, 1.0, "imagenet", 1.0, 224, 128, 1000)
    assert cost.flops_per_image == pytest.approx(2 * 4.09e9, rel=0.01)  # 4.1 GMACs
    assert cost.flops_per_image == hand_costs("supervised", 50, 1.0, "imagenet", 224, 128, 1000)[0]


def test_saved_bytes_exclude_weights_and_count_shared_tensors_once() -> None:
    model = nn.Sequential(nn.Linear(5, 3, bias=False), nn.ReLU(inplace=True), nn.Linear(3, 2))
    x = torch.randn(4, 5)
    # saved: x (mm input), linear1 output (relu result, also linear2's input): weights not
    assert saved_activation_bytes(model, x) == 4 * (4 * 5 + 4 * 3)
    assert naive_saved_bytes(model, x) == 4 * (4 * 5 + 4 * 3)


def test_arch_cost_is_cached_and_fast() -> None:
    arch_cost.cache_clear()
    start = time.perf_counter()
    first = arch_cost("simclr", 50, 4.0, "imagenet", 1.0, 224, 128, 1000)
    elapsed = time.perf_counter() - start
    assert arch_cost("simclr", 50, 4.0, "imagenet", 1.0, 224, 128, 1000) is first
    assert arch_cost.cache_info().hits == 1
    assert elapsed < 5.0  # meta device: ~0.2 s; a real build alone would take longer
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.total_params = 0  # type: ignore[misc]


def test_arch_cost_rejects_bad_image_size() -> None:
    with pytest.raises(SpecError, match="image_size"):
        arch_cost("simclr", 10, 1.0, "cifar", 1.0, 0, 128, 10)


def tiny_cost(params: int = 1000, act: int = 100) -> ArchCost:
    return ArchCost(
        encoder_params=params, total_params=params, flops_per_image=1, activation_bytes=act
    )


def test_peak_memory_hand_computed() -> None:
    cost = tiny_cost()
    assert peak_memory_bytes(cost, 8, 2, margin_bytes=0, margin_fraction=0.0) == 12_000 + 1_600
    assert peak_memory_bytes(
        cost, 8, 2, optimizer_slots=2, margin_bytes=5, margin_fraction=0.0
    ) == (16_000 + 1_600 + 5)
    expected = math.ceil(13_600 * (1 + DEFAULT_MARGIN_FRACTION)) + DEFAULT_MARGIN_BYTES
    assert peak_memory_bytes(cost, 8, 2) == expected
    # bf16 autocast saves half the activation bytes; weights and optimizer stay fp32
    bf16 = peak_memory_bytes(cost, 8, 2, margin_bytes=0, margin_fraction=0.0, precision="bf16")
    assert bf16 == 12_000 + 800


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("slots", [0, 1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_max_micro_batch_against_brute_force(views: int, slots: int, precision: str) -> None:
    cost = ArchCost(
        encoder_params=10**6,
        total_params=2 * 10**6,
        flops_per_image=1,
        activation_bytes=3 * 10**6 + 7,
    )

    def peak(m: int) -> int:
        return peak_memory_bytes(cost, m, views, slots, precision=precision)

    for memory in [DEFAULT_MARGIN_BYTES, 2 * 2**30, 2**31 + 12345, 24 * 2**30, 80 * 2**30]:
        best = 0
        while peak(best + 1) <= memory:
            best += 1
        assert max_micro_batch(cost, memory, views, slots, precision) == best
    # exactly at the boundary
    assert max_micro_batch(cost, peak(17), views, slots, precision) == 17
    assert max_micro_batch(cost, peak(17) - 1, views, slots, precision) == 16
    assert max_micro_batch(cost, 1000, views, slots, precision) == 0


def brute_layout(batch: int, gpus: int, max_micro: int) -> tuple[int, int] | None:
    for accum in range(1, batch + 1):
        for micro in range(1, max_micro + 1):
            if micro * accum * gpus == batch:
                return micro, accum
    return None


def test_choose_layout_against_brute_force() -> None:
    for batch in range(1, 130):
        for gpus in (1, 2, 3, 4, 8):
            for max_micro in (0, 1, 3, 7, 16, 64, 500):
                assert choose_layout(batch, gpus, max_micro) == brute_layout(batch, gpus, max_micro)


def test_choose_layout_examples() -> None:
    assert choose_layout(4096, 8, 128) == (128, 4)
    assert choose_layout(256, 1, 1000) == (256, 1)
    assert choose_layout(96, 2, 20) == (16, 3)
    assert choose_layout(256, 3, 64) is None
    assert choose_layout(256, 1, 0) is None
    assert choose_layout(97, 1, 10) == (1, 97)


def test_train_flops() -> None:
    assert train_flops(10, 100, 5, 2, cached=False) == 10 * 3 * 100 * 2 * 5
    assert train_flops(10, 100, 5, 2, cached=True) == 10 * 4 * 100 * 2 * 5
    assert train_flops(10, 100, 0.5, 1, cached=False) == 1500.0


def test_eval_flops() -> None:
    f = 10
    images = (100, 10, 20)  # fitted training images, held-out images, test images
    assert eval_flops(f, images, "supervised", None) == 10 * 30  # held-out and test only
    assert eval_flops(f, images, "simclr", {"protocol": "features"}) == 10 * 130
    augmented = {"protocol": "augmented", "epochs": 90}
    assert eval_flops(f, images, "simclr", augmented) == 10 * (91 * 100 + 10 + 20)
