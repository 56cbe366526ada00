"""Batched SimCLR augmentation: the torchvision style against torchvision's functional ops
applied image by image, and what both styles share (tests/test_official.py holds the
official style against TensorFlow's own outputs)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from scaling.sweep.methods import AugmentStyle
from scaling.train import augment
from scaling.train.augment import (
    AugmentParams,
    CropFlipAugment,
    SimCLRAugment,
    blur_kernel_size,
    eval_transform,
)

JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
TV = AugmentStyle.TORCHVISION
STYLES = list(AugmentStyle)


def reference_view(
    image: torch.Tensor, p: AugmentParams, i: int, aug: SimCLRAugment
) -> torch.Tensor:
    """Image i through torchvision.transforms.v2.functional, one op at a time, with p's draws."""
    top, left, h, w = p.boxes[i].tolist()
    y = TF.resized_crop(image, top, left, h, w, [aug.image_size, aug.image_size], antialias=True)
    if p.flip[i]:
        y = TF.horizontal_flip(y)
    if aug.jitter_p > 0 and p.jitter[i]:
        factors = p.factors[i].tolist()
        for op in p.order[i].tolist():
            y = JITTER_OPS[op](y, factors[op])
    if aug.gray_p > 0 and p.gray[i]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if aug.blur_p > 0 and p.blur[i]:
        sigma = float(p.sigma[i])
        y = TF.gaussian_blur(y, [aug.kernel_size, aug.kernel_size], [sigma, sigma])
    return TF.normalize(y, list(aug.mean), list(aug.std))


def make_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images, some of them flat grey or flat colour (hue's edge cases)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=g)
    images[0] = 128  # grey: zero chroma everywhere
    images[1] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]  # saturated red
    images[2, :, : height // 2] = 0  # half black
    return images


@pytest.mark.parametrize("size, strength", [(32, 0.5), (32, 1.0), (96, 1.0)])
def test_matches_torchvision_per_image(size: int, strength: float) -> None:
    aug = SimCLRAugment(size, color_strength=strength, style=TV)
    images = make_images(48, size, size)
    p = aug.sample_params(48, size, size, torch.Generator().manual_seed(1))
    for flags in (p.flip, p.jitter, p.gray) + ((p.blur,) if size >= 64 else ()):
        assert flags.any() and not flags.all()  # both branches of every random op are exercised
    out = aug.apply(images, p)
    ref = torch.stack([reference_view(images[i].float() / 255, p, i, aug) for i in range(48)])
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)


def test_crop_flip_matches_torchvision_on_non_square_input() -> None:
    aug = CropFlipAugment(32, style=TV)
    images = make_images(64, 20, 28)
    p = aug.sample_params(64, 20, 28, torch.Generator().manual_seed(2))
    ref = torch.stack([reference_view(images[i].float() / 255, p, i, aug) for i in range(64)])
    torch.testing.assert_close(aug.apply(images, p), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("style", STYLES)
def test_each_jitter_op_order_matters_and_is_followed(style: AugmentStyle) -> None:
    """Reversing every image's op order changes the output: the order is really applied."""
    aug = SimCLRAugment(16, color_strength=1.0, jitter_p=1.0, gray_p=0.0, style=style)
    images = make_images(32, 16, 16)
    p = aug.sample_params(32, 16, 16, torch.Generator().manual_seed(3))
    reversed_p = AugmentParams(**{**vars(p), "order": p.order.flip(1)})
    assert not torch.allclose(
        aug.apply(images, p)[3:], aug.apply(images, reversed_p)[3:], atol=1e-3
    )


@pytest.mark.parametrize("style", STYLES)
def test_identical_images_get_independent_views(style: AugmentStyle) -> None:
    aug = SimCLRAugment(32, style=style)
    images = make_images(4, 32, 32, seed=4)[3:4].repeat(16, 1, 1, 1)  # random pixels
    v1, v2 = aug.two_views(images, torch.Generator().manual_seed(0))
    flat = torch.cat([v1, v2]).flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(32) * 1e9
    assert distances.min() > 1e-3  # no two of the 32 views coincide


@pytest.mark.parametrize("style", STYLES)
def test_reproducible_from_generator_seed(style: AugmentStyle) -> None:
    aug = SimCLRAugment(32, style=style)
    images = make_images(8, 32, 32)
    a = aug.two_views(images, torch.Generator().manual_seed(7))
    b = aug.two_views(images, torch.Generator().manual_seed(7))
    c = aug.two_views(images, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])


