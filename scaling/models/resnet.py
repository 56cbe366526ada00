"""Encoders and heads: timm ResNets at any depth x width, with SimCLR's projection head.

SimCLR's width multiplier (Fig. 7: ResNet-50 1x/2x/4x) scales *every* channel count,
the stem included. timm's `ResNet` accepts `channels=(...)` for the stages but, with its
plain stem, keeps the stem conv, its batch norm and the first stage's input at 64
channels (`inplanes = stem_width * 2 if deep_stem else 64`), so a 2x network built
through timm alone would have 1.2M fewer parameters than the paper's 94M. We build
the timm network and then rebuild the stem and the first stage at `round(64 * w)`.

Two stems: "imagenet" (7x7 stride 2 + max-pool) and "cifar" (3x3 stride 1, no
max-pool; SimCLR Appendix B.9: "we replace the first 7x7 Conv of stride 2 with 3x3
Conv of stride 1, and also remove the first max pooling operation").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, downsample_conv
from torch import nn

from scaling.errors import SpecError
from scaling.sweep.methods import METHODS, Head

#: depth -> (block kind, blocks per stage). 10 is a tiny network for CPU runs.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STEMS = ("cifar", "imagenet")

_BASE_STAGE_CHANNELS = (64, 128, 256, 512)
_BASE_STEM_CHANNELS = 64
_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's `round` goes to even: 2.5 -> 2)."""
    return int(math.floor(x + 0.5))


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise SpecError(f"{name} must be a positive number, got {value!r}")


def _depth_entry(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    if depth not in DEPTHS:
        allowed = ", ".join(str(d) for d in DEPTHS)
        raise SpecError(f"unknown ResNet depth {depth!r}; allowed: {allowed}")
    return DEPTHS[depth]


def block_counts(depth: int, depth_multiplier: float = 1.0) -> tuple[int, ...]:
    """Blocks per stage: the depth's counts times `depth_multiplier`, rounded, at least 1."""
    _check_positive("depth_multiplier", depth_multiplier)
    _, counts = _depth_entry(depth)
    return tuple(max(1, _round_half_up(n * depth_multiplier)) for n in counts)


def _scaled(channels: int, width: float) -> int:
    return max(1, _round_half_up(channels * width))


def stage_widths(width: float) -> tuple[int, ...]:
    """Base channels of the four stages (64, 128, 256, 512) times `width`.

    These are the `planes` of each stage; bottleneck stages output 4x as many.
    """
    _check_positive("width", width)
    return tuple(_scaled(c, width) for c in _BASE_STAGE_CHANNELS)


def stem_width(width: float) -> int:
    """Output channels of the stem conv (and the first stage's input): 64 times `width`."""
    _check_positive("width", width)
    return _scaled(_BASE_STEM_CHANNELS, width)


def _init_like_timm(module: nn.Module) -> None:
    """timm's `ResNet.init_weights` restricted to modules we rebuilt.

    Kaiming-normal (fan_out) convolutions and a zero last BN in each residual branch, as
    the rest of the network got; the official SimCLR code also zero-inits that BN.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in module.modules():
        if hasattr(m, "zero_init_last"):
            m.zero_init_last()


def _first_stage(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int
) -> nn.Sequential:
    """layer1 as timm's `make_blocks` builds it (stride 1), fed by `inplanes` channels.

    Not `make_blocks` itself: it divides by (total blocks - 1) for drop-path and fails
    for a one-block stage.
    """
    out = planes * block.expansion
    downsample = None
    if inplanes != out:
        downsample = downsample_conv(inplanes, out, kernel_size=1, norm_layer=nn.BatchNorm2d)
    layers = [block(inplanes, planes, 1, downsample)]
    layers += [block(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _rebuild_stem(
    model: ResNet,
    block: type[BasicBlock] | type[Bottleneck],
    first_planes: int,
    first_blocks: int,
    stem_channels: int,
    stem: str,
) -> None:
    """Replace conv1/bn1 (and layer1, whose input they feed) to the scaled stem width."""
    kernel, stride, padding = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
    resize = stem_channels != model.bn1.num_features
    if resize or stem == "cifar":
        model.conv1 = nn.Conv2d(3, stem_channels, kernel, stride, padding, bias=False)
        _init_like_timm(model.conv1)
    if resize:
        model.bn1 = nn.BatchNorm2d(stem_channels)
        model.layer1 = _first_stage(block, stem_channels, first_planes, first_blocks)
        _init_like_timm(model.layer1)
    model.feature_info[0]["num_chs"] = stem_channels
    if stem == "cifar":
        model.maxpool = nn.Identity()
        # Without the stride-2 conv and the max-pool every feature map is 4x larger.
        model.feature_info[0]["reduction"] = 1
        for info in model.feature_info[1:]:
            info["reduction"] //= 4


def build_encoder(
    depth: int,
    width: float = 1.0,
    stem: str = "cifar",
    depth_multiplier: float = 1.0,
) -> ResNet:
    """A timm ResNet without classifier: forward gives pooled features (N, num_features).

    Built on the current default device, so `with torch.device("meta"):` gives a
    weightless copy for cost estimates.
    """
    if stem not in STEMS:
        raise SpecError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    kind, _ = _depth_entry(depth)
    block = _BLOCKS[kind]
    layers = block_counts(depth, depth_multiplier)
    channels = stage_widths(width)
    model = ResNet(block, layers, channels=channels, num_classes=0)
    _rebuild_stem(model, block, channels[0], layers[0], stem_width(width), stem)
    return model


class BatchNormNoBias1d(nn.BatchNorm1d):
    """Batch norm with a learnable scale and no shift (TF's `center=False`).

    The official SimCLR projection head ends in batch norm without bias: "the output
    layer ... BN, no bias" (`LinearLayer(use_bias=False, use_bn=True)` there builds
    `BatchNormRelu(center=False)`). Still a `_BatchNorm`, so SyncBN conversion and
    norm-layer detection keep working. Recent torch has `BatchNorm1d(bias=False)`; this
    class gives the same on the older releases we support (torch >= 2.4).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)


