"""What the planner needs to know about data sets without importing torch."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaling.sweep.methods import get_method

NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "synthetic": 10}
STL10_UNLABELED = 100_000


def train_split(name: str, method: str) -> str:
    """The split a method trains on: a method that learns from unlabelled images (SimCLR)
    trains on STL-10's train+unlabeled (the paper's and every peer's choice); everything
    else on train."""
    return "train+unlabeled" if name == "stl10" and get_method(method).unlabelled else "train"


def held_out(n_labelled: int, fraction: float) -> int:
    """How many of `n_labelled` labelled training images the validation share holds out:
    round(fraction x n), at least one when fraction > 0, and never all of them."""
    if fraction <= 0 or n_labelled < 2:
        return 0
    return min(n_labelled - 1, max(1, round(fraction * n_labelled)))


def num_classes(dataset: Mapping[str, Any]) -> int:
    """Classes of a data set; an ImageFolder's are its train/ sub-folders (10 if absent)."""
    name = dataset["name"]
    if name == "imagefolder":
        root = dataset.get("root")
        train = Path(root) / "train" if root else None
        if train is not None and train.is_dir():
            return max(1, sum(1 for p in train.iterdir() if p.is_dir()))
        return 10
    return NUM_CLASSES[name]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


EVAL_SPLITS = ("val", "test")  # an image folder's test split: root/val, else root/test


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _unreadable(path: Path) -> str | None:
    """Why PIL cannot read the header of `path`, or None (a header check: fast)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - parsed from the header
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def folder_problem(root: Path) -> str | None:
    """What is wrong with the image folder at `root`, in one line naming the path, or None.

    root/train/<class>/ and root/val/<class>/ (or root/test/) with the same classes, none
    empty; the first image of every class folder must open (a header check: a file
    corrupt further in is found when it is decoded, and fails the run with its path).
    """
    train = root / "train"
    held = next((root / s for s in EVAL_SPLITS if (root / s).is_dir()), None)
    if not train.is_dir() or held is None:
        wanted = ", ".join(str(root / s) for s in ("train", *EVAL_SPLITS))
        return f"image folder not found: expected {wanted} with one sub-folder per class"
    classes = {
        split: sorted(d.name for d in split.iterdir() if d.is_dir()) for split in (train, held)
    }
    if not classes[train]:
        return f"{train} has no class sub-folders (expected {train}/<class>/<image>)"
    if classes[train] != classes[held]:
        only_held = sorted(set(classes[held]) - set(classes[train]))
        only_train = sorted(set(classes[train]) - set(classes[held]))
        parts = (
            [f"{held} has classes that {train} lacks: {', '.join(only_held)}"] if only_held else []
        )
        parts += (
            [f"{train} has classes that {held} lacks: {', '.join(only_train)}"]
            if only_train
            else []
        )
        return "; ".join(parts)
    for split in (train, held):
        for name in classes[split]:
            images = _images(split / name)
            if not images:
                return f"{split / name} has no images ({', '.join(IMAGE_SUFFIXES)})"
            why = _unreadable(images[0])
            if why:
                return f"cannot read image {images[0]}: {why}"
    return None


def train_names(root: Path) -> list[tuple[str, str]]:
    """(class folder, file name) of each image of root/train, as the folder indexes them
    (train.imagefolder.scan_folder): what a list of image names is resolved against."""
    train = root / "train"
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    return [(c, p.name) for c in classes for p in _images(train / c)]


@functools.lru_cache(maxsize=64)
def count_images(root: str | None, split: str) -> int | None:
    """Images under root/split/<class>/ (None when the folder is not there)."""
    if not root or not (Path(root) / split).is_dir():
        return None
    return sum(1 for p in (Path(root) / split).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
