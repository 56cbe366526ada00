"""The official SimCLR code's crop and colour distortion, batched: TensorFlow's semantics.

google-research/simclr (tf2/data_util.py) crops with `tf.image.sample_distorted_bounding_box`
and resizes with `tf.image.resize(..., BICUBIC)`; its colour distortion is a brightness
factor and TensorFlow's `adjust_contrast`, `adjust_saturation` and `adjust_hue`, each
followed by a clip to [0, 1], in a random order (`color_jitter_rand`). Those differ from
torchvision's RandomResizedCrop and ColorJitter (scaling.train.augment keeps the latter as
`augment: torchvision`); here they are written from TensorFlow's kernels, vectorised over
a batch with per-image parameters, and checked against TensorFlow's own outputs
(tests/tf_reference.py records them; tests/test_official.py compares).

Crop (tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc,
`GenerateRandomCrop` and `SampleDistortedBoundingBoxBaseOp::DoCompute`): up to 100
attempts, each an aspect uniform in [3/4, 4/3] and a HEIGHT uniform among the integers
whose area lies in the range (so the side, not the area, is uniform: smaller crops than
torchvision's), width round(height x aspect), top uniform in [0, H - h) and left in
[0, W - w) (the last row and column are reached only by a full-height or full-width
crop), accepted when it covers at least `min_object_covered` = 10% of the image; after
100 failures the whole image. Resize (resize_bicubic_op.cc with half_pixel_centers, as
`tf.image.resize` calls it): Keys' cubic with a = -0.5 from a 1024-entry table, taps
outside the crop weighted 0 and the rest renormalised, no antialiasing, no clamp.

Colour (adjust_contrast_op.h `AdjustContrastv2`, adjust_saturation_op.cc, adjust_hue_op.cc):
contrast pulls each channel toward ITS OWN mean (torchvision: toward the mean grey level);
saturation scales S in HSV with V kept, i.e. blends toward the pixel's max channel
(torchvision: toward its grey value), S clipped to 1; hue rotates H with V and the chroma
kept, which is torchvision's op. Brightness is SimCLR v2's factor, as torchvision's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from scaling.train.photometric import BRIGHTNESS, CONTRAST, HUE, SATURATION, adjust_hue

ATTEMPTS = 100  # crop_and_resize's max_attempts
MIN_OBJECT_COVERED = 0.1  # crop_and_resize's min_object_covered: the crop covers 10% of the image
DRAWS_PER_ATTEMPT = 4  # aspect, height, top, left
EARLY_ATTEMPTS = 10  # tried first (see crop_boxes)
TABLE_SIZE = 1024  # resize_bicubic_op.cc kTableSize
KEYS_A = -0.5  # Keys' cubic, used with half_pixel_centers (GetCoeffsTable(use_keys_cubic))


# -- crop boxes ------------------------------------------------------------------------------


def draw_crops(n: int, uniform: Callable[..., Tensor]) -> Tensor:
    """(n, 4 x ATTEMPTS) uniforms in [0, 1): each attempt's aspect, height, top and left."""
    return uniform(n, DRAWS_PER_ATTEMPT * ATTEMPTS)


def _uniform_int(u: Tensor, count: Tensor) -> Tensor:
    """SimplePhilox::Uniform(count): an integer in [0, count) from u in [0, 1)."""
    return torch.minimum((u * count).floor(), (count - 1).clamp(min=0))


