"""Image sets as uint8 tensors, and the seeded batch order that makes runs resumable.

Every data set loads (through `scaling.train.readers`) to an `ImageSet`: uint8 NCHW RGB
images already at the run's image size plus int64 labels (-1 = unlabelled), small
enough to live in memory or on the training device, where `scaling.train.augment` turns
them into views. Image folders load as an `ImageFolderSet`
(`scaling.train.imagefolder`) that decodes on the CPU: evaluation input from `batch`,
training crops of the original images from `crops`. Both answer `batch(indices)`,
which is all `batches` needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scaling.errors import ScalingError
from scaling.plan.data_info import held_out
from scaling.plan.layout import epoch_steps, labelled_recipe
from scaling.sweep.labellist import listed_names, resolve_names
from scaling.train.augment import SimCLRAugment
from scaling.train.imagefolder import ImageFolderSet

IMAGEFOLDER_CACHE_BYTES = 8 << 30  # keep an image folder's files in memory up to this size


@dataclass
class ImageSet:
    """A whole split in memory: uint8 (N, 3, S, S) images and int64 (N,) labels."""

    images: Tensor
    labels: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        if self.images.dtype != torch.uint8 or len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {shape}")
        if self.labels.shape != shape[:1]:
            raise ValueError(f"{shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.num_classes)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels at `indices`, on the device the set lives on."""
        idx = indices.to(self.images.device)
        return self.images[idx], self.labels[idx]


class Subset:
    """The images of `data` at `indices`, in that order, read on demand (an image folder's
    rows: `batch` and `crops` ask the folder for the underlying images)."""

    def __init__(self, data: ImageSet | ImageFolderSet | Subset, indices: Tensor) -> None:
        self.data, self.indices = data, indices.cpu()
        self.labels = data.labels[self.indices.to(data.labels.device)]
        self.num_classes = data.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def decodes_on_cpu(self) -> bool:
        return bool(getattr(self.data, "decodes_on_cpu", False))

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    @property
    def decoded(self) -> int:  # an image folder's count of decoded images (tests)
        return int(getattr(self.data, "decoded", 0))

    def to(self, device: torch.device | str) -> Subset:
        return Subset(self.data.to(device), self.indices)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.data.batch(self.indices[indices.cpu()])

    def crops(self, indices: Tensor, draws: list[Tensor], aug: SimCLRAugment) -> Tensor:
        return self.data.crops(self.indices[indices.cpu()], draws, aug)  # type: ignore[union-attr]


DataSet = ImageSet | ImageFolderSet | Subset


def subset(data: DataSet, indices: Tensor) -> DataSet:
    """The images of `data` at `indices`: copied when in memory, else a `Subset`."""
    if isinstance(data, ImageSet):
        idx = indices.to(data.images.device)
        return ImageSet(data.images[idx], data.labels[idx], data.num_classes)
    return Subset(data, indices)


VALIDATION_SEED = 0  # the same held-out images for every run, seed, recipe and method


