"""The official style (scaling.train.official) against TensorFlow's own outputs.

tests/tf_reference.npz holds what TensorFlow 2's ops returned (tests/tf_reference.py
made it, in a separate environment: TensorFlow is no dependency): 20,000 crop boxes of
`sample_distorted_bounding_box` with the official code's arguments per image size, and
each colour op and the bicubic resize on fixed inputs. Boxes are compared as
distributions (TensorFlow's random stream is not ours), with tolerances from the
sample sizes; the ops elementwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy.stats import chi2_contingency

from scaling.sweep.methods import AugmentStyle
from scaling.train import official
from scaling.train.augment import AugmentParams, CropFlipAugment, SimCLRAugment, crop_boxes
from scaling.train.photometric import adjust_hue, grayscale, to_grayscale_
from scaling.train.readers import load_dataset

REF = np.load(Path(__file__).with_name("tf_reference.npz"))
META = json.loads(str(REF["meta"]))
RATIO = (3 / 4, 4 / 3)
OPS_ATOL = 2e-6  # float32 rounding: TensorFlow's kernels sum and convert in another order


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()


IMAGES = nchw(REF["images"])  # (6, 3, 10, 12) in [0, 1]
N = len(IMAGES)


def our_boxes(n: int, height: int, width: int, area: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    draws = official.draw_crops(n, lambda *shape: torch.rand(*shape, generator=g))
    return official.crop_boxes(draws, height, width, (area, 1.0), RATIO)


def torchvision_boxes(n: int, height: int, width: int, area: float, seed: int) -> torch.Tensor:
    aug = SimCLRAugment(32, crop_scale=(area, 1.0), style=AugmentStyle.TORCHVISION)
    draws = aug.sample_params(n, None, None, torch.Generator().manual_seed(seed)).crop_draws
    return crop_boxes(draws, height, width, RATIO)


def same_distribution(a: np.ndarray, b: np.ndarray, min_expected: float = 5.0) -> float:
    """p-value of a two-sample chi-square test on categories (rows of a and b), categories
    too rare for the test pooled into one."""
    keys, inverse = np.unique(np.concatenate([a, b]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.zeros((2, len(keys)))
    np.add.at(counts[0], inverse[: len(a)], 1)
    np.add.at(counts[1], inverse[len(a) :], 1)
    expected = counts.sum(axis=0) * min(len(a), len(b)) / (len(a) + len(b))
    rare = expected < min_expected
    table = np.concatenate([counts[:, ~rare], counts[:, rare].sum(axis=1, keepdims=True)], 1)
    table = table[:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table)[1])


def area_stats(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float, float]:
    area = boxes[:, 2].astype(float) * boxes[:, 3] / (height * width)
    return area, float(area.mean()), float((area < 0.25).mean())


# -- crop boxes ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [tuple(c) for c in META["crop_cases"]], ids=str)
def test_crop_boxes_are_distributed_as_tensorflows(case: tuple[int, int, float]) -> None:
    """Every coordinate's distribution (top, left, height, width: the joint one on small
    images), the mean area and the share of crops under 25% of the image, as TensorFlow's
    over 20,000 draws; and what is impossible there (a crop reaching the last row or
    column without spanning the image) never happens here."""
    height, width, area = case
    tf = REF[f"boxes_{height}x{width}_{area}"].astype(np.int64)
    ours = our_boxes(len(tf), height, width, area, seed=height).numpy()
    assert (ours[:, :2] >= 0).all() and (ours[:, 2:] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    for b in (tf, ours):
        assert ((b[:, 0] + b[:, 2] < height) | (b[:, 2] == height)).all()
        assert ((b[:, 1] + b[:, 3] < width) | (b[:, 3] == width)).all()
    columns = [[0], [1], [2], [3], [2, 3]] + ([[0, 1, 2, 3]] if height * width <= 64 else [])
    for cols in columns:
        p = same_distribution(tf[:, cols], ours[:, cols])
        assert p > 1e-3, (cols, p)
    a_tf, mean_tf, small_tf = area_stats(tf, height, width)
    a_ours, mean_ours, small_ours = area_stats(ours, height, width)
    n = len(tf)
    assert abs(mean_ours - mean_tf) < 4 * math.sqrt(2 * a_tf.var() / n)
    assert abs(small_ours - small_tf) < 4 * math.sqrt(2 * small_tf * (1 - small_tf) / n) + 1e-9
    aspect_bins = np.linspace(0.7, 1.4, 15)
    hist_tf = np.digitize(tf[:, 3] / tf[:, 2], aspect_bins)[:, None]
    hist_ours = np.digitize(ours[:, 3] / ours[:, 2], aspect_bins)[:, None]
    assert same_distribution(hist_tf, hist_ours) > 1e-3


def test_the_issues_numbers_and_that_the_comparison_can_fail() -> None:
    """Over 20,000 draws on a 500x375 photograph, TensorFlow's crops average 0.388 of the
    image with 33% under a quarter; torchvision's rule 0.436 and 25%, which the same
    comparison refuses."""
    tf = REF["boxes_375x500_0.08"].astype(np.int64)
    _, mean_tf, small_tf = area_stats(tf, 375, 500)
    assert mean_tf == pytest.approx(0.387, abs=0.005) and small_tf == pytest.approx(0.330, abs=0.01)
    _, mean_ours, small_ours = area_stats(our_boxes(20_000, 375, 500, 0.08, 1).numpy(), 375, 500)
    assert mean_ours == pytest.approx(mean_tf, abs=0.006)
    assert small_ours == pytest.approx(small_tf, abs=0.015)
    tv = torchvision_boxes(20_000, 375, 500, 0.08, 1).numpy()
    _, mean_tv, small_tv = area_stats(tv, 375, 500)
    assert mean_tv == pytest.approx(0.436, abs=0.006) and small_tv == pytest.approx(
        0.247, abs=0.015
    )
    assert same_distribution(tf[:, [2]], tv[:, [2]]) < 1e-6


def test_crop_boxes_per_image_sizes_equal_one_size_at_a_time() -> None:
    g = torch.Generator().manual_seed(3)
    draws = official.draw_crops(3, lambda *s: torch.rand(*s, generator=g))
    sizes = [(240, 480), (300, 400), (500, 375)]
    heights, widths = (torch.tensor(v) for v in zip(*sizes, strict=True))
    together = official.crop_boxes(draws, heights, widths, (0.08, 1.0), RATIO)
    for i, (h, w) in enumerate(sizes):
        alone = official.crop_boxes(draws[i : i + 1], h, w, (0.08, 1.0), RATIO)[0]
        assert torch.equal(together[i], alone)


def test_trying_the_first_attempts_first_changes_no_box(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = torch.rand(4000, official.DRAWS_PER_ATTEMPT * official.ATTEMPTS)
    sizes = [(375, 500), (8, 8), (2, 20), (1, 20)]  # 2x20 and 1x20: many or all attempts fail
    early = [official.crop_boxes(draws, h, w, (0.08, 1.0), RATIO) for h, w in sizes]
    monkeypatch.setattr(official, "EARLY_ATTEMPTS", official.ATTEMPTS)
    for (h, w), boxes in zip(sizes, early, strict=True):
        assert torch.equal(official.crop_boxes(draws, h, w, (0.08, 1.0), RATIO), boxes)


def test_tiny_images_as_tensorflow_crops_them() -> None:
    """What TensorFlow 2.21 returned over 200 draws each (recorded by hand): on 1x20 no
    attempt fits (a 1x1 crop is 5% of the image), so after 100 the whole image; on 1x9 a
    1x1 crop (11%) at left 0 to 7, never 8 (left is uniform in [0, W - w))."""
    draws = torch.rand(500, official.DRAWS_PER_ATTEMPT * official.ATTEMPTS)
    assert official.crop_boxes(draws, 1, 20, (0.08, 1.0), RATIO).tolist() == [[0, 0, 1, 20]] * 500
    boxes = official.crop_boxes(draws, 1, 9, (0.08, 1.0), RATIO)
    assert {tuple(b) for b in boxes.tolist()} == {(0, left, 1, 1) for left in range(8)}


# -- resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", META["resize_sizes"])
def test_bicubic_resize_equals_tensorflows(size: int) -> None:
    """tf.image.resize(crop, [size, size], BICUBIC) of crops up- and downsampled, square or
    not, elementwise (at 15 px the kernel's 1024-entry weight table rounds the tap
    positions: exact weights are off by up to 1e-4); flipped, the same columns reversed.
    PyTorch's own bicubic (a = -0.75, edge pixels repeated) is far from it."""
    images = nchw(REF["resize_images"])
    flip = torch.tensor([False, True, False])
    for k, box in enumerate(META["resize_boxes"]):
        boxes = torch.tensor([box] * len(images))
        ours = official.resize_boxes(images, boxes, flip, size)
        ref = nchw(REF[f"resize_{size}"][k])
        ref[1] = ref[1].flip(-1)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    top, left, h, w = META["resize_boxes"][1]  # a 4x5 crop, upsampled
    crop = images[:, :, top : top + h, left : left + w]
    torch_bicubic = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False)
    assert (torch_bicubic - nchw(REF[f"resize_{size}"][1])).abs().max() > 1e-2


