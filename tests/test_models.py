"""Encoders and heads: exact parameter counts, width scaling of every channel, stems."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from scaling.errors import SpecError
from scaling.models.resnet import (
    DEPTHS,
    ProjectionHead,
    SimCLRNet,
    SupervisedNet,
    block_counts,
    build_encoder,
    build_network,
    stage_widths,
    stem_width,
)

# Published / timm counts without classifier, ImageNet stem (SimCLR Fig. 7: 24M, 94M,
# 375M; SimCLRv2: R101 2x 170M, R152 2x 233M).
REFERENCE_PARAMS = {
    (18, 1.0): 11_176_512,
    (34, 1.0): 21_284_672,
    (50, 1.0): 23_508_032,
    (101, 1.0): 42_500_160,
    (152, 1.0): 58_143_808,
    (50, 2.0): 93_907_072,
    (50, 4.0): 375_378_176,
    (101, 2.0): 169_771_136,
    (152, 2.0): 232_253_568,
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_encoder(*args: object, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return build_encoder(*args, **kwargs)  # type: ignore[arg-type]


def naive_param_count(depth: int, width: float, stem: str, depth_multiplier: float) -> int:
    """Parameters of a ResNet written out layer by layer from the paper's architecture."""
    kind, counts = DEPTHS[depth]
    r = lambda x: max(1, int(math.floor(x + 0.5)))  # noqa: E731
    c0 = r(64 * width)
    k = 3 if stem == "cifar" else 7
    total = 3 * c0 * k * k + 2 * c0  # stem conv + BN
    inplanes = c0
    for stage, (base, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
        planes = r(base * width)
        for i in range(max(1, r(n * depth_multiplier))):
            stride = 2 if (i == 0 and stage > 0) else 1
            if kind == "basic":
                out = planes
                total += 9 * inplanes * planes + 2 * planes + 9 * planes * planes + 2 * planes
            else:
                out = 4 * planes
                total += inplanes * planes + 2 * planes  # 1x1 reduce
                total += 9 * planes * planes + 2 * planes  # 3x3
                total += planes * out + 2 * out  # 1x1 expand
            if stride != 1 or inplanes != out:
                total += inplanes * out + 2 * out  # projection shortcut
            inplanes = out
    return total


@pytest.mark.parametrize(("depth", "width"), list(REFERENCE_PARAMS))
def test_reference_param_counts(depth: int, width: float) -> None:
    model = meta_encoder(depth, width, "imagenet")
    assert n_params(model) == REFERENCE_PARAMS[(depth, width)]
    assert n_params(model) == naive_param_count(depth, width, "imagenet", 1.0)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_width_one_is_timm_model_exactly(name: str) -> None:
    """Same parameter names and shapes: timm weights would load into ours."""
    depth = int(name.removeprefix("resnet"))
    with torch.device("meta"):
        ref = timm.create_model(name, num_classes=0)
    ours = meta_encoder(depth, 1.0, "imagenet")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert ours.num_features == ref.num_features


@pytest.mark.parametrize(
    ("depth", "width", "stem", "dm"),
    [
        (10, 0.25, "cifar", 1.0),
        (10, 0.1, "imagenet", 1.0),
        (18, 0.5, "cifar", 2.0),
        (34, 1.5, "imagenet", 0.5),
        (50, 0.25, "cifar", 1.0),
        (50, 3.0, "imagenet", 0.34),
        (101, 0.75, "cifar", 1.0),
        (200, 1.0, "imagenet", 1.0),
    ],
)
def test_param_count_matches_naive_formula(depth: int, width: float, stem: str, dm: float) -> None:
    assert n_params(meta_encoder(depth, width, stem, dm)) == naive_param_count(
        depth, width, stem, dm
    )


def test_real_small_model_counts_equal_meta() -> None:
    real = build_encoder(18, 0.25, "cifar")
    assert n_params(real) == n_params(meta_encoder(18, 0.25, "cifar"))
    assert n_params(real) == naive_param_count(18, 0.25, "cifar", 1.0)


def test_block_counts_round_half_up_and_at_least_one() -> None:
    assert block_counts(50) == (3, 4, 6, 3)
    assert block_counts(50, 0.5) == (2, 2, 3, 2)
    assert block_counts(18, 1.25) == (3, 3, 3, 3)  # 2.5 -> 3; Python's round() gives 2
    assert block_counts(101, 0.5) == (2, 2, 12, 2)  # 11.5 -> 12
    assert block_counts(10, 0.25) == (1, 1, 1, 1)
    assert block_counts(18, 1.5) == (3, 3, 3, 3)
    with pytest.raises(SpecError, match="allowed: 10, 18"):
        block_counts(42)
    with pytest.raises(SpecError):
        block_counts(50, 0.0)


def test_stage_and_stem_widths() -> None:
    assert stage_widths(1.0) == (64, 128, 256, 512)
    assert stage_widths(2.0) == (128, 256, 512, 1024)
    assert stage_widths(0.01) == (1, 1, 3, 5)
    assert stem_width(0.25) == 16
    assert stem_width(4.0) == 256
    assert stem_width(0.001) == 1
    assert stem_width(2.5 / 64) == 3  # halves round up
    with pytest.raises(SpecError):
        stage_widths(-1.0)


def test_width_scales_every_channel_including_stem() -> None:
    model = meta_encoder(50, 2.0, "imagenet")
    assert model.conv1.out_channels == 128 and model.bn1.num_features == 128
    assert model.layer1[0].conv1.in_channels == 128
    assert model.layer1[0].downsample[0].in_channels == 128
    assert model.layer4[-1].conv3.out_channels == 4096
    assert model.num_features == 4096
    assert model.feature_info[0]["num_chs"] == 128
    small = meta_encoder(18, 0.5, "cifar")
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    # every conv output is a scaled base width: 32, 64, 128 or 256
    assert {c.out_channels for c in convs} == {32, 64, 128, 256}


def test_stems_and_feature_map_sizes() -> None:
    cifar = build_encoder(10, 0.25, "cifar").eval()
    imnet = build_encoder(10, 0.25, "imagenet").eval()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imnet.conv1.kernel_size == (7, 7) and imnet.conv1.stride == (2, 2)
    assert isinstance(imnet.maxpool, nn.MaxPool2d)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert cifar.forward_features(x).shape == (2, 128, 4, 4)
        assert imnet.forward_features(x).shape == (2, 128, 1, 1)
        assert cifar(x).shape == (2, cifar.num_features) == (2, 128)
    assert [f["reduction"] for f in cifar.feature_info] == [1, 1, 2, 4, 8]
    assert [f["reduction"] for f in imnet.feature_info] == [2, 4, 8, 16, 32]


def test_the_sweeps_bounds_follow_from_the_network() -> None:
    """The spec's limits (scaling.sweep.spec) are the network's: the smallest image the
    stem and stages reduce to one pixel, and the narrowest width whose stem is not clamped."""
    from scaling.sweep.spec import MIN_WIDTH, STEM_REDUCTION

    for stem, reduction in STEM_REDUCTION.items():
        net = build_encoder(10, 0.25, stem).eval()
        assert net.feature_info[-1]["reduction"] == reduction
    assert stem_width(MIN_WIDTH) == 1 and 64 * MIN_WIDTH == 0.5  # rounds half up to 1
    # below it the stem and first stage stay clamped at one channel: width no longer
    # scales every channel
    assert stem_width(MIN_WIDTH / 4) == 1 and stage_widths(MIN_WIDTH / 4)[0] == 1


def test_depth_multiplier_changes_block_counts() -> None:
    model = meta_encoder(50, 1.0, "cifar", 0.5)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 3, 2]


