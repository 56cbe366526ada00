"""What the planner needs to know about data sets without importing torch."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "synthetic": 10}
STL10_UNLABELED = 100_000


def train_split(name: str, method: str) -> str:
    """The split a method trains on: SimCLR pretrains on STL-10's train+unlabeled (the
    paper's and every peer's choice); everything else on train."""
    return "train+unlabeled" if name == "stl10" and method == "simclr" else "train"


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


@functools.lru_cache(maxsize=64)
def count_images(root: str | None, split: str) -> int | None:
    """Images under root/split/<class>/ (None when the folder is not there)."""
    if not root or not (Path(root) / split).is_dir():
        return None
    return sum(1 for p in (Path(root) / split).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