@pytest.mark.parametrize("style", STYLES)
def test_cpu_chunking_does_not_change_the_result(
    monkeypatch: pytest.MonkeyPatch, style: AugmentStyle
) -> None:
    aug = SimCLRAugment(64, style=style)
    images = make_images(10, 64, 64)
    p = aug.sample_params(10, 64, 64, torch.Generator().manual_seed(5))
    whole = aug.apply(images, p)
    monkeypatch.setattr(augment, "CPU_CHUNK_PIXELS", 3 * 64 * 64)  # chunks of 3 images
    torch.testing.assert_close(aug.apply(images, p), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("style", STYLES)
def test_output_shape_dtype_and_range(style: AugmentStyle) -> None:
    """In [0, 1] before normalising, also the official bicubic crops that overshoot."""
    aug = SimCLRAugment(
        32, color_strength=1.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), style=style
    )
    out = aug(make_images(12, 24, 40), torch.Generator().manual_seed(0))
    assert out.shape == (12, 3, 32, 32) and out.dtype == torch.float32
    low = (0 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    high = (1 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    per_channel = out.transpose(0, 1).flatten(1)
    assert (per_channel.amin(1) >= low - 1e-5).all() and (per_channel.amax(1) <= high + 1e-5).all()


@pytest.mark.parametrize("style", STYLES)
def test_grayscale_views_have_equal_channels(style: AugmentStyle) -> None:
    aug = SimCLRAugment(32, gray_p=0.5, style=style)
    images = make_images(64, 32, 32)
    p = aug.sample_params(64, 32, 32, torch.Generator().manual_seed(6))
    out = aug.apply(images, p)
    spread = (out.amax(dim=1) - out.amin(dim=1)).flatten(1).amax(dim=1)
    assert (spread[p.gray] < 1e-5).all()
    assert (spread[~p.gray & (torch.arange(64) > 2)] > 0.05).all()


@pytest.mark.parametrize("style", STYLES)
def test_crop_flip_augment_keeps_colours(style: AugmentStyle) -> None:
    aug = CropFlipAugment(16, style=style)
    colours = torch.randint(0, 256, (20, 3, 1, 1), dtype=torch.uint8)
    out = aug(colours.expand(20, 3, 16, 16), torch.Generator().manual_seed(0))
    expected = (colours.float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-6, rtol=0)


def test_drawn_probabilities_and_ranges() -> None:
    """Over 20,000 draws: each coin has its probability (within 5 sigma), factors their ranges."""
    n = 20_000
    aug = SimCLRAugment(96, color_strength=1.0, style=TV)
    p = aug.sample_params(n, 96, 96, torch.Generator().manual_seed(9))
    for flags, prob in [(p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5)]:
        assert abs(flags.float().mean().item() - prob) < 5 * math.sqrt(prob * (1 - prob) / n)
    low = torch.tensor([0.2, 0.2, 0.2, -0.2])
    high = torch.tensor([1.8, 1.8, 1.8, 0.2])
    assert (p.factors >= low).all() and (p.factors <= high).all()
    assert (p.sigma >= 0.1).all() and (p.sigma <= 2.0).all()
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    counts = torch.unique(p.order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > n / 24 * 0.8  # all orders, near uniform


def test_crop_boxes_follow_torchvision_distribution() -> None:
    """Valid boxes, and area / aspect statistics equal to RandomResizedCrop.get_params'."""
    n, height, width = 20_000, 32, 32
    aug = SimCLRAugment(32, style=TV)
    top, left, h, w = aug.sample_params(n, height, width, torch.Generator().manual_seed(10)).boxes.T
    assert (
        (top >= 0).all()
        and (left >= 0).all()
        and (top + h <= height).all()
        and (left + w <= width).all()
    )
    area = (h * w).float() / (height * width)
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = torch.tensor(
        [v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    ref_area = (ref[:, 2] * ref[:, 3]).float() / (height * width)
    assert abs(area.mean() - ref_area.mean()) < 0.01 and abs(area.std() - ref_area.std()) < 0.01
    log_aspect, ref_log_aspect = torch.log(w / h), torch.log(ref[:, 3] / ref[:, 2].float())
    assert abs(log_aspect.mean() - ref_log_aspect.mean()) < 0.01
    assert abs(log_aspect.std() - ref_log_aspect.std()) < 0.01
    assert abs(left.float().mean() + w.float().mean() / 2 - width / 2) < 0.2  # centred on average


def test_fallback_crop_is_torchvision_centre_crop() -> None:
    def fallback(height: int, width: int) -> tuple[int, int]:
        return tuple(int(v) for v in augment._fallback_crop(height, width, (3 / 4, 4 / 3)))

    assert fallback(10, 40) == (13, 10)  # too wide: clamp to 4/3
    assert fallback(40, 10) == (10, 13)
    assert fallback(30, 32) == (32, 30)
    heights, widths = torch.tensor([10, 40, 30]), torch.tensor([40, 10, 32])
    fw, fh = augment._fallback_crop(heights, widths, (3 / 4, 4 / 3))  # one per image
    assert fw.tolist() == [13, 10, 32] and fh.tolist() == [10, 13, 30]


def test_blur_defaults_and_kernel_size() -> None:
    assert [blur_kernel_size(s) for s in (16, 32, 64, 96, 224)] == [1, 3, 7, 9, 23]
    assert SimCLRAugment(32).blur_p == 0.0 and SimCLRAugment(96).blur_p == 0.5
    assert (
        SimCLRAugment(32, blur=True).blur_p == 0.5 and SimCLRAugment(96, blur=False).blur_p == 0.0
    )


def test_blur_matches_torchvision_kernel_exactly_where_applied() -> None:
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(11))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 1.0])
    active = torch.tensor([True, True, True, True, True, False])
    out = augment.gaussian_blur_(x.clone(), sigma, active, 7)
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    assert torch.equal(out[5], x[5])


def test_eval_transform_is_deterministic_normalisation() -> None:
    images = make_images(4, 32, 32)
    expected = (images.float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(eval_transform(images), expected)
    torch.testing.assert_close(SimCLRAugment(32).eval_transform(images), expected)
    resized = CropFlipAugment(16).eval_transform(images)
    ref = TF.normalize(
        TF.resize(images.float() / 255, [16, 16], antialias=True), [0.5] * 3, [0.5] * 3
    )
    assert resized.shape == (4, 3, 16, 16)
    torch.testing.assert_close(resized, ref.clamp(-1, 1), atol=1e-5, rtol=0)


def test_stl10_evaluation_input_is_resize_110_and_centre_crop_96() -> None:
    images = make_images(4, 96, 96)
    ours = SimCLRAugment(96, test_crop=True).eval_transform(images)
    ref = v2.Compose([v2.Resize(110, antialias=True), v2.CenterCrop(96)])(images.float() / 255)
    assert ours.shape == (4, 3, 96, 96)
    torch.testing.assert_close(
        ours, TF.normalize(ref.clamp(0, 1), [0.5] * 3, [0.5] * 3), atol=1e-5, rtol=0
    )
    assert not torch.allclose(ours, SimCLRAugment(96).eval_transform(images))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="RGB"):
        SimCLRAugment(32)(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.Generator())
    with pytest.raises(ValueError, match="color_strength"):
        SimCLRAugment(32, color_strength=3.0, style=TV)
    with pytest.raises(ValueError, match="color_strength must be at most 1.25"):
        SimCLRAugment(32, color_strength=1.5)  # TensorFlow refuses contrast 1 - 0.8 s < 0
    assert SimCLRAugment(32, color_strength=1.5, style=TV).color_strength == 1.5
    with pytest.raises(ValueError, match="tf"):
        SimCLRAugment(32, style="tf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("style", STYLES)
def test_cuda_matches_cpu_with_the_same_parameters(style: AugmentStyle) -> None:
    aug = SimCLRAugment(96, color_strength=1.0, style=style)
    images = make_images(32, 96, 96)
    p = aug.sample_params(32, 96, 96, torch.Generator(device="cuda").manual_seed(0))
    on_gpu = aug.apply(images.cuda(), p)
    torch.testing.assert_close(on_gpu.cpu(), aug.apply(images, p.to("cpu")), atol=2e-4, rtol=0)
    g = torch.Generator(device="cuda")
    a = aug.two_views(images.cuda(), g.manual_seed(3))
    b = aug.two_views(images.cuda(), g.manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("style", STYLES)
def test_apply_leaves_float_input_unchanged(style: AugmentStyle) -> None:
    """The colour, grey and blur ops work in place on the pipeline's own tensor only."""
    aug = SimCLRAugment(64, color_strength=1.0, style=style)
    images = make_images(8, 64, 64).float() / 255
    before = images.clone()
    aug(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)
