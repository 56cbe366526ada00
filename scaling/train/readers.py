"""Data sets by name, and the readers of their on-disk formats.

Each reader is registered with a `DatasetInfo` (what the planner and trainer know before
loading anything); `load_dataset(name, ...)` validates the name and split and calls it.
Files are read in their published formats (the ones torchvision's downloaders leave):
CIFAR python pickles, STL-10 binaries, ImageFolder trees. Nothing is downloaded: a
missing file is a `ScalingError` that says where to put what.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scaling.errors import ScalingError, SpecError
from scaling.train.data import IMAGEFOLDER_CACHE_BYTES, DataSet, ImageSet, LoadRequest, resize_uint8
from scaling.train.imagefolder import ImageFolderSet, cache_side, scan_folder

SPLITS = ("train", "test")
STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
DIGITS_SPLIT_SEED = 0  # the digits train/test split never changes with the run's seed
SYNTHETIC_SIZES = {"train": 2048, "test": 512}


@dataclass(frozen=True)
class DatasetInfo:
    """What the planner and trainer need to know before loading anything."""

    name: str
    num_classes: int | None  # None: read from disk (imagefolder)
    default_image_size: int
    channels: int = 3  # of the loaded images (grey sources are replicated to RGB)
    description: str = ""
    # evaluation resizes to image_size / 0.875 and centre-crops (`augment.eval_transform`)
    test_crop: bool = False


Loader = Callable[[LoadRequest], DataSet]
DATASETS: dict[str, DatasetInfo] = {}
_LOADERS: dict[str, Loader] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Decorator adding a loader; a name registered twice is an error (tests use DATASETS)."""

    def add(loader: Loader) -> Loader:
        if info.name in DATASETS:
            raise ValueError(f"dataset {info.name!r} is already registered")
        DATASETS[info.name], _LOADERS[info.name] = info, loader
        return loader

    return add


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    split: str = "train",
    seed: int = 0,
    num_images: int | None = None,
    max_cache_bytes: int = IMAGEFOLDER_CACHE_BYTES,
    workers: int | None = None,
) -> DataSet:
    """Load one split at `image_size` (default: the dataset's own).

    `seed` and `num_images` only shape `synthetic`; `max_cache_bytes` decides whether an
    image folder is cached in memory, `workers` how many threads decode it.
    """
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise SpecError(f"unknown dataset {name!r}; known: {known}", key="dataset")
    allowed = STL10_SPLITS if name == "stl10" else SPLITS
    if split not in allowed:
        msg = f"dataset {name!r} has no split {split!r}; allowed: {', '.join(allowed)}"
        raise SpecError(msg, key="split")
    size = image_size or DATASETS[name].default_image_size
    path = Path(root).expanduser() if root is not None else None
    return _LOADERS[name](
        LoadRequest(path, size, split, seed, num_images, max_cache_bytes, workers)
    )


def _dataset_dir(root: Path | None, folder: str, what: str) -> Path:
    """`root/folder`, or `root` itself when the user pointed at the folder directly."""
    if root is None:
        raise SpecError(f"dataset {what} needs a root directory holding {folder}/", key="root")
    return root if root.name == folder and not (root / folder).is_dir() else root / folder


def _require(base: Path, files: list[str], what: str, url: str) -> None:
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise ScalingError(
            f"{what} not found: {base} lacks {', '.join(missing)}. Nothing is downloaded here: "
            f"fetch {url} and extract it into {base.parent} (it creates {base.name}/)"
        )


# -- bundled and generated data -------------------------------------------------------------