# -- colour ----------------------------------------------------------------------------------


def test_contrast_saturation_hue_and_grey_equal_tensorflows() -> None:
    ones = torch.ones(N, dtype=torch.bool)
    for k, f in enumerate(META["contrast"]):
        factors = torch.tensor([[1.0, f, 1.0, 0.0]]).expand(N, 4)
        order = torch.tensor([[1, 0, 2, 3]]).expand(N, 4)  # contrast first, then identities
        ours = official.color_jitter(IMAGES.clone(), factors, order, ones)
        torch.testing.assert_close(
            ours, nchw(REF["contrast"][k]).clamp(0, 1), atol=OPS_ATOL, rtol=0
        )
    for k, f in enumerate(META["saturation"]):
        ours = official.adjust_saturation(IMAGES.clone(), torch.full((N,), f))
        torch.testing.assert_close(ours, nchw(REF["saturation"][k]), atol=OPS_ATOL, rtol=0)
    for k, delta in enumerate(META["hue"]):
        ours = adjust_hue(IMAGES, torch.full((N,), delta))
        torch.testing.assert_close(ours, nchw(REF["hue"][k]), atol=OPS_ATOL, rtol=0)
    torch.testing.assert_close(grayscale(IMAGES), nchw(REF["grayscale"]), atol=1e-7, rtol=0)


