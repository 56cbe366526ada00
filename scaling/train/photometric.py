"""The photometric half of the SimCLR view, batched: colour jitter in a random order per
image, grey, Gaussian blur (scaling.train.augment draws the parameters and crops).

Each op takes a float NCHW batch in [0, 1] and per-image parameters, and works in place
on the images it applies to (the caller owns the batch). Written for speed on the CPU as
well as the accelerator: 0/1 float masks and one channel at a time instead of
`torch.where` and channel broadcasts (5-25x slower per element on the CPU), the blur
only on the blurred images as two banded matmuls whose matrices hold the reflect
padding. Equal to torchvision's functional ops (tests/test_augment.py).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op codes in AugmentParams.order


def grayscale(x: Tensor) -> Tensor:
    """(N, 1, H, W) luma with torchvision's weights, in its operation order."""
    r, g, b = x.unbind(dim=1)
    w = GRAY_WEIGHTS
    return r.mul(w[0]).add_(g, alpha=w[1]).add_(b, alpha=w[2]).unsqueeze(1)


def to_grayscale_(x: Tensor, active: Tensor) -> Tensor:
    """Replace the images where `active` by their grey image, in place (only those are read)."""
    idx = active.nonzero().squeeze(1)  # host sync on CUDA
    if idx.numel() > 0:
        x.index_copy_(0, idx, grayscale(x.index_select(0, idx)).expand(-1, 3, -1, -1))
    return x


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, active: Tensor) -> Tensor:
    """ColorJitter with per-image factors and per-image op order, in place; identity where
    not `active`.

    Position k applies op `order[:, k]` to each image. Brightness, contrast and saturation
    are torchvision's blend clamp(f x + (1 - f) t), t = 0, the mean grey level or the grey
    image, in its operation order: x f + b over the whole batch in place (b per image:
    0 or (1 - f) mean grey), the images whose op is saturation replaced by x f + (1 - f)
    grey, then the clamp; hue only on the images whose op there is hue. In place: on the
    CPU a fresh full-batch temporary costs more than the arithmetic.
    """
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
    for k in range(4):
        op = order[:, k]
        f = torch.where(active & (op != HUE), factors.gather(1, op[:, None]).squeeze(1), 1.0)
        mean_grey = x.mean(dim=(2, 3)) @ w  # the grey image's mean, for contrast
        bias = torch.where(op == CONTRAST, (1.0 - f) * mean_grey, 0.0)
        sat = (active & (op == SATURATION)).nonzero().squeeze(1)  # host sync on CUDA
        xs, fs = x.index_select(0, sat), f[sat]
        grey = grayscale(xs).mul_((1.0 - fs)[:, None, None, None])
        xs.mul_(fs[:, None, None, None])
        for channel in range(3):  # not an expanded grey: a broadcast add is slower on the CPU
            xs[:, channel].add_(grey[:, 0])
        x.mul_(f[:, None, None, None]).add_(bias[:, None, None, None])
        x.index_copy_(0, sat, xs).clamp_(0.0, 1.0)
        idx = (active & (op == HUE)).nonzero().squeeze(1)  # host sync on CUDA
        if idx.numel() > 0:
            x.index_copy_(0, idx, adjust_hue(x.index_select(0, idx), factors[idx, HUE]))
    return x


def adjust_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate hue by `hue` (fraction of a turn in [-0.5, 0.5], per image) in HSV, as torchvision.

    RGB -> HSV -> RGB without materialising S: with chroma c = max - min and u the rotated
    hue in sixths of a turn (in [0, 6)), channel (r, g, b) is max - c clamp(||u - p| - 3|
    - 1, 0, 1), p = (3, 5, 1): the six-sector table in closed form (||u - p| - 3| is 3 minus
    u's distance round the circle from p). Grey pixels (c = 0) come back unchanged. 0/1
    masks as floats, not bool masks and torch.where, and one channel at a time, not a
    broadcast over channels: each several times faster on the CPU.
    """
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))  # max is r; else g; else b
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    is_g.sub_(is_g * is_r)
    is_b = torch.ones_like(maxc).sub_(is_r).sub_(is_g)
    # h6 = (g - b)/c if max is r, else 2 + (b - r)/c if max is g, else 4 + (r - g)/c; the
    # masks select exactly (each 0 or 1, one of them 1).
    h6 = (g - b).mul_(is_r)
    h6.addcmul_((b - r).add_(chroma, alpha=2.0), is_g)
    h6.addcmul_((r - g).add_(chroma, alpha=4.0), is_b)
    h6.div_(chroma.clamp(min=1e-12)).add_(6.0 * hue[:, None, None])  # in [-4, 8)
    wrap = torch.lt(h6, 0.0, out=is_r)  # h6 mod 6, as remainder computes it
    h6.add_(wrap, alpha=6.0)
    h6.sub_(torch.ge(h6, 6.0, out=wrap), alpha=6.0)
    out = torch.empty_like(x)
    for channel, centre in enumerate((3.0, 5.0, 1.0)):
        drop = (h6 - centre).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0).mul_(chroma)
        torch.sub(maxc, drop, out=out[:, channel])
    return out


def gaussian_blur_(x: Tensor, sigma: Tensor, active: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur in place, per-image sigma, reflect padding; only where `active`.

    Only the blurred images are computed; each 1-D pass is one batched matmul with a banded
    matrix per image, the kernel with the reflect padding folded in.
    """
    idx = active.nonzero().squeeze(1)  # host sync on CUDA
    if idx.numel() == 0:
        return x
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None] / sigma.index_select(0, idx)[:, None].to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    rows = _reflect_band(kernel, height)[:, None]  # (M, 1, H, H)
    cols = _reflect_band(kernel, width).transpose(1, 2)[:, None]  # (M, 1, W, W)
    blurred = torch.matmul(rows, torch.matmul(x.index_select(0, idx), cols))
    return x.index_copy_(0, idx, blurred)


def _reflect_band(kernel: Tensor, size: int) -> Tensor:
    """(M, size, size) matrices B with (B v)_i = sum_j kernel_j v_reflect(i + j - r)."""
    taps = _reflect_taps(size, kernel.shape[1], kernel.device, kernel.dtype)
    return (kernel @ taps).view(-1, size, size)


@functools.lru_cache(maxsize=32)
def _reflect_taps(size: int, k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(k, size * size): tap j's 0/1 matrix (output i reads input reflect(i + j - r)), flat."""
    src = torch.arange(size, device=device)[:, None] + torch.arange(k, device=device) - k // 2
    src = src.abs()  # reflect at 0: -i -> i
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)  # reflect at size - 1
    taps = torch.zeros(k, size, size, device=device, dtype=dtype)
    rows = torch.arange(size, device=device)[:, None].expand(size, k)
    taps[torch.arange(k, device=device).expand(size, k), rows, src] = 1.0  # (j, i, src[i, j])
    return taps.view(k, size * size)