def validation_rows(labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """(kept, held-out) row indices of a training split: a fixed random share `fraction`
    of its labelled rows (label >= 0; `plan.data_info.held_out` of them) is held out, the
    rest (unlabelled rows included) kept. Every method of a sweep holds out the same
    images: the labelled rows come first, in the same order, in every split of a data set."""
    labels = labels.cpu()
    labelled = (labels >= 0).nonzero().squeeze(1)
    order = torch.randperm(len(labelled), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held = labelled[order[: held_out(len(labelled), fraction)]].sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().squeeze(1), held


SUBSET_TAG = 0x1AB  # the label subsets' generator stream, apart from every other draw


def labelled_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Row indices (sorted) of the class-balanced share `fraction` of the labelled rows of
    `labels` (label >= 0): round(fraction x n_c) of each class's n_c rows, at least one,
    so each class keeps its share (the official ImageNet 1% and 10% lists: 12,811 and
    128,116 images). Drawn from `seed` alone (one permutation per class, the same for every
    method, rank and fraction, so a smaller fraction's subset lies inside a larger one's).
    Give it the rows a run may train on (after `validation_rows`): never the held-out
    share, never the test split."""
    labels = labels.cpu()
    if fraction >= 1.0:
        return (labels >= 0).nonzero().squeeze(1)
    state = np.random.SeedSequence([SUBSET_TAG, int(seed)]).generate_state(1, dtype=np.uint64)
    gen = torch.Generator().manual_seed(int(state[0]))
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        rows = (labels == c).nonzero().squeeze(1)
        order = torch.randperm(len(rows), generator=gen)
        k = min(len(rows), max(1, round(fraction * len(rows))))
        picked.append(rows[order[:k]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def _folder_names(data: DataSet) -> list[tuple[str, str]]:
    """(class folder, file name) of each row of an image folder (or its subset)."""
    if isinstance(data, Subset):
        inner = _folder_names(data.data)
        return [inner[i] for i in data.indices.tolist()]
    if not isinstance(data, ImageFolderSet):
        raise ScalingError("a list of image names needs an image folder (dataset imagefolder)")
    return [(p.parent.name, p.name) for p in data.paths]


def label_rows(
    train: DataSet, val: DataSet | None, fraction: float, seed: int, listed: Any = None
) -> tuple[Tensor, list[str]]:
    """(rows of `train` a run's labels are, listed names dropped as held out): the rows a
    list of image names (`sweep.labellist`, read and checked against its sha256) names,
    else `labelled_subset`. A listed image in the held-out validation share `val` is
    dropped (the same for every method and seed: that share is fixed); one the folder
    lacks is a one-line SpecError naming the sweep file and key."""
    if listed is None:
        return labelled_subset(train.labels, fraction, seed), []
    kept = _folder_names(train)
    held = _folder_names(val) if val is not None and len(val) else []
    at = resolve_names(listed_names(listed), kept + held, listed, "the image folder's train/")
    rows = sorted({i for i in at.values() if i < len(kept)})
    dropped = [name for name, i in at.items() if i >= len(kept)]
    return torch.tensor(rows, dtype=torch.long), dropped


def listed_note(listed: Any, images: int, dropped: list[str], say: bool) -> dict[str, Any]:
    """What a run's log (when `say`) and result say of a list of image names: the images
    it trains or fits on, and the listed ones dropped as held out."""
    if say:
        print(
            f"labels: {images} images named by {listed['path']} (sha256 "
            f"{listed['sha256'][:12]}, {listed.get('images', '?')} names); {len(dropped)} "
            "named images are in the held-out validation share and are dropped"
            + (f" (the first: {dropped[0]})" if dropped else ""),
            flush=True,
        )
    first = {"listed_dropped_first": dropped[0]} if dropped else {}
    return {"listed_images": images, "listed_dropped": len(dropped), **first}


def labelled_training(
    train: DataSet, val: DataSet, spec: Any, config: dict[str, Any], say: bool
) -> tuple[DataSet, dict[str, Any], dict[str, Any]]:
    """(training images, recipe, what the result says of a list) of a run trained on
    labels: on every label, as given; on a label fraction, the class-balanced fraction
    drawn from the seed (the images every other method's evaluation at this fraction fits
    on) or the images a list names (`label_rows`), repeated to fill a batch and as long
    in steps as on every label (`plan.layout.labelled_recipe`)."""
    if spec.label_fraction >= 1.0 and spec.label_list is None:
        return train, config, {}
    rows, dropped = label_rows(train, val, spec.label_fraction, spec.seed, spec.label_list)
    listed = {}
    if spec.label_list is not None:
        listed = listed_note(spec.label_list, len(rows), dropped, say)
    config, repeats = labelled_recipe(config, len(train), len(rows))
    return subset(train, rows.repeat(repeats)), config, listed


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for (every loader gets all of it and uses what applies)."""

    root: Path | None
    image_size: int
    split: str
    seed: int = 0  # synthetic only
    num_images: int | None = None  # synthetic only
    max_cache_bytes: int = IMAGEFOLDER_CACHE_BYTES  # imagefolder only
    workers: int | None = None  # imagefolder only: decode threads (None: up to 8 cores)


def steps_per_epoch(num_images: int, batch_size: int, drop_last: bool = True) -> int:
    return num_images // batch_size if drop_last else math.ceil(num_images / batch_size)


def epoch_permutation(num_images: int, seed: int, epoch: int) -> Tensor:
    """The image order of one epoch, a function of (seed, epoch) alone (CPU generator)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(int(state)))


def stream_batches(num_images: int, batch_size: int, seed: int, steps: range) -> Iterator[Tensor]:
    """The image indices of each global step in `steps`: batches cut in order from one
    stream of images, a fresh permutation per epoch (`epoch_permutation`), none dropped,
    so a batch may span two epochs (the official code's shuffled `dataset.repeat()`)."""
    perms: dict[int, Tensor] = {}
    for step in steps:
        a, b = step * batch_size, (step + 1) * batch_size
        first, last = a // num_images, (b - 1) // num_images
        for e in [e for e in perms if e < first]:
            del perms[e]
        parts = []
        for e in range(first, last + 1):
            if e not in perms:
                perms[e] = epoch_permutation(num_images, seed, e)
            lo, hi = max(a, e * num_images), min(b, (e + 1) * num_images)
            parts.append(perms[e][lo - e * num_images : hi - e * num_images])
        yield parts[0] if len(parts) == 1 else torch.cat(parts)


def training_steps(
    num_images: int, batch_size: int, seed: int, epochs: int, epoch: int, start_step: int
) -> Iterator[Tensor]:
    """The image indices of the training steps of `epoch`, from its `start_step`-th on:
    N x E // B + 1 steps over a run (`plan.layout.epoch_steps`)."""
    steps = epoch_steps(num_images, batch_size, epochs, epoch)
    return stream_batches(num_images, batch_size, seed, steps[start_step:])


def batches(
    data: DataSet,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_step: int = 0,
    drop_last: bool = True,
    device: torch.device | str = "cpu",
    epochs: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (uint8 images, labels) on `device` for one epoch, from step `start_step` on.

    With `epochs` (training), the epoch's steps of the official count (`training_steps`):
    batches cut from one stream of images, a batch may span two epochs; without, one
    permutation of the images in batches (drop_last: the partial one dropped).
    A resumed run at (epoch, step) sees exactly the batches it would have seen: the order
    depends on (seed, epoch) only, and skipped steps touch no data. A set decoded on the
    CPU (an image folder: evaluation input) decodes the next batch in the background
    while the caller works on this one.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if epochs is not None:
        chunks: Iterator[Tensor] = training_steps(
            len(data), batch_size, seed, epochs, epoch, start_step
        )
    else:
        perm = epoch_permutation(len(data), seed, epoch)
        steps = range(start_step, steps_per_epoch(len(data), batch_size, drop_last))
        chunks = (perm[s * batch_size : (s + 1) * batch_size] for s in steps)
    if not getattr(data, "decodes_on_cpu", False):
        yield from (_moved(data.batch(idx), device) for idx in chunks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ahead:
        pending = None  # decode batch k + 1 while the caller works on batch k
        for idx in chunks:
            current, pending = pending, ahead.submit(data.batch, idx)
            if current is not None:
                yield _moved(current.result(), device)
        if pending is not None:
            yield _moved(pending.result(), device)


def _moved(batch: tuple[Tensor, Tensor], device: torch.device | str) -> tuple[Tensor, Tensor]:
    images, labels = batch
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n items, ceil(n / world) each."""
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per)


# -- shared helpers -------------------------------------------------------------------------


def resize_uint8(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 NCHW images, chunk by chunk."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for a in range(0, images.shape[0], chunk):
        x = images[a : a + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out[a : a + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out
