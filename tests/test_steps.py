"""One optimizer step's forward/backward: bf16 autocast under gradient caching.

The autocast weight cache once made gradient caching silently train only batch norm
(pytorch/pytorch#112583: a bf16 weight copy cast under no_grad in pass 1 reused by the
pass with gradients). CPU autocast supports bf16, so the path is tested here on a real
encoder: every parameter gets a gradient, equal to the fp32 full-batch one within bf16
tolerance.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from scaling.models.resnet import build_network
from scaling.plan.layout import Layout
from scaling.train.augment import SimCLRAugment
from scaling.train.steps import simclr_step
from scaling.train.views import local_views

BATCH, SIZE = 16, 16


def _grads(
    layout: Layout, autocast: contextlib.AbstractContextManager, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = build_network("simclr", depth=10, width=0.25, stem="cifar", projection_dim=16).to(device)
    # Batch norm on running statistics: the BN batch is then the same with and without
    # accumulation, so the accumulated gradient must equal the full-batch one.
    net.eval()
    images = torch.randint(
        0,
        256,
        (BATCH, 3, SIZE, SIZE),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(1),
    ).to(device)
    gen = torch.Generator(device=device).manual_seed(2)
    aug = SimCLRAugment(SIZE, color_strength=0.5)
    (v1, v2), _ = local_views(aug, images, gen, slice(0, BATCH), views=2)
    simclr_step(net, v1, v2, layout, 0.5, autocast)
    return {name: None if p.grad is None else p.grad.cpu() for name, p in net.named_parameters()}


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("micro", [4, 8])
def test_bf16_cached_accumulation_trains_every_parameter(micro: int, device: str) -> None:
    layout = Layout(micro, BATCH // micro, precision="bf16")
    bf16 = _grads(layout, torch.autocast(device, dtype=torch.bfloat16), device)
    fp32 = _grads(Layout.single(BATCH), contextlib.nullcontext(), device)
    missing = [name for name, g in bf16.items() if g is None]
    assert not missing, f"no gradient under bf16 + gradient caching: {missing}"
    trained = 0
    for name, g in bf16.items():
        ref = fp32[name]
        if not torch.any(ref != 0):  # a residual branch behind a zero-initialised BN scale
            assert not torch.any(g != 0), name
            continue
        trained += 1
        cos = torch.nn.functional.cosine_similarity(g.flatten().float(), ref.flatten(), dim=0)
        ratio = (g.float().norm() / ref.norm()).item()
        assert cos > 0.98 and 0.9 < ratio < 1.1, f"{name}: cosine {cos:.4f}, norm ratio {ratio:.3f}"
    assert trained > len(bf16) // 2  # the stems, shortcuts, last BN scales and the head


def test_layout_precision_resolves_per_device() -> None:
    assert Layout(4, 1).resolved_precision("cuda") == "bf16"
    assert Layout(4, 1).resolved_precision("cpu") == "fp32"
    assert Layout(4, 1, precision="bf16").resolved_precision("cpu") == "bf16"
    assert Layout.from_dict({**Layout(4, 2, precision="fp32").to_dict()}).precision == "fp32"
    assert (
        Layout.from_dict({"micro_batch": 4, "accum_steps": 1, "gpus": 1, "nodes": 1}).precision
        == "auto"
    )
    with pytest.raises(ValueError, match="allowed"):
        Layout(4, 1, precision="fp16")
