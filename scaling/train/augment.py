"""SimCLR's augmentation, batched on the training device, one random draw per image and view.

Two semantics (`augment` in a method's config, `AugmentStyle`): `official`, the
google-research/simclr code's TensorFlow crop and colour ops (scaling.train.official, the
default), and `torchvision`, torchvision's RandomResizedCrop and ColorJitter, described
here. Both share the drawing, the grey, the blur and the layout below.

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
The official style's bicubic crops may leave [0, 1]; they are clipped where the official
code clips: after each colour op of a jittered image, and after the grey.
Reproducible: the same generator state gives the same output; the number of draws does
not depend on the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scaling.sweep.methods import (
    MAX_STRENGTH,
    OFFICIAL_MAX_STRENGTH,
    Augmentation,
    AugmentStyle,
)
from scaling.train import official
from scaling.train.photometric import color_jitter, gaussian_blur_, to_grayscale_

CPU_CHUNK_PIXELS = 1 << 19  # on CPU, augment this many pixels at a time (see `apply`)
CROP_PROPORTION = 0.875  # the official code's evaluation crop: image_size / 0.875, centre
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop: 10 tries, then a centre crop


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one view of a batch of N images, as tensors."""

    boxes: Tensor | None  # (N, 4) int64: top, left, height, width; None: see crop_draws
    flip: Tensor  # (N,) bool: horizontal flip
    jitter: Tensor  # (N,) bool: colour jitter applied
    factors: Tensor  # (N, 4) float32: brightness, contrast, saturation, hue factors
    order: Tensor  # (N, 4) int64: op code applied at each position (a permutation of 0..3)
    gray: Tensor  # (N,) bool: converted to grayscale
    blur: Tensor  # (N,) bool: Gaussian blur applied
    sigma: Tensor  # (N,) float32: blur standard deviation in pixels
    # (N, D) float32: the crop's raw draws (torchvision: CROP_ATTEMPTS area fractions and
    # aspects, then top and left in [0, 1); official: 4 uniforms per attempt), from which
    # `SimCLRAugment.crop_boxes` makes the box on any image size
    crop_draws: Tensor

    def __len__(self) -> int:
        return self.flip.shape[0]

    def slice(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images start..stop-1."""
        return self.rows(slice(start, stop))

    def rows(self, index: slice | Tensor) -> AugmentParams:
        """The parameters of the images at `index` (a slice or indices)."""
        return AugmentParams(*(None if t is None else t[index] for t in astuple_shallow(self)))

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(*(None if t is None else t.to(device) for t in astuple_shallow(self)))


def astuple_shallow(p: AugmentParams) -> tuple[Tensor | None, ...]:
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
        test_crop: bool = False,
        style: AugmentStyle | str = AugmentStyle.OFFICIAL,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 <= color_strength <= MAX_STRENGTH:  # hue 0.2 s: within half a turn
            raise ValueError(f"color_strength must be in [0, 2.5], got {color_strength}")
        self.style = AugmentStyle(style)
        official_max = OFFICIAL_MAX_STRENGTH  # TensorFlow: contrast factors from 1 - 0.8 s >= 0
        if self.style is AugmentStyle.OFFICIAL and jitter_p > 0 and color_strength > official_max:
            raise ValueError(
                f"color_strength must be at most {official_max} officially, got {color_strength}"
            )
        self.semantics = SEMANTICS[self.style]
        self.image_size = image_size
        self.color_strength = color_strength
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.flip_p, self.jitter_p, self.gray_p = flip_p, jitter_p, gray_p
        self.blur_p = blur_p if (image_size >= 64 if blur is None else blur) else 0.0
        self.blur_sigma = blur_sigma
        self.kernel_size = blur_kernel_size(image_size)
        self.test_crop = test_crop  # evaluation: resize to image_size / 0.875, centre crop
        s = 0.8 * color_strength
        # (low, high) of each factor, as torchvision's ColorJitter: [max(0, 1 - s), 1 + s].
        self.factor_ranges = ((max(0.0, 1 - s), 1 + s),) * 3 + (
            (-0.2 * color_strength, 0.2 * color_strength),
        )

    # -- drawing ---------------------------------------------------------------------------

    def sample_params(
        self, n: int, height: int | None, width: int | None, generator: torch.Generator
    ) -> AugmentParams:
        """Draw the parameters of one view of `n` images of `height` x `width` pixels.

        With `height`/`width` None (images of many sizes, decoded later: an image folder)
        `boxes` is None and the reader makes each image's box from `crop_draws` and its
        own size. The draws are the same either way, so the stream does not depend on it.
        """
        dev = generator.device

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
            return torch.rand(*shape, generator=generator, device=dev) * (high - low) + low

        draws = self.semantics.draw(n, self.crop_scale, self.crop_ratio, uniform)
        boxes = None
        if height is not None and width is not None:
            boxes = self.crop_boxes(draws, height, width)
        flip = uniform(n) < self.flip_p
        jitter = uniform(n) < self.jitter_p
        lows = torch.tensor([r[0] for r in self.factor_ranges], device=dev)
        highs = torch.tensor([r[1] for r in self.factor_ranges], device=dev)
        factors = lows + uniform(n, 4) * (highs - lows)
        order = uniform(n, 4).argsort(dim=1)  # a uniform random permutation per image
        gray = uniform(n) < self.gray_p
        blur = uniform(n) < self.blur_p
        sigma = uniform(n, low=self.blur_sigma[0], high=self.blur_sigma[1])
        return AugmentParams(boxes, flip, jitter, factors, order, gray, blur, sigma, draws)

    def crop_boxes(self, draws: Tensor, height: int | Tensor, width: int | Tensor) -> Tensor:
        """(N, 4) int64 boxes (top, left, height, width) that `draws` (rows of
        `AugmentParams.crop_draws`) give on images of `height` x `width` (or one per image)."""
        return self.semantics.boxes(draws, height, width, self.crop_scale, self.crop_ratio)

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
        x = to_unit_float(images)
        if p.boxes is None:  # already cropped and resized (an image folder's views): flip
            if x.shape[-2:] != (self.image_size, self.image_size):
                raise ValueError(f"cropped views must be {self.image_size} px, got {x.shape}")
            x = torch.where(p.flip[:, None, None, None], x.flip(-1), x)
        else:
            x = self.semantics.resize(x, p.boxes, p.flip, self.image_size)
        if self.jitter_p > 0:  # in place from here on: x is this call's own tensor
            x = self.semantics.jitter(x, p.factors, p.order, p.jitter)
        if self.gray_p > 0:
            x = to_grayscale_(x, p.gray)
        if self.semantics.clip:  # preprocess_for_train's last clip_by_value
            x = x.clamp_(0.0, 1.0)
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
        """No randomness: resize to `image_size` if needed (or the official centre crop
        when `test_crop`), normalise like training."""
        return eval_transform(images, self.image_size, self.test_crop, mean=self.mean, std=self.std)


class CropFlipAugment(SimCLRAugment):
    """The supervised baseline's augmentation: random resized crop 0.08-1 and flip only."""

    def __init__(
        self,
        image_size: int,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        crop_scale: tuple[float, float] = (0.08, 1.0),
        test_crop: bool = False,
        style: AugmentStyle | str = AugmentStyle.OFFICIAL,
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
            test_crop=test_crop,
            style=style,
        )


def _contrastive(image_size: int, config: Mapping[str, Any], test_crop: bool) -> SimCLRAugment:
    return SimCLRAugment(
        image_size,
        color_strength=float(config["color_strength"]),
        crop_scale=(float(config["crop_min_scale"]), 1.0),
        test_crop=test_crop,
        style=config["augment"],
    )


def _crop_flip(image_size: int, config: Mapping[str, Any], test_crop: bool) -> SimCLRAugment:
    crop_scale = (float(config["crop_min_scale"]), 1.0)
    return CropFlipAugment(
        image_size, crop_scale=crop_scale, test_crop=test_crop, style=config["augment"]
    )


#: the training augmentation of each kind a method names, built from its config
AUGMENTATIONS: dict[Augmentation, Callable[[int, Mapping[str, Any], bool], SimCLRAugment]] = {
    Augmentation.CONTRASTIVE: _contrastive,
    Augmentation.CROP_FLIP: _crop_flip,
}


def eval_transform(
    images: Tensor,
    image_size: int | None = None,
    test_crop: bool = False,
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Tensor:
    """Deterministic evaluation input: uint8 -> [0, 1], optional antialiased resize, normalise.

    `test_crop` (square images, e.g. STL-10): resize to round(image_size / 0.875), then
    the centre `image_size` crop (torchvision's Resize + CenterCrop), as the official
    code does for every image size above 32.
    """
    x = to_unit_float(images)
    if test_crop and image_size is not None:
        side = round(image_size / CROP_PROPORTION)
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True).clamp_(0.0, 1.0)
        a = int(round((side - image_size) / 2.0))
        x = x[:, :, a : a + image_size, a : a + image_size]
    elif image_size is not None and x.shape[-2:] != (image_size, image_size):
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


def _draw_crops(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], uniform: Callable[..., Tensor]
) -> Tensor:
    """The random numbers of n crops: 10 area fractions, 10 aspects, top and left in [0, 1)."""
    fractions = uniform(n, CROP_ATTEMPTS, low=scale[0], high=scale[1])
    aspect = torch.exp(uniform(n, CROP_ATTEMPTS, low=math.log(ratio[0]), high=math.log(ratio[1])))
    return torch.cat([fractions, aspect, uniform(n)[:, None], uniform(n)[:, None]], dim=1)


