"""Image folders (ImageNet): scanned once, decoded with PIL per batch, per rank, per view.

Training views are cropped from the ORIGINAL image, as the official `crop_and_resize`:
each image's crop box is made from the batch's crop draws (`AugmentParams.crop_draws`,
drawn for the global batch) on that image's own height and width
(`SimCLRAugment.crop_boxes`), and only that box is resized to `image_size`, once per
image for all its views, by the augmentation's style (`FOLDER_CROPS`):

* official: the image decoded in full, each box resized by TensorFlow's bicubic
  (`official.resize_boxes`, float32: no rounding to 8 bits, values may leave [0, 1]);
* torchvision: PIL's antialiased bilinear resize (torchvision's resized_crop on PIL), a
  JPEG decoded at the smallest DCT scale (`Image.draft`, 1/2 to 1/8) that keeps every box
  of its views at least `image_size` wide and high.

The rest of the augmentation (flip, colour, grey, blur) runs batched on the device
(`scaling.train.augment`).

Evaluation input is the paper's: shorter side resized to round(image_size / 0.875), then
a centre crop of `image_size` (`CROP_PROPORTION = 0.875` in the official code).

A folder whose files fit `max_cache_bytes` is kept in memory as the files' bytes
(encoded): every crop and evaluation image is decoded from exactly what is on disk, so a
run is the same whether its folder is cached or not, and the cache is no part of its
identity. A file that cannot be decoded mid-run fails the run with its path
(`ScalingError`); the scan at load time already refuses empty class folders, classes
that differ between train/ and val/, and folders without images.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from scaling.errors import ScalingError, SpecError
from scaling.plan.data_info import IMAGE_SUFFIXES, folder_problem
from scaling.sweep.methods import AugmentStyle
from scaling.train import official
from scaling.train.augment import CROP_PROPORTION, SimCLRAugment

RESAMPLE = Image.Resampling.BILINEAR  # torchvision's default for Resize and RandomResizedCrop


def eval_resize(image_size: int) -> int:
    """The shorter side evaluation images are resized to (256 for 224, 110 for 96)."""
    return round(image_size / CROP_PROPORTION)


CACHE_CHUNK = 1024  # files whose sizes are looked up at a time while filling the cache


def scan_folder(root: Path | None, split: str) -> tuple[list[Path], list[int], int]:
    """root/train/<class>/<image>, and root/val/... or root/test/... for the test split."""
    if root is None:
        raise SpecError(
            "dataset imagefolder needs a root holding train/ and val/ or test/", key="root"
        )
    problem = folder_problem(root)
    if problem:
        raise ScalingError(problem)
    train = root / "train"
    folder = (
        train if split == "train" else next(c for c in (root / "val", root / "test") if c.is_dir())
    )
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())  # train decides indices
    found = [
        (path, index)
        for index, name in enumerate(classes)
        if (folder / name).is_dir()
        for path in sorted((folder / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return [p for p, _ in found], [i for _, i in found], len(classes)


@contextmanager
def _opened(path: Path, data: bytes | None = None) -> Iterator[Image.Image]:
    """The image at `path` (from `data`, its bytes, when given); a file PIL cannot read is
    a ScalingError naming it."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            yield im
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ScalingError(f"cannot decode image {path}: {exc}") from None


def _shorter_to(im: Image.Image, side: int) -> Image.Image:
    """Resize so the shorter side is `side` (torchvision's Resize(int): int() truncation)."""
    w, h = im.size
    new = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    return im if new == (w, h) else im.resize(new, RESAMPLE)


def _draft(im: Image.Image, width: float, height: float) -> tuple[float, float]:
    """Let a JPEG decode at the smallest DCT scale still >= width x height pixels; the
    scale (x, y) of the original's coordinates in the decoded image (1/1 to 1/8)."""
    w, h = im.size
    if im.format != "JPEG":
        return 1.0, 1.0
    done = im.draft("RGB", (max(1, math.ceil(width)), max(1, math.ceil(height))))
    if not done:
        return 1.0, 1.0
    box = done[1]  # where the original lies in the reduced image: (0, 0, w / s, h / s)
    return box[2] / w, box[3] / h


def _pixels(im: Image.Image) -> Image.Image:
    return im.convert("RGB")


def centre_crop(im: Image.Image, size: int) -> Image.Image:
    """torchvision's CenterCrop (round((extent - size) / 2) offsets)."""
    w, h = im.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def _resized_crop(
    im: Image.Image, top: float, left: float, h: float, w: float, size: int
) -> Image.Image:
    """torchvision's resized_crop on PIL (crop, then an antialiased bilinear resize); a
    box in fractional pixels (a JPEG decoded at a reduced scale) is resampled directly."""
    if all(float(v).is_integer() for v in (top, left, h, w)):
        box = (int(left), int(top), int(left + w), int(top + h))
        return _pixels(im.crop(box).resize((size, size), RESAMPLE))
    return _pixels(im.resize((size, size), RESAMPLE, box=(left, top, left + w, top + h)))


def _pil_crops(im: Image.Image, boxes: np.ndarray, size: int) -> list[np.ndarray]:
    """torchvision style: (3, size, size) uint8 crops, the JPEG decoded at a reduced scale
    where every box stays at least `size` wide and high."""
    width, height = im.size
    sx, sy = _draft(im, width * size / boxes[:, 3].min(), height * size / boxes[:, 2].min())
    im = im.convert("RGB")
    crops = [_resized_crop(im, t * sy, x * sx, h * sy, w * sx, size) for t, x, h, w in boxes]
    return [np.stack([np.asarray(band) for band in c.split()]) for c in crops]