def test_contrast_keeps_each_channels_mean_where_torchvisions_greys_it() -> None:
    """The issue's example: contrast 0.2 on an image with channel means (0.70, 0.40, 0.30)
    leaves the means (TensorFlow and here); torchvision's moves them to the grey mean."""
    image = IMAGES[5:6]
    means = image.mean(dim=(2, 3))[0]
    torch.testing.assert_close(means, torch.tensor([0.70, 0.40, 0.30]), atol=1e-6, rtol=0)
    tf = nchw(REF["contrast"][META["contrast"].index(0.2)])[5]
    torch.testing.assert_close(tf.mean(dim=(1, 2)), means, atol=1e-6, rtol=0)
    factors = torch.tensor([[1.0, 0.2, 1.0, 0.0]])
    ours = official.color_jitter(
        image.clone(), factors, torch.tensor([[1, 0, 2, 3]]), torch.ones(1, dtype=torch.bool)
    )
    torch.testing.assert_close(ours.mean(dim=(2, 3))[0], means, atol=1e-6, rtol=0)
    tv = TF.adjust_contrast(image[0], 0.2).mean(dim=(1, 2))
    torch.testing.assert_close(tv, torch.tensor([0.522, 0.462, 0.442]), atol=1e-3, rtol=0)


def test_color_jitter_sequence_equals_tensorflows() -> None:
    """color_jitter_rand's four ops in a fixed order per image with fixed factors (each
    followed by TensorFlow's clip), against TensorFlow running the same sequence."""
    orders = torch.from_numpy(REF["jitter_orders"])
    factors = torch.from_numpy(REF["jitter_factors"])
    ours = official.color_jitter(IMAGES.clone(), factors, orders, torch.ones(N, dtype=torch.bool))
    torch.testing.assert_close(ours, nchw(REF["jitter"]), atol=OPS_ATOL, rtol=0)


