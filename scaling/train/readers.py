"""Data sets by name, and the readers of their on-disk formats.

Each reader is registered with a `DatasetInfo` (what the planner and trainer know before
loading anything); `load_dataset(name, ...)` validates the name and split and calls it.
Files are read in their published formats (the ones torchvision's downloaders leave):
CIFAR python pickles and STL-10 binaries through `torchvision.datasets` (download=False,
with its md5 integrity checks), ImageFolder trees through `scaling.train.imagefolder`.
Nothing is downloaded: a missing or corrupt file is a `ScalingError` that says where to
put what.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scaling.errors import ScalingError, SpecError
from scaling.plan import data_info
from scaling.plan.layout import validation_fraction
from scaling.sweep.spec import RunSpec
from scaling.train.data import (
    IMAGEFOLDER_CACHE_BYTES,
    DataSet,
    ImageSet,
    LoadRequest,
    resize_uint8,
    subset,
    validation_rows,
)
from scaling.train.imagefolder import ImageFolderSet, scan_folder

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


def _torchvision(make: Callable[[], Any], what: str, base: Path, url: str) -> Any:
    """A torchvision.datasets reader (download=False), its RuntimeError made one line."""
    try:
        return make()
    except RuntimeError as exc:
        raise ScalingError(
            f"{what} in {base} failed torchvision's integrity check ({exc}): fetch {url} "
            f"again and extract it into {base.parent}"
        ) from None


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/{}"


def _read_cifar(req: LoadRequest, folder: str, files: list[str], classes: int) -> ImageSet:
    """torchvision's CIFAR10/CIFAR100 readers (md5-checked python pickles, fine labels)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = _dataset_dir(req.root, folder, folder)
    url = CIFAR_URL.format(f"cifar-{classes}-python.tar.gz")
    _require(base, files, f"CIFAR-{classes}", url)
    reader = CIFAR10 if classes == 10 else CIFAR100
    ds = _torchvision(
        lambda: reader(str(base.parent), train=req.split == "train"), f"CIFAR-{classes}", base, url
    )
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # HWC -> CHW
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageSet(resize_uint8(images, req.image_size), labels, classes)


CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


@register_dataset(DatasetInfo("cifar10", 10, 32, description="CIFAR-10 python pickles"))
def _load_cifar10(req: LoadRequest) -> ImageSet:
    return _read_cifar(req, "cifar-10-batches-py", CIFAR10_FILES, 10)


@register_dataset(DatasetInfo("cifar100", 100, 32, description="CIFAR-100, fine labels"))
def _load_cifar100(req: LoadRequest) -> ImageSet:
    return _read_cifar(req, "cifar-100-python", ["train", "test", "meta"], 100)


STL10_FILES = ["train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"]
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"


@register_dataset(
    DatasetInfo("stl10", 10, 96, description="STL-10 binaries, unlabeled = -1", test_crop=True)
)
def _load_stl10(req: LoadRequest) -> ImageSet:
    """torchvision's STL10 reader (md5-checked binaries; unlabeled images get label -1)."""
    from torchvision.datasets import STL10

    base = _dataset_dir(req.root, "stl10_binary", "stl10")
    _require(base, STL10_FILES, "STL-10", STL10_URL)  # torchvision checks all five
    ds = _torchvision(lambda: STL10(str(base.parent), split=req.split), "STL-10", base, STL10_URL)
    if len(ds.labels) != len(ds.data):
        msg = f"STL-10 {req.split}: {len(ds.data)} images but {len(ds.labels)} labels in {base}"
        raise ScalingError(msg)
    labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    return ImageSet(resize_uint8(torch.from_numpy(ds.data), req.image_size), labels, 10)


@register_dataset(
    DatasetInfo("imagefolder", None, 224, description="root/train|val|test/<class>/*")
)
def _load_imagefolder(req: LoadRequest) -> DataSet:
    """Decoded batch by batch (see `scaling.train.imagefolder`); the files' bytes kept in
    memory when they fit `max_cache_bytes` (the same pixels either way)."""
    paths, labels, num_classes = scan_folder(req.root, req.split)
    workers = req.workers or min(8, os.cpu_count() or 1)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    return ImageFolderSet(
        paths, label_tensor, num_classes, req.image_size, workers, req.max_cache_bytes
    )


def run_splits(
    spec: RunSpec, device: torch.device, workers: int
) -> tuple[DataSet, DataSet, DataSet]:
    """(train, validation, test) of a run, on `device`. The held-out validation share of
    the labelled training split: no method trains (or fits a probe) on it; every run of
    the sweep is scored there (val_top1), so recipes are chosen without the test set."""
    name, root, size = spec.dataset["name"], spec.dataset.get("root"), spec.dataset["image_size"]
    common = {"root": root, "image_size": size, "seed": 0, "num_images": spec.dataset.get("size")}
    split = data_info.train_split(name, spec.method)
    labelled = load_dataset(name, split=split, workers=workers, **common)
    kept, held = validation_rows(labelled.labels, validation_fraction(spec.dataset))
    train = subset(labelled, kept).to(device) if len(held) else labelled.to(device)
    val = subset(labelled, held).to(device)
    test = load_dataset(name, split="test", workers=workers, **common).to(device)
    return train, val, test