def test_rebuilt_stem_initialised_like_timm() -> None:
    torch.manual_seed(0)
    model = build_encoder(18, 2.0, "imagenet")
    conv = model.layer1[0].conv2  # rebuilt: 128 -> 128, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    for block in model.layer1:
        assert torch.count_nonzero(block.bn2.weight) == 0  # zero-init last BN, as timm
    assert torch.count_nonzero(model.layer2[0].bn2.weight) == 0


def test_bad_arguments_raise_spec_error() -> None:
    with pytest.raises(SpecError, match="stem"):
        build_encoder(18, 1.0, "tiny")
    with pytest.raises(SpecError, match="method"):
        build_network("byol", depth=18)
    with pytest.raises(SpecError, match="width"):
        build_encoder(18, 0.0)


def test_projection_head_structure() -> None:
    head = ProjectionHead(64, 16)
    assert head.fc1.weight.shape == (64, 64) and head.fc1.bias is None
    assert head.fc2.weight.shape == (16, 64) and head.fc2.bias is None
    assert head.bn2.weight is not None and head.bn2.bias is None
    assert n_params(head) == 64 * 64 + 2 * 64 + 64 * 16 + 16
    assert ProjectionHead(64, 16, hidden_dim=32).fc1.out_features == 32
    torch.manual_seed(0)
    with torch.no_grad():
        head.bn2.weight.fill_(3.0)
        z = head(torch.randn(50, 64))
    # BN without shift: zero mean per dimension, spread scaled by the learnable weight
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.full((16,), 3.0), atol=1e-3)


def test_head_survives_syncbn_conversion() -> None:
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(ProjectionHead(8, 4))
    assert isinstance(converted.bn2, nn.SyncBatchNorm)
    assert converted.bn2.bias is None and converted.bn2.weight.shape == (4,)


def test_networks_forward_and_expose_encoder() -> None:
    x = torch.randn(4, 3, 16, 16)
    simclr = build_network("simclr", depth=10, width=0.25, stem="cifar", projection_dim=8)
    sup = build_network("supervised", depth=10, width=0.25, stem="cifar", num_classes=7)
    assert isinstance(simclr, SimCLRNet) and isinstance(sup, SupervisedNet)
    assert simclr(x).shape == (4, 8)
    assert sup(x).shape == (4, 7)
    assert simclr.head.fc1.in_features == simclr.encoder.num_features == 128
    assert sup.fc.in_features == sup.encoder.num_features
    assert n_params(sup) == n_params(sup.encoder) + 128 * 7 + 7