def _bicubic_crops(im: Image.Image, boxes: np.ndarray, size: int) -> list[np.ndarray]:
    """Official style: (3, size, size) float32 crops of the fully decoded image, each box
    cut out and resized by TensorFlow's bicubic (`crop_to_bounding_box`, `resize`)."""
    pixels = torch.from_numpy(np.array(im.convert("RGB")))
    out = []
    for t, x, h, w in boxes.tolist():
        crop = pixels[t : t + h, x : x + w].permute(2, 0, 1)[None].float().div_(255.0)
        whole = torch.tensor([[0, 0, h, w]])
        out.append(official.resize_boxes(crop, whole, torch.zeros(1, dtype=torch.bool), size)[0])
    return [c.numpy() for c in out]


#: how an image folder's training crops are cut and resized, and their dtype, per style
FOLDER_CROPS: dict[
    AugmentStyle, tuple[Callable[[Image.Image, np.ndarray, int], list[np.ndarray]], Any]
] = {
    AugmentStyle.OFFICIAL: (_bicubic_crops, np.float32),
    AugmentStyle.TORCHVISION: (_pil_crops, np.uint8),
}


class ImageFolderSet:
    """An image folder decoded on demand: `batch` gives evaluation input, `crops` the
    training crops of given boxes. Decoding runs on the CPU in a thread pool of `workers`
    (PIL releases the GIL); `to(device)` is a no-op and callers move what comes back.
    `decoded` counts images decoded, from disk or from the cache (tests check each rank's
    share). `max_cache_bytes`: keep the files' bytes in memory when they add up to no more.
    """

    decodes_on_cpu = True

    def __init__(
        self,
        paths: list[Path],
        labels: Tensor,
        num_classes: int,
        image_size: int,
        workers: int,
        max_cache_bytes: int = 0,
    ) -> None:
        self.paths, self.labels, self.num_classes = paths, labels, num_classes
        self.image_size = image_size
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
        self.decoded = 0
        self._lock = threading.Lock()
        self._sizes = np.full((len(paths), 2), -1, dtype=np.int64)  # (height, width), lazily
        self._cache = self._read_files(max_cache_bytes)  # the files' bytes, or None

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device | str) -> ImageFolderSet:
        return self

    # -- reading -----------------------------------------------------------------------

    def _count(self) -> None:
        with self._lock:
            self.decoded += 1

    def _read_files(self, budget: int) -> list[bytes] | None:
        """Every file's bytes when their sizes add up to at most `budget`, else None (the
        sizes are looked up a chunk at a time, stopping as soon as the budget is passed)."""
        total = 0
        for start in range(0, len(self.paths), CACHE_CHUNK):
            chunk = self.paths[start : start + CACHE_CHUNK]
            total += sum(self.pool.map(lambda p: p.stat().st_size, chunk))
            if total > budget:
                return None
        return list(self.pool.map(Path.read_bytes, self.paths))

    @contextmanager
    def _image(self, i: int) -> Iterator[Image.Image]:
        with _opened(self.paths[i], None if self._cache is None else self._cache[i]) as im:
            yield im

    def _size(self, i: int) -> tuple[int, int]:
        with self._image(i) as im:  # reads the header only
            return im.size[1], im.size[0]

    def _eval_image(self, i: int) -> Image.Image:
        side = eval_resize(self.image_size)
        self._count()
        with self._image(i) as im:
            w, h = im.size
            _draft(im, side * w / min(w, h), side * h / min(w, h))
            im = _shorter_to(im.convert("RGB"), side)
            return _pixels(centre_crop(im, self.image_size))

    def _gather(
        self, fn: Callable[[int], Sequence[np.ndarray]], n: int, k: int, dtype: Any = np.uint8
    ) -> Tensor:
        """(k, n, 3, S, S) from fn(0..n-1) (k (3, S, S) arrays each), written in place by
        the pool's threads. numpy, not torch: a torch copy per image in these threads made
        decoding 3x slower."""
        out = np.empty((k, n, 3, self.image_size, self.image_size), dtype=dtype)

        def fill(j: int) -> None:
            for v, im in enumerate(fn(j)):
                out[v, j] = im

        list(self.pool.map(fill, range(n)))
        return torch.from_numpy(out)

    # -- what callers ask for ----------------------------------------------------------

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluation input of the images at `indices` (uint8, CPU) and their labels."""
        idx = indices.tolist()

        def planes(j: int) -> list[np.ndarray]:
            return [np.stack([np.asarray(b) for b in self._eval_image(idx[j]).split()])]

        return self._gather(planes, len(idx), 1)[0], self.labels[indices.cpu()]

    def crops(self, indices: Tensor, draws: list[Tensor], aug: SimCLRAugment) -> Tensor:
        """(views, n, 3, S, S) training crops (uint8, or float32 in [0, 1] for the official
        style): view v of image j has the box that `draws[v][j]` (rows of
        AugmentParams.crop_draws) gives on that image's size under `aug`'s crop rule."""
        idx = indices.tolist()
        missing = [i for i in idx if self._sizes[i, 0] < 0]
        for i, hw in zip(missing, self.pool.map(self._size, missing), strict=True):
            self._sizes[i] = hw
        hw = torch.from_numpy(self._sizes[idx])
        boxes = torch.stack(
            [aug.crop_boxes(d.cpu(), hw[:, 0], hw[:, 1]) for d in draws], dim=1
        ).numpy()  # (n, views, 4)
        crop, dtype = FOLDER_CROPS[aug.style]

        def views(j: int) -> list[np.ndarray]:
            self._count()
            with self._image(idx[j]) as im:
                return crop(im, boxes[j], self.image_size)

        return self._gather(views, len(idx), len(draws), dtype)