def test_inactive_images_are_left_alone_unclipped() -> None:
    x = IMAGES.clone() * 1.4 - 0.2  # as a bicubic crop can overshoot [0, 1]
    active = torch.tensor([True, False] * (N // 2))
    factors = torch.tensor([[1.3, 0.5, 1.6, 0.1]]).expand(N, 4)
    out = official.color_jitter(x.clone(), factors, torch.arange(4).expand(N, 4), active)
    assert torch.equal(out[~active], x[~active])
    assert out[active].min() >= 0 and out[active].max() <= 1


# -- the whole view --------------------------------------------------------------------------


def reference_view(
    image: torch.Tensor, p: AugmentParams, i: int, aug: SimCLRAugment
) -> torch.Tensor:
    """One image through preprocess_for_train's steps one at a time, each with the ops
    checked against TensorFlow above: crop and bicubic resize, flip, colour jitter with
    a clip after each op, grey, clip, normalise."""
    x = image[None].float() / 255
    y = official.resize_boxes(x, p.boxes[i : i + 1], torch.tensor([False]), aug.image_size)
    if p.flip[i]:
        y = y.flip(-1)
    if aug.jitter_p > 0 and p.jitter[i]:
        f = p.factors[i].tolist()
        for op in p.order[i].tolist():
            if op == 0:
                y = y * f[0]
            elif op == 1:
                m = y.mean(dim=(2, 3), keepdim=True)
                y = (y - m) * f[1] + m
            elif op == 2:
                y = official.adjust_saturation(y, torch.tensor([f[2]]))
            else:
                y = adjust_hue(y, torch.tensor([f[3]]))
            y = y.clamp(0, 1)
    if aug.gray_p > 0 and p.gray[i]:
        y = to_grayscale_(y, torch.tensor([True]))
    return TF.normalize(y.clamp(0, 1)[0], list(aug.mean), list(aug.std))


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_batched_view_equals_the_official_steps_per_image(strength: float) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 20, 28), dtype=torch.uint8, generator=g)
    for aug in (SimCLRAugment(24, color_strength=strength), CropFlipAugment(24)):
        p = aug.sample_params(48, 20, 28, g)
        ref = torch.stack([reference_view(images[i], p, i, aug) for i in range(48)])
        torch.testing.assert_close(aug.apply(images, p), ref, atol=1e-5, rtol=0)


# -- image folders ---------------------------------------------------------------------------


class FixedBoxes:
    """An official-style augmentation whose crop boxes are given: view v's box is the v-th
    (the folder asks for each view's boxes in turn)."""

    style = AugmentStyle.OFFICIAL

    def __init__(self, boxes: list[list[int]]) -> None:
        self.boxes = iter(torch.tensor(boxes))

    def crop_boxes(self, draws: torch.Tensor, height: object, width: object) -> torch.Tensor:
        return next(self.boxes)[None].expand(len(draws), 4)


def test_folder_crops_are_tensorflows_bicubic_of_the_original(tmp_path: Path) -> None:
    """A lossless PNG of the reference image, cropped through the folder reader with the
    official style, cached or read from the file each time: TensorFlow's resize exactly."""
    image = np.round(REF["resize_images"][0] * 255).astype(np.uint8)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / split / "a" / "0.png")
    for cache in (0, 1 << 20):
        ds = load_dataset("imagefolder", root=tmp_path, image_size=16, max_cache_bytes=cache)
        assert (ds._cache is not None) == bool(cache)
        draws = [torch.zeros(1, 1) for _ in META["resize_boxes"]]
        aug = FixedBoxes(META["resize_boxes"])
        crops = ds.crops(torch.tensor([0]), draws, aug)  # (views, 1, 3, 16, 16)
        assert crops.dtype == torch.float32
        for k in range(len(META["resize_boxes"])):
            ref = nchw(REF["resize_16"][k][:1])[0]
            torch.testing.assert_close(crops[k, 0], ref, atol=1e-6, rtol=0)


def test_folder_crops_decode_jpegs_in_full(tmp_path: Path) -> None:
    """Large boxes too (where the torchvision style decodes a JPEG at a reduced DCT scale):
    the official crop is the bicubic resize of the box of the fully decoded image."""
    from tests.test_data import write_photos

    paths = write_photos(tmp_path, per_class=2, classes=1)
    ds = load_dataset("imagefolder", root=tmp_path, image_size=40, max_cache_bytes=0)
    aug = SimCLRAugment(40, crop_scale=(0.5, 1.0))
    draws = aug.sample_params(2, None, None, torch.Generator().manual_seed(1)).crop_draws
    crops = ds.crops(torch.arange(2), [draws], aug)[0]
    for i in range(2):
        with Image.open(paths[i]) as im:
            full = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None]
        box = aug.crop_boxes(draws[i : i + 1], full.shape[2], full.shape[3])
        assert int(box[0, 2]) >= 2 * 40 and int(box[0, 3]) >= 2 * 40  # a reduced decode would do
        ref = official.resize_boxes(full.float() / 255, box, torch.tensor([False]), 40)[0]
        torch.testing.assert_close(crops[i], ref, atol=1e-6, rtol=0)