def crop_boxes(
    draws: Tensor,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Tensor:
    """(n, 4) int64 boxes (top, left, height, width): `sample_distorted_bounding_box` on
    images of `height` x `width` (ints, or one per image) with the whole image as the
    object, `min_object_covered` 0.1, area in `scale`, aspect in `ratio`.

    Line by line `GenerateRandomCrop` for every attempt at once (float32 where the kernel
    uses float, lrintf as round-half-even), then the first attempt that is valid and
    covers 10% of the image, else the whole image. The first EARLY_ATTEMPTS are tried
    first; only when one image found nothing there (on a photograph about 0.05^10 of
    the time) are all 100 computed: the same boxes in a quarter of the time.
    """
    n = draws.shape[0]
    H = torch.as_tensor(height, device=draws.device).expand(n).to(torch.float32)[:, None]
    W = torch.as_tensor(width, device=draws.device).expand(n).to(torch.float32)[:, None]
    u = draws.reshape(n, ATTEMPTS, DRAWS_PER_ATTEMPT).to(torch.float32)
    boxes, found = _first_crop(u[:, :EARLY_ATTEMPTS], H, W, scale, ratio)
    if bool(found.all()):  # host sync on CUDA
        return boxes
    return _first_crop(u, H, W, scale, ratio)[0]


def _first_crop(
    u: Tensor, H: Tensor, W: Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """(boxes, found) from the attempts' uniforms u (n, attempts, 4), images H x W (n, 1)."""
    dev, f32 = u.device, torch.float32
    lo, hi = (torch.tensor(r, dtype=f32, device=dev) for r in ratio)
    aspect = u[..., 0] * (hi - lo) + lo  # random.RandFloat() * (max - min) + min
    min_area = torch.tensor(scale[0], dtype=f32, device=dev) * W * H
    max_area = torch.tensor(scale[1], dtype=f32, device=dev) * W * H
    h = torch.sqrt(min_area / aspect).round()
    max_h = torch.sqrt(max_area / aspect).round()
    # round(max_h * aspect) > W: the largest max_h with round(max_h * aspect) <= W, in double
    too_wide = (max_h * aspect).round() > W
    eps = float(torch.tensor(1e-7, dtype=f32))  # kEps is a float, the sum a double
    fitted = ((W.double() + 0.5 - eps) / aspect.double()).floor().to(f32)
    fitted = fitted - ((fitted * aspect).round() > W).to(f32)
    max_h = torch.where(too_wide, fitted, max_h).minimum(H)
    h = h.minimum(max_h)
    h = h + torch.where(h < max_h, _uniform_int(u[..., 1], max_h - h + 1), 0.0)
    w = (h * aspect).round()
    area = w * h
    grow = area < min_area  # rounding left it too small: one row more
    h = torch.where(grow, h + 1, h)
    w = torch.where(grow, (h * aspect).round(), w)
    area = w * h
    shrink = area > max_area  # too large: one row less
    h = torch.where(shrink, h - 1, h)
    w = torch.where(shrink, (h * aspect).round(), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    # SatisfiesOverlapConstraints: at least one pixel, and the share of the image covered
    ok &= (area >= 1.0) & (area / (W * H) >= torch.tensor(MIN_OBJECT_COVERED, dtype=f32))
    top = torch.where(h < H, _uniform_int(u[..., 2], H - h), 0.0)
    left = torch.where(w < W, _uniform_int(u[..., 3], W - w), 0.0)
    first = ok.int().argmax(dim=1, keepdim=True)  # the first accepted attempt
    found = ok.any(dim=1)

    def pick(v: Tensor, whole: Tensor) -> Tensor:
        return torch.where(found, v.gather(1, first).squeeze(1), whole.squeeze(1)).long()

    zero = torch.zeros_like(H)
    boxes = torch.stack([pick(top, zero), pick(left, zero), pick(h, H), pick(w, W)], dim=1)
    return boxes, found


# -- bicubic resize of crop boxes ------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _coefficients(device: torch.device) -> Tensor:
    """(TABLE_SIZE + 1, 2) InitCoeffsTable(-0.5): Keys' weights at distance x = i / 1024 and
    1 + x, computed in double and stored as float, as the kernel's table."""
    a = KEYS_A
    x = torch.arange(TABLE_SIZE + 1, dtype=torch.float64) / TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x1 = x + 1.0
    far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return torch.stack([near, far], dim=1).float().to(device)


def resize_matrix(
    start: Tensor, length: Tensor, size: int, extent: int, flip: Tensor | None = None
) -> Tensor:
    """(n, size, extent): row u holds the bicubic weights with which output pixel u of
    resizing [start, start + length) of an axis of `extent` pixels to `size` reads it
    (resize_bicubic_op.cc, GetWeightsAndIndices<HalfPixelScaler, use_keys_cubic=true>:
    source position (u + 0.5) length / size - 0.5 in float, its fraction rounded to the
    1024-entry table, taps outside the box weighted 0 and the four renormalised); the
    rows in reverse order where `flip`."""
    dev = start.device
    scale = (length.float() / float(size))[:, None]  # CalculateResizeScale, float
    loc = (torch.arange(size, device=dev, dtype=torch.float32)[None] + 0.5) * scale - 0.5
    base = loc.floor()
    offset = ((loc - base) * TABLE_SIZE).round().long()  # lrintf(delta * kTableSize)
    table = _coefficients(dev)
    low, high = table[offset], table[TABLE_SIZE - offset]  # (n, size, 2): near, far
    # taps base - 1, base, base + 1, base + 2 at distances 1 + d, d, 1 - d, 2 - d
    w = [low[..., 1], low[..., 0], high[..., 0], high[..., 1]]
    idx = base.long()[..., None] + torch.arange(-1, 3, device=dev)  # (n, size, 4)
    inside = (idx >= 0) & (idx < length[:, None, None])
    w = [torch.where(inside[..., k], w[k], 0.0) for k in range(4)]
    total = ((w[0] + w[1]) + w[2]) + w[3]
    norm = torch.where(total.abs() > 0, 1.0 / total, 1.0)
    weights = torch.stack([wk * norm for wk in w], dim=-1)
    idx = torch.minimum(idx.clamp(min=0), (length - 1)[:, None, None]) + start[:, None, None]
    if flip is not None:
        idx = torch.where(flip[:, None, None], idx.flip(1), idx)
        weights = torch.where(flip[:, None, None], weights.flip(1), weights)
    out = torch.zeros(len(start), size, extent, device=dev)
    return out.scatter_add_(2, idx, weights)  # a clamped tap repeats an index with weight 0


def resize_boxes(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Each image's (top, left, height, width) box of float NCHW `x`, resized to `size` x
    `size` by TensorFlow's bicubic (`tf.image.resize(crop, BICUBIC)`), then flipped
    left-right where `flip` (the column weights reversed). Two batched matmuls with the
    per-image weight matrices, columns first (dense: on the CPU 3x faster than gathering
    the 4 taps). Values may leave [0, 1] (TensorFlow does not clamp either)."""
    n, c, height, width = x.shape
    top, left, h, w = boxes.unbind(dim=1)
    rows = resize_matrix(top, h, size, height).to(x.dtype)  # (n, size, H)
    cols = resize_matrix(left, w, size, width, flip).to(x.dtype)  # (n, size, W)
    narrow = torch.bmm(x.reshape(n, c * height, width), cols.transpose(1, 2))
    # rows repeated per channel: one batched matmul of n c products (faster on the CPU
    # than broadcasting `rows` over the channels)
    out = torch.bmm(rows.repeat_interleave(c, dim=0), narrow.view(n * c, height, size))
    return out.view(n, c, size, size)


# -- colour ----------------------------------------------------------------------------------


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """TensorFlow's adjust_saturation, per image, in place: S x factor clipped to 1 in HSV,
    H and V kept. In RGB: each channel moves away from V = max by the factor, v - (v - x) r,
    r = f, lowered where S f would pass 1 to v / chroma (the smallest channel then reaches
    0). One channel at a time, as x r + v (1 - r) (a channel broadcast is slower on the CPU)."""
    v = x.amax(dim=1)
    chroma = v - x.amin(dim=1)
    f = factor.to(x.dtype)[:, None, None]
    ratio = torch.minimum(chroma * f, v).div_(chroma.clamp(min=torch.finfo(x.dtype).tiny))
    offset = v.mul_(1.0 - ratio)  # s' v = min(s f, 1) v is the new chroma
    for channel in range(3):
        x[:, channel].mul_(ratio).add_(offset)
    return x


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, active: Tensor) -> Tensor:
    """`color_jitter_rand` with per-image factors and op order, in place; identity (and no
    clip) where not `active`.

    Position k applies op `order[:, k]`: brightness x f, contrast m + (x - m) f with m the
    image's per-channel mean, saturation and hue on the images whose op it is, then the
    clip to [0, 1]. The images not jittered are put back as they were (values outside
    [0, 1] from the bicubic resize stay until the official code's last clip, after the grey).
    """
    idle = (~active).nonzero().squeeze(1)  # host sync on CUDA
    unjittered = x.index_select(0, idle)
    for k in range(4):
        op = order[:, k]
        scaled = active & ((op == BRIGHTNESS) | (op == CONTRAST))
        f = torch.where(scaled, factors.gather(1, op[:, None]).squeeze(1), 1.0)
        contrast = (active & (op == CONTRAST))[:, None]
        bias = torch.where(contrast, (1.0 - f)[:, None] * x.mean(dim=(2, 3)), 0.0)
        x.mul_(f[:, None, None, None]).add_(bias[:, :, None, None])
        sat = (active & (op == SATURATION)).nonzero().squeeze(1)  # host sync on CUDA
        if sat.numel() > 0:
            xs = adjust_saturation(x.index_select(0, sat), factors[sat, SATURATION])
            x.index_copy_(0, sat, xs)
        idx = (active & (op == HUE)).nonzero().squeeze(1)  # host sync on CUDA
        if idx.numel() > 0:
            x.index_copy_(0, idx, adjust_hue(x.index_select(0, idx), factors[idx, HUE]))
        x.clamp_(0.0, 1.0)
    return x.index_copy_(0, idle, unjittered)
