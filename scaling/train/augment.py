"""SimCLR's augmentation, batched on the training device, one random draw per image and view.

torchvision.transforms.v2 applied to a batched tensor draws ONE set of parameters for the
whole batch, so every image gets the same crop and the same colour change: that is not
SimCLR. Applied per image in a Dataset it is right but slow (a Python call per image and
op, on CPU workers). Here the parameters are drawn per image as tensors
(`sample_params`) and applied to the whole batch at once (`apply`):

* random resized crop + horizontal flip: ONE `grid_sample` call. The sampling grid is
  built per image so that it equals torchvision's crop-then-bilinear-resize exactly when
  the crop is enlarged (always the case when the stored images are at `image_size`):
  source coordinates are clamped to the crop box as `interpolate` does. When a crop is
  shrunk there is no antialiasing (like TF SimCLR's `crop_and_resize`).
* colour jitter: brightness, contrast and saturation are all torchvision's
  `blend(x, target, f) = clamp(f x + (1 - f) target)` with target 0, the mean grey level,
  or the grey image; the four ops run in a random order PER IMAGE (as the paper and
  torchvision's ColorJitter), by a loop over the 4 positions with per-image op codes.
  Hue (RGB -> HSV -> RGB) runs only on the images whose op at that position is hue
  (a `nonzero`, i.e. one host sync per position on CUDA).
* grayscale and Gaussian blur: only on the images drawn for them (reflect padding, 1-D passes).

Everything is computed in float32 on [0, 1] (torchvision's uint8 path rounds after every
op; this does not), then normalised with `mean`/`std` (default 0.5/0.5, i.e. [-1, 1]).
Reproducible: the same generator state gives the same output; the number of draws does
not depend on the data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
CPU_CHUNK_PIXELS = 1 << 19  # on CPU, augment this many pixels at a time (see `apply`)
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop: 10 tries, then a centre crop
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op codes in AugmentParams.order


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one view of a batch of N images, as tensors."""

    boxes: Tensor  # (N, 4) int64: top, left, height, width of the crop, input pixels
    flip: Tensor  # (N,) bool: horizontal flip
    jitter: Tensor  # (N,) bool: colour jitter applied
    factors: Tensor  # (N, 4) float32: brightness, contrast, saturation, hue factors
    order: Tensor  # (N, 4) int64: op code applied at each position (a permutation of 0..3)
    gray: Tensor  # (N,) bool: converted to grayscale
    blur: Tensor  # (N,) bool: Gaussian blur applied
    sigma: Tensor  # (N,) float32: blur standard deviation in pixels

    def __len__(self) -> int:
        return self.flip.shape[0]

    def slice(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images start..stop-1."""
        return AugmentParams(*(t[start:stop] for t in astuple_shallow(self)))

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(*(t.to(device) for t in astuple_shallow(self)))


def astuple_shallow(p: AugmentParams) -> tuple[Tensor, ...]:
    """The fields in order, without dataclasses.astuple's deep copy."""
    return tuple(getattr(p, f.name) for f in fields(p))


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of ~10% of the side, as the official SimCLR code (23 at 224, 9 at 96)."""
    return 2 * ((image_size // 10) // 2) + 1


class SimCLRAugment:
    """The paper's pipeline (Appendix A): crop 0.08-1, flip, jitter, grayscale, blur.

    Colour jitter is ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) applied with p 0.8, s =
    `color_strength` (the paper uses 1.0 on ImageNet, 0.5 on CIFAR-10). Blur (p 0.5,
    sigma 0.1-2.0) defaults to on for images of 64 px and more; the paper drops it on CIFAR.
    """

    def __init__(
        self,
        image_size: int,
        color_strength: float = 0.5,
        blur: bool | None = None,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 <= color_strength <= 2.5:  # hue factor 0.2 s must stay within 0.5 of a turn
            raise ValueError(f"color_strength must be in [0, 2.5], got {color_strength}")
        self.image_size = image_size
        self.color_strength = color_strength
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.flip_p, self.jitter_p, self.gray_p = flip_p, jitter_p, gray_p
        self.blur_p = blur_p if (image_size >= 64 if blur is None else blur) else 0.0
        self.blur_sigma = blur_sigma
        self.kernel_size = blur_kernel_size(image_size)
        s = 0.8 * color_strength
        # (low, high) of each factor, as torchvision's ColorJitter: [max(0, 1 - s), 1 + s].
        self.factor_ranges = ((max(0.0, 1 - s), 1 + s),) * 3 + (
            (-0.2 * color_strength, 0.2 * color_strength),
        )

    # -- drawing ---------------------------------------------------------------------------

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator
    ) -> AugmentParams:
        """Draw the parameters of one view of `n` images of `height` x `width` pixels."""
        dev = generator.device

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
            return torch.rand(*shape, generator=generator, device=dev) * (high - low) + low

        boxes = _sample_boxes(n, height, width, self.crop_scale, self.crop_ratio, uniform)
        flip = uniform(n) < self.flip_p
        jitter = uniform(n) < self.jitter_p
        lows = torch.tensor([r[0] for r in self.factor_ranges], device=dev)
        highs = torch.tensor([r[1] for r in self.factor_ranges], device=dev)
        factors = lows + uniform(n, 4) * (highs - lows)
        order = uniform(n, 4).argsort(dim=1)  # a uniform random permutation per image
        gray = uniform(n) < self.gray_p
        blur = uniform(n) < self.blur_p
        sigma = uniform(n, low=self.blur_sigma[0], high=self.blur_sigma[1])
        return AugmentParams(boxes, flip, jitter, factors, order, gray, blur, sigma)

    # -- applying --------------------------------------------------------------------------

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Augment uint8 NCHW images (or float in [0, 1]) with given parameters.

        On CPU the batch goes through in chunks of ~`CPU_CHUNK_PIXELS` pixels: the ~60
        elementwise passes then reuse a few MB of buffers instead of faulting in fresh
        pages for every full-batch temporary (1.4x faster at 96 px, batch 256, 2
        threads). On an accelerator the whole batch is one chunk.
        """
        n, _, height, width = images.shape
        params = params if params.flip.device == images.device else params.to(images.device)
        step = n
        if images.device.type == "cpu":
            step = max(1, CPU_CHUNK_PIXELS // max(height * width, self.image_size**2))
        out = torch.empty(n, 3, self.image_size, self.image_size, device=images.device)
        for a in range(0, n, step):
            self._apply(images[a : a + step], params.slice(a, a + step), out[a : a + step])
        return out

    def _apply(self, images: Tensor, p: AugmentParams, out: Tensor) -> None:
        x = crop_flip(to_unit_float(images), p.boxes, p.flip, self.image_size)
        if self.jitter_p > 0:  # in place from here on: x is this call's own tensor
            x = color_jitter(x, p.factors, p.order, p.jitter)
        if self.gray_p > 0:
            x = to_grayscale_(x, p.gray)
        if self.blur_p > 0 and self.kernel_size > 1:
            x = gaussian_blur_(x, p.sigma, p.blur, self.kernel_size)
        normalize(x, self.mean, self.std, out=out)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """One augmented view: float32 NCHW at `image_size`, normalised."""
        n, _, h, w = images.shape
        return self.apply(images, self.sample_params(n, h, w, generator))

    def two_views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent views (the second draw follows the first in the generator)."""
        return self(images, generator), self(images, generator)

    def eval_transform(self, images: Tensor) -> Tensor:
        """No randomness: resize to `image_size` if needed, normalise like training."""
        return eval_transform(images, self.image_size, mean=self.mean, std=self.std)


class CropFlipAugment(SimCLRAugment):
    """The supervised baseline's augmentation: random resized crop 0.08-1 and flip only."""

    def __init__(
        self,
        image_size: int,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        crop_scale: tuple[float, float] = (0.08, 1.0),
    ) -> None:
        super().__init__(
            image_size,
            0.0,
            False,
            mean=mean,
            std=std,
            crop_scale=crop_scale,
            jitter_p=0.0,
            gray_p=0.0,
        )


def eval_transform(
    images: Tensor,
    image_size: int | None = None,
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Tensor:
    """Deterministic evaluation input: uint8 -> [0, 1], optional antialiased resize, normalise."""
    x = to_unit_float(images)
    if image_size is not None and x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        x = x.clamp_(0.0, 1.0)
    return normalize(x, mean, std)


# -- building blocks (batched, per-image parameters) --------------------------------------


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def normalize(
    x: Tensor, mean: Sequence[float], std: Sequence[float], out: Tensor | None = None
) -> Tensor:
    """(x - mean) / std per channel, into `out` when given."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return torch.sub(x, m, out=out).div_(s)


def _sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    uniform: Callable[..., Tensor],
) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: first of 10 valid tries."""
    area = height * width
    target = area * uniform(n, CROP_ATTEMPTS, low=scale[0], high=scale[1])
    aspect = torch.exp(uniform(n, CROP_ATTEMPTS, low=math.log(ratio[0]), high=math.log(ratio[1])))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(dim=1, keepdim=True)  # index of the first valid try
    fw, fh = _fallback_crop(height, width, ratio)
    w = torch.where(ok.any(dim=1), w.gather(1, first).squeeze(1), fw)
    h = torch.where(ok.any(dim=1), h.gather(1, first).squeeze(1), fh)
    top = (uniform(n) * (height - h + 1)).long().clamp_(max=height - h)
    left = (uniform(n) * (width - w + 1)).long().clamp_(max=width - w)
    return torch.stack([top, left, h, w], dim=1)


def _fallback_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The centre crop torchvision uses after 10 invalid tries (aspect clamped to `ratio`)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop boxes (top, left, h, w) resized bilinearly to `size`, flipped where `flip`.

    Source coordinate of output pixel u: left + clamp((u + 0.5) w / size - 0.5, 0, w - 1),
    which is `interpolate(crop, align_corners=False)` (its clamping included).
    """
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(dim=1)
    u = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5

    def coords(start: Tensor, length: Tensor, extent: int) -> Tensor:
        rel = (u[None] * (length[:, None] / size) - 0.5).clamp(min=0.0)
        src = start[:, None] + torch.minimum(rel, length[:, None] - 1)
        return (2.0 * src + 1.0) / extent - 1.0  # grid_sample's normalised coordinate

    gx = coords(left, w, width)
    gx = torch.where(flip[:, None], gx.flip(1), gx)
    gy = coords(top, h, height)
    grid = torch.stack(
        [gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=-1
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