@register_dataset(DatasetInfo("digits", 10, 32, description="scikit-learn's 8x8 digits"))
def _load_digits(req: LoadRequest) -> ImageSet:
    """scikit-learn's bundled 1,797 real 8x8 digits (values 0..16), grey -> RGB, upsampled.

    A fixed stratified 80/20 split (seed `DIGITS_SPLIT_SEED`, not the run's seed), so every
    run of a sweep trains and evaluates on the same images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    every = np.arange(len(digits.target))
    parts = train_test_split(
        every, test_size=0.2, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(parts[SPLITS.index(req.split)])
    grey = torch.from_numpy(np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8))
    images = resize_uint8(grey[:, None].expand(-1, 3, -1, -1), req.image_size)
    return ImageSet(images, torch.from_numpy(digits.target[idx]).long(), 10)


@register_dataset(DatasetInfo("synthetic", 10, 32, description="procedural shapes"))
def _load_synthetic(req: LoadRequest) -> ImageSet:
    """Procedural shapes, any count and size: the class is the shape; colours, position,
    size and a +-15 degree tilt are random. Deterministic from (seed, split); learnable from
    shape alone (colour carries no label, as SimCLR's colour jitter assumes).
    """
    n = req.num_images if req.num_images is not None else SYNTHETIC_SIZES[req.split]
    entropy = np.random.SeedSequence([req.seed, SPLITS.index(req.split), 7])
    g = torch.Generator().manual_seed(int(entropy.generate_state(1, dtype=np.uint64)[0]))
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, req.image_size, req.image_size, dtype=torch.uint8)
    for a in range(0, n, 512):
        images[a : a + 512] = _draw_shapes(labels[a : a + 512], req.image_size, g)
    return ImageSet(images, labels, 10)


def _draw_shapes(labels: Tensor, size: int, g: torch.Generator) -> Tensor:
    n = labels.shape[0]

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    axis = (torch.arange(size) + 0.5) / size * 2 - 1
    scale = 0.35 + 0.25 * rand(n, 1, 1)
    x0 = (axis[None, None, :] - (rand(n, 1, 1) - 0.5) * 0.6) / scale  # centre +-0.3
    y0 = (axis[None, :, None] - (rand(n, 1, 1) - 0.5) * 0.6) / scale
    angle = (rand(n, 1, 1) - 0.5) * (math.pi / 6)
    u = x0 * torch.cos(angle) + y0 * torch.sin(angle)
    v = y0 * torch.cos(angle) - x0 * torch.sin(angle)
    r, box, au, av = torch.sqrt(u**2 + v**2), torch.maximum(u.abs(), v.abs()), u.abs(), v.abs()
    wave = lambda t, k: torch.sin(k * math.pi * t) > 0  # noqa: E731
    shapes = [
        r < 1,  # 0 disc
        box < 0.85,  # 1 square
        (v > -0.6) & (au < (0.9 - v) * 0.55),  # 2 triangle
        (r > 0.55) & (r < 1),  # 3 ring
        ((au < 0.25) & (av < 1)) | ((av < 0.25) & (au < 1)),  # 4 plus
        (((u - v).abs() < 0.35) | ((u + v).abs() < 0.35)) & (r < 1.1),  # 5 diagonal cross
        (r < 1) & wave(v, 3),  # 6 horizontal stripes
        (r < 1) & wave(u, 3),  # 7 vertical stripes
        (box < 1) & (wave(u, 2.5) == wave(v, 2.5)),  # 8 checkerboard
        ((u - 0.5) ** 2 + v**2 < 0.16) | ((u + 0.5) ** 2 + v**2 < 0.16),  # 9 two dots
    ]
    mask = torch.stack(shapes, dim=1)[torch.arange(n), labels][:, None]
    background = rand(n, 3, 1, 1)
    foreground = torch.remainder(background + 0.5 + (rand(n, 3, 1, 1) - 0.5) * 0.3, 1.0)
    noise = 0.05 * torch.randn(n, 3, size, size, generator=g)
    x = torch.where(mask, foreground, background) + noise
    return (x.clamp_(0, 1) * 255).round_().to(torch.uint8)


# -- published file formats -----------------------------------------------------------------


def _read_cifar(
    req: LoadRequest, folder: str, files: list[str], key: str, classes: int
) -> ImageSet:
    """CIFAR python pickles: dicts with `data` (N, 3072) uint8 rows in CHW order."""
    base = _dataset_dir(req.root, folder, folder)
    archive = "cifar-10-python.tar.gz" if classes == 10 else "cifar-100-python.tar.gz"
    _require(base, files, f"CIFAR-{classes}", f"https://www.cs.toronto.edu/~kriz/{archive}")
    rows, labels = [], []
    for name in files:
        with open(base / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        rows.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry[key])
    images = torch.from_numpy(np.concatenate(rows).reshape(-1, 3, 32, 32))
    return ImageSet(resize_uint8(images, req.image_size), torch.tensor(labels).long(), classes)


@register_dataset(DatasetInfo("cifar10", 10, 32, description="CIFAR-10 python pickles"))
def _load_cifar10(req: LoadRequest) -> ImageSet:
    names = [f"data_batch_{i}" for i in range(1, 6)] if req.split == "train" else ["test_batch"]
    return _read_cifar(req, "cifar-10-batches-py", names, "labels", 10)


@register_dataset(DatasetInfo("cifar100", 100, 32, description="CIFAR-100, fine labels"))
def _load_cifar100(req: LoadRequest) -> ImageSet:
    return _read_cifar(req, "cifar-100-python", [req.split], "fine_labels", 100)


def _read_stl_images(path: Path) -> Tensor:
    """STL-10 binaries store each 3x96x96 image channel by channel, column-major."""
    raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    return raw.view(-1, 3, 96, 96).transpose(2, 3)


@register_dataset(
    DatasetInfo("stl10", 10, 96, description="STL-10 binaries, unlabeled = -1", test_crop=True)
)
def _load_stl10(req: LoadRequest) -> ImageSet:
    base = _dataset_dir(req.root, "stl10_binary", "stl10")
    parts = ["train", "unlabeled"] if req.split == "train+unlabeled" else [req.split]
    files = [f"{p}_{xy}.bin" for p in parts for xy in "Xy" if (p, xy) != ("unlabeled", "y")]
    _require(base, files, "STL-10", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz")
    images, labels = [], []
    for part in parts:
        x = _read_stl_images(base / f"{part}_X.bin")
        y = torch.full((x.shape[0],), -1, dtype=torch.int64)
        if part != "unlabeled":  # labels are 1..10 on disk
            y = torch.from_numpy(np.fromfile(base / f"{part}_y.bin", dtype=np.uint8)).long() - 1
        if y.shape[0] != x.shape[0]:
            msg = f"STL-10 {part}: {x.shape[0]} images but {y.shape[0]} labels in {base}"
            raise ScalingError(msg)
        images.append(resize_uint8(x, req.image_size))
        labels.append(y)
    return ImageSet(torch.cat(images), torch.cat(labels), 10)


@register_dataset(
    DatasetInfo("imagefolder", None, 224, description="root/train|val|test/<class>/*")
)
def _load_imagefolder(req: LoadRequest) -> DataSet:
    """Decoded batch by batch (see `scaling.train.imagefolder`); kept in memory at a
    bounded resolution that keeps the aspect when that fits `max_cache_bytes`."""
    paths, labels, num_classes = scan_folder(req.root, req.split)
    side = cache_side(req.image_size)
    cache = len(paths) * 3 * side * side * 4 // 3 <= req.max_cache_bytes  # 4:3 photographs
    workers = req.workers or min(8, os.cpu_count() or 1)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    return ImageFolderSet(paths, label_tensor, num_classes, req.image_size, workers, cache)
