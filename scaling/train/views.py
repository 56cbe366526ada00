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

import torch
from torch import Tensor

from scaling.train.augment import AugmentParams, SimCLRAugment
from scaling.train.data import DataSet, batches, epoch_permutation, steps_per_epoch


@dataclass(frozen=True)
class StepViews:
    views: list[Tensor]  # one float32 (n_local, 3, S, S) tensor per view, on the device
    labels: Tensor  # (n_local,) labels of this rank's rows, on the device
    rng_state: Tensor  # the augmentation generator's state after this step's draws


def local_views(
    aug: SimCLRAugment, images: Tensor, generator: torch.Generator, rows: slice, views: int
) -> list[Tensor]:
    """Draw `views` parameter sets for the global batch, apply them to this rank's rows."""
    n, _, h, w = images.shape
    drawn = [aug.sample_params(n, h, w, generator) for _ in range(views)]
    local = images[rows]
    return [aug.apply(local, p.slice(rows.start, rows.stop)) for p in drawn]


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
) -> Iterator[StepViews]:
    """One epoch of training views from step `start_step` on (drop_last batches)."""
    if not getattr(data, "decodes_on_cpu", False):
        for images, labels in batches(
            data, batch_size, seed=seed, epoch=epoch, start_step=start_step, device=device
        ):
            local = local_views(aug, images, generator, rows, views)
            yield StepViews(local, labels[rows], generator.get_state())
        return
    yield from _folder_views(
        data, aug, generator, batch_size, seed, epoch, rows, views, start_step, device
    )


def _folder_views(
    data: DataSet,
    aug: SimCLRAugment,
    generator: torch.Generator,
    batch_size: int,
    seed: int,
    epoch: int,
    rows: slice,
    views: int,
    start_step: int,
    device: torch.device | str,
) -> Iterator[StepViews]:
    perm = epoch_permutation(len(data), seed, epoch)
    steps = range(start_step, steps_per_epoch(len(data), batch_size, True))
    Pending = tuple[list[AugmentParams], Tensor, Tensor, Future[Tensor]]

    def launch(step: int, ahead: ThreadPoolExecutor) -> Pending:
        idx = perm[step * batch_size : (step + 1) * batch_size]
        drawn = [aug.sample_params(len(idx), None, None, generator) for _ in range(views)]
        state = generator.get_state()  # before the next step draws
        local = [p.slice(rows.start, rows.stop) for p in drawn]
        draws = [p.crop_draws.cpu() for p in local]  # host sync on CUDA: 22 or 400 floats an image
        crops = ahead.submit(data.crops, idx[rows], draws, aug)  # type: ignore[union-attr]
        return local, data.labels[idx[rows]], state, crops

    def finish(p: Pending) -> StepViews:
        params, labels, state, crops = p
        cropped = crops.result().to(device, non_blocking=True)
        out = [aug.apply(cropped[v], params[v]) for v in range(views)]
        return StepViews(out, labels.to(device, non_blocking=True), state)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ahead:
        pending: Pending | None = None  # batch k + 1 decodes while the caller trains on k
        for step in steps:
            current, pending = pending, launch(step, ahead)
            if current is not None:
                yield finish(current)
        if pending is not None:
            yield finish(pending)