class ProjectionHead(nn.Module):
    """SimCLR's g(.): Linear -> BN -> ReLU -> Linear -> BN, no biases in the linears.

    Paper (v1, Sec. 2 / B.9): 2048 -> 2048 (BN, ReLU) -> 128 (BN, no bias) on ResNet-50;
    the hidden width defaults to the encoder's feature width.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        self.fc1 = nn.Linear(in_dim, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, out_dim, bias=False)
        self.bn2 = BatchNormNoBias1d(out_dim)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.act(self.bn1(self.fc1(h)))))

    def first_layer(self) -> nn.Sequential:
        """Its first layer (linear, BN, ReLU): where SimCLRv2 fine-tunes from."""
        return nn.Sequential(self.fc1, self.bn1, nn.ReLU())


class SimCLRNet(nn.Module):
    """Encoder f(.) then projection head g(.); forward gives projections z."""

    def __init__(self, encoder: nn.Module, projection_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(int(encoder.num_features), projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class SupervisedNet(nn.Module):
    """Encoder then a linear classifier; forward gives logits."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(int(encoder.num_features), num_classes)

    @property
    def head_supervised(self) -> nn.Module:
        """The classifier, named as in the official code (excluded from LARS adaptation)."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def _projection(encoder: nn.Module, projection_dim: int, num_classes: int) -> SimCLRNet:
    if projection_dim < 1:
        raise SpecError(f"projection_dim must be at least 1, got {projection_dim}")
    return SimCLRNet(encoder, projection_dim)


def _classifier(encoder: nn.Module, projection_dim: int, num_classes: int) -> SupervisedNet:
    if num_classes < 1:
        raise SpecError(f"num_classes must be at least 1, got {num_classes}")
    return SupervisedNet(encoder, num_classes)


#: the network of each head kind a method names (scaling.sweep.methods.Head)
HEADS: dict[Head, Callable[[nn.Module, int, int], SimCLRNet | SupervisedNet]] = {
    Head.PROJECTION: _projection,
    Head.CLASSIFIER: _classifier,
}


def build_network(
    method: str,
    *,
    depth: int,
    width: float = 1.0,
    stem: str = "cifar",
    depth_multiplier: float = 1.0,
    projection_dim: int = 128,
    num_classes: int = 10,
) -> SimCLRNet | SupervisedNet:
    """The whole trained network for `method` (its registered head on the encoder); both
    kinds expose `.encoder`."""
    if method not in METHODS:
        raise SpecError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    encoder = build_encoder(depth, width, stem, depth_multiplier)
    return HEADS[METHODS[method].head](encoder, projection_dim, num_classes)