def crop_boxes(
    draws: Tensor, height: int | Tensor, width: int | Tensor, ratio: tuple[float, float]
) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: the first of 10 valid tries,
    else the centre fallback, on images of `height` x `width` (ints, or one per image)."""
    n = draws.shape[0]
    dev = draws.device
    height = torch.as_tensor(height, device=dev).expand(n)
    width = torch.as_tensor(width, device=dev).expand(n)
    k = CROP_ATTEMPTS
    target = (height * width)[:, None] * draws[:, :k]
    aspect = draws[:, k : 2 * k]
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    hh, ww = height[:, None], width[:, None]
    ok = (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
    first = ok.int().argmax(dim=1, keepdim=True)  # index of the first valid try
    fw, fh = _fallback_crop(height, width, ratio)
    w = torch.where(ok.any(dim=1), w.gather(1, first).squeeze(1), fw)
    h = torch.where(ok.any(dim=1), h.gather(1, first).squeeze(1), fh)
    top = torch.minimum((draws[:, 2 * k] * (height - h + 1)).long(), height - h)
    left = torch.minimum((draws[:, 2 * k + 1] * (width - w + 1)).long(), width - w)
    return torch.stack([top, left, h, w], dim=1)


def _fallback_crop(
    height: int | Tensor, width: int | Tensor, ratio: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """The centre crop torchvision uses after 10 invalid tries (aspect clamped to `ratio`)."""
    height, width = torch.as_tensor(height).long(), torch.as_tensor(width).long()
    in_ratio = width.double() / height
    lo, hi = min(ratio), max(ratio)
    fw = torch.where(in_ratio > hi, (height.double() * hi).round().long(), width)
    fh = torch.where(in_ratio < lo, (width.double() / lo).round().long(), height)
    return fw, fh


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


@dataclass(frozen=True)
class Semantics:
    """One style's crop and colour ops (the rest of the pipeline is shared)."""

    #: (n, scale, ratio, uniform) -> (n, D) crop draws
    draw: Callable[[int, tuple[float, float], tuple[float, float], Callable[..., Tensor]], Tensor]
    #: (draws, height, width, scale, ratio) -> (n, 4) boxes
    boxes: Callable[[Tensor, Any, Any, tuple[float, float], tuple[float, float]], Tensor]
    #: (images, boxes, flip, size) -> cropped, resized and flipped float images
    resize: Callable[[Tensor, Tensor, Tensor, int], Tensor]
    #: (images, factors, order, active) -> colour-jittered images (in place)
    jitter: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    clip: bool  # clip to [0, 1] after the grey (values can leave it after the crop)


#: the crop and colour ops of each style
SEMANTICS: dict[AugmentStyle, Semantics] = {
    AugmentStyle.OFFICIAL: Semantics(
        draw=lambda n, scale, ratio, uniform: official.draw_crops(n, uniform),
        boxes=official.crop_boxes,
        resize=official.resize_boxes,
        jitter=official.color_jitter,
        clip=True,
    ),
    AugmentStyle.TORCHVISION: Semantics(
        draw=_draw_crops,
        boxes=lambda draws, height, width, scale, ratio: crop_boxes(draws, height, width, ratio),
        resize=crop_flip,
        jitter=color_jitter,
        clip=False,
    ),
}
