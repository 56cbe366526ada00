"""The training stream: each step's augmented views of THIS rank's rows of the global batch.

The augmentation parameters are always drawn for the whole global batch, from one
generator, in step order, on every rank: W ranks see exactly the views one process
would (rows r x B/W .. (r+1) x B/W of them each). What differs is where the pixels come
from:

* in-memory sets (digits, CIFAR, STL-10) hold the global batch at `image_size` on the
  device; this rank's rows are cropped and augmented there (`augment.apply`);
* an image folder decodes only this rank's rows, cropping every view's box from the
  original image (`ImageFolderSet.crops`), in a background thread one step ahead; the
  device then flips, colours, greys and blurs them in a batch.

Each step carries the generator state right after its draws (`rng_state`), which is
what a mid-epoch checkpoint must save: the folder stream has already drawn the next step.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scaling.train.augment import AugmentParams, SimCLRAugment
from scaling.train.data import DataSet, batches, training_steps


@dataclass(frozen=True)
class StepViews:
    views: list[Tensor]  # one float32 (n_local, 3, S, S) tensor per view, on the device
    labels: Tensor  # (n_local,) labels of this rank's rows, on the device
    rng_state: Tensor  # the augmentation generator's state after this step's draws
    # shuffle-BN: the permutation of the global batch whose rows `rows` the second view
    # holds (views[1][i] is a view of image shuffle[rows][i]); None: aligned rows
    shuffle: Tensor | None = None


def _second_view_rows(
    n: int, rows: slice, generator: torch.Generator, shuffle: bool
) -> tuple[Tensor | slice, Tensor | None]:
    """The rows of the global batch this rank's second view holds, and the permutation:
    with `shuffle`, one permutation of the n rows per step from the augmentation
    generator (so identical on every rank, and replayed on resume), else `rows`."""
    if not shuffle:
        return rows, None
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return perm[rows], perm


def local_views(
    aug: SimCLRAugment,
    images: Tensor,
    generator: torch.Generator,
    rows: slice,
    views: int,
    shuffle: bool = False,
) -> tuple[list[Tensor], Tensor | None]:
    """Draw `views` parameter sets for the global batch and apply them to this rank's
    rows (the second view to its shuffled rows with `shuffle`); the permutation or None."""
    n, _, h, w = images.shape
    drawn = [aug.sample_params(n, h, w, generator) for _ in range(views)]
    second, perm = _second_view_rows(n, rows, generator, shuffle and views > 1)
    picks = [rows, *[second] * (views - 1)]
    return [aug.apply(images[r], p.rows(r)) for p, r in zip(drawn, picks, strict=True)], perm


def train_views(
    data: DataSet,
    aug: SimCLRAugment,
    generator: torch.Generator,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    rows: slice,
    views: int,
    start_step: int = 0,
    device: torch.device | str = "cpu",
    epochs: int = 1,
    shuffle: bool = False,
) -> Iterator[StepViews]:
    """One epoch of a run of `epochs`: its training views from step `start_step` on
    (the official step count, `data.training_steps`); with `shuffle`, the second view of
    a shuffled copy of the batch (`StepViews.shuffle`: shuffle-BN)."""
    if not getattr(data, "decodes_on_cpu", False):
        for images, labels in batches(
            data,
            batch_size,
            seed=seed,
            epoch=epoch,
            start_step=start_step,
            device=device,
            epochs=epochs,
        ):
            local, perm = local_views(aug, images, generator, rows, views, shuffle)
            yield StepViews(local, labels[rows], generator.get_state(), perm)
        return
    steps = training_steps(len(data), batch_size, seed, epochs, epoch, start_step)
    yield from _folder_views(data, aug, generator, steps, rows, views, device, shuffle)


def _crops_per_view(
    data: DataSet, idx: Tensor, picks: list[Any], draws: list[Tensor], aug: SimCLRAugment
) -> Tensor:
    """(views, n, 3, S, S) crops when the views hold different rows of the batch."""
    return torch.cat(
        [
            data.crops(idx[r.cpu() if isinstance(r, Tensor) else r], [d], aug)
            for r, d in zip(picks, draws, strict=True)
        ]  # type: ignore[union-attr]
    )


def _folder_views(
    data: DataSet,
    aug: SimCLRAugment,
    generator: torch.Generator,
    steps: Iterator[Tensor],
    rows: slice,
    views: int,
    device: torch.device | str,
    shuffle: bool = False,
) -> Iterator[StepViews]:
    Pending = tuple[list[AugmentParams], Tensor, Tensor, Future[Tensor], Tensor | None]

    def launch(idx: Tensor, ahead: ThreadPoolExecutor) -> Pending:
        drawn = [aug.sample_params(len(idx), None, None, generator) for _ in range(views)]
        second, perm = _second_view_rows(len(idx), rows, generator, shuffle and views > 1)
        state = generator.get_state()  # before the next step draws
        picks = [rows, *[second] * (views - 1)]
        local = [p.rows(r) for p, r in zip(drawn, picks, strict=True)]
        draws = [
            p.crop_draws.cpu() for p in local
        ]  # a host sync on CUDA: 22 or 400 floats an image
        if perm is None:
            crops = ahead.submit(data.crops, idx[rows], draws, aug)  # type: ignore[union-attr]
        else:  # the second view's rows are other images: crops of each view's own
            crops = ahead.submit(_crops_per_view, data, idx, picks, draws, aug)
        return local, data.labels[idx[rows]], state, crops, perm

    def finish(p: Pending) -> StepViews:
        params, labels, state, crops, perm = p
        cropped = crops.result().to(device, non_blocking=True)
        out = [aug.apply(cropped[v], params[v]) for v in range(views)]
        return StepViews(out, labels.to(device, non_blocking=True), state, perm)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ahead:
        pending: Pending | None = None  # batch k + 1 decodes while the caller trains on k
        for idx in steps:
            current, pending = pending, launch(idx, ahead)
            if current is not None:
                yield finish(current)
        if pending is not None:
            yield finish(pending)
