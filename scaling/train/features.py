"""Features of a frozen encoder kept on the host: evaluation that fits at any scale.

ImageNet's training set through a ResNet-50 4x is 1.28M x 8192 values, 42 GB per copy in
fp32: more than an 80 GB accelerator can hold beside the network a few times over. So the
features never all sit on the device. `extract` writes them chunk by chunk to a
`FeatureStore`: one memory-mapped `.npy` file per rank in the run directory's `eval/`
folder (each rank writes only its own share, so no two processes, or nodes, ever write
one file), at the training precision (bf16 runs store bf16, half the bytes), with a
progress file beside it so that an evaluation killed half-way resumes where it stopped.
Readers (`FeatureReader`) hand rows back in chunks, or copy the whole store to the device
when it fits the evaluation's device budget (`DeviceBudget`): the same values either way,
so a result never depends on the budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling.rundir import atomic_write_bytes, read_json
from scaling.train import distributed as dist
from scaling.train.data import shard_range

#: rows a reader moves to the device at once when the store stays on the host
CHUNK_ROWS = 4096
#: test rows whose running kNN top-k are updated together
KNN_TEST_BLOCK = 1024
_NUMPY = {torch.float32: np.float32, torch.bfloat16: np.uint16}  # bf16 as raw 16-bit words

Inputs = Callable[[Tensor], Tensor]  # images at indices -> encoder input on the device


class DeviceBudget:
    """Bytes of features evaluation may keep on the device at once (the rest streams)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = int(limit), 0

    def take(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit in what is left; whether they did."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True


@dataclass(frozen=True)
class FeatureStore:
    """Where the features of `n` images (n x dim) live: `folder/name.part{r}of{W}.npy`,
    rank r holding rows `shard_range(n, r, W)`. `token` names the network they come from
    (a store of another network, e.g. after `--force`, is started afresh)."""

    folder: Path
    name: str
    n: int
    dim: int
    dtype: torch.dtype
    token: str

    def _paths(self, rank: int, world: int) -> tuple[Path, Path]:
        stem = f"{self.name}.part{rank}of{world}"
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def _shard(self, rank: int, world: int, mode: str) -> np.memmap:
        start, stop = shard_range(self.n, rank, world)
        path = self._paths(rank, world)[0]
        shape = (stop - start, self.dim)
        if mode == "r+" and not path.exists():
            mode = "w+"
        return np.lib.format.open_memmap(path, mode=mode, dtype=_NUMPY[self.dtype], shape=shape)

    def _meta(self, rows: int) -> dict[str, object]:
        return {
            "rows": rows,
            "n": self.n,
            "dim": self.dim,
            "dtype": str(self.dtype),
            "token": self.token,
        }

    def rows_done(self, rank: int, world: int) -> int:
        """Rows of this rank's share already written by this network (0: none)."""
        meta = read_json(self._paths(rank, world)[1]) or {}
        if {k: v for k, v in meta.items() if k != "rows"} != {
            k: v for k, v in self._meta(0).items() if k != "rows"
        }:
            return 0
        return int(meta.get("rows", 0))

    def write_share(
        self, encoder: nn.Module, inputs: Inputs, batch: int, device: torch.device
    ) -> None:
        """Extract this rank's share (resuming after what is done), then wait for every rank."""
        rank, world = dist.rank(), dist.world_size()
        start, stop = shard_range(self.n, rank, world)
        done = self.rows_done(rank, world)
        if done < stop - start:
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = self._shard(rank, world, "r+" if done else "w+")
            meta_path = self._paths(rank, world)[1]
            for a in range(start + done, stop, batch):
                idx = torch.arange(a, min(stop, a + batch))
                with torch.no_grad():
                    out = encoder(inputs(idx)).to(self.dtype)
                shard[a - start : a - start + len(idx)] = _as_numpy(out.cpu())
                shard.flush()  # the rows are on disk before the progress file says so
                meta = json.dumps(self._meta(a - start + len(idx))).encode()
                atomic_write_bytes(meta_path, meta)
            del shard
        dist.barrier()

    def reader(self) -> FeatureReader:
        """The whole store, every rank's share (read-only memory maps)."""
        world = dist.world_size()
        parts = [
            _as_torch(np.load(self._paths(r, world)[0], mmap_mode="c"), self.dtype)
            for r in range(world)
            if _share(self.n, r, world)
        ]
        return FeatureReader(parts, self.n, self.dim, self.dtype)


def _share(n: int, rank: int, world: int) -> int:
    start, stop = shard_range(n, rank, world)
    return stop - start


def _as_numpy(t: Tensor) -> np.ndarray:
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _as_torch(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    t = torch.from_numpy(a)  # shares the memory map: nothing is read until used
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class FeatureReader:
    """Rows of a finished store, on the host (memory-mapped) or, once `to_device` found
    room in the budget, on the device; either way `rows` and `chunks` give float32 rows
    on the device."""

    def __init__(self, parts: list[Tensor], n: int, dim: int, dtype: torch.dtype) -> None:
        self.parts, self.n, self.dim, self.dtype = parts, n, dim, dtype
        self.starts = np.cumsum([0, *(len(p) for p in parts)])
        self.device_copy: Tensor | None = None

    @classmethod
    def of(cls, rows: Tensor) -> FeatureReader:
        """A reader of features already on their device (a small set's)."""
        reader = cls([rows], rows.shape[0], rows.shape[1], rows.dtype)
        reader.device_copy = rows
        return reader

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * self.dtype.itemsize

    def to_device(self, device: torch.device, budget: DeviceBudget) -> bool:
        """Copy the whole store to the device if the budget has room; whether it did."""
        if self.device_copy is None and budget.take(self.nbytes):
            self.device_copy = torch.cat([p.to(device, copy=True) for p in self.parts])
        return self.device_copy is not None

    def rows(self, idx: Tensor, device: torch.device) -> Tensor:
        """float32 (len(idx), dim) rows at `idx`, on `device`."""
        if self.device_copy is not None:
            return self.device_copy[idx.to(device)].float()
        idx = idx.cpu()
        out = torch.empty(len(idx), self.dim, dtype=self.dtype)
        part = np.searchsorted(self.starts, idx.numpy(), side="right") - 1
        for p in np.unique(part):
            mask = torch.from_numpy(part == p)
            out[mask] = self.parts[p][idx[mask] - int(self.starts[p])]
        return out.to(device).float()

    def chunks(self, device: torch.device, size: int = CHUNK_ROWS) -> Iterator[tuple[int, Tensor]]:
        """(first row, float32 rows on `device`) in order, `size` rows at a time."""
        for a in range(0, self.n, size):
            yield a, self.rows(torch.arange(a, min(self.n, a + size)), device)

    def moments(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of every feature (float64 sums, chunk by chunk)."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=device)
        squares = torch.zeros_like(total)
        for _, x in self.chunks(device):
            total += x.double().sum(0)
            squares += x.double().square().sum(0)
        mean = total / self.n
        var = (squares - self.n * mean.square()) / max(1, self.n - 1)
        return mean.float(), var.clamp_min(0).sqrt().float()


@torch.no_grad()
def knn_top1(
    train: FeatureReader,
    train_y: Tensor,
    test: FeatureReader,
    test_y: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    device: torch.device,
    budget: DeviceBudget,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018): votes exp(sim / temperature)
    of the k most similar training images. The training features stream past the test
    rows chunk by chunk, each test row keeping its running top k: as many test rows at a
    time as the budget holds (all of them, usually: one pass over the training store)."""
    k = min(k, train.n)
    train_y, test_y = train_y.to(device), test_y.to(device)
    per_row = test.dim * 4 + k * 12  # a float32 feature row, k sims and k labels
    rows = max(
        KNN_TEST_BLOCK, (budget.limit - budget.used) // per_row // KNN_TEST_BLOCK * KNN_TEST_BLOCK
    )
    correct = 0
    for first in range(0, test.n, rows):
        blocks = range(first, min(test.n, first + rows), KNN_TEST_BLOCK)
        tests = [
            F.normalize(test.rows(torch.arange(a, min(test.n, a + KNN_TEST_BLOCK)), device), dim=1)
            for a in blocks
        ]
        best = [torch.full((len(t), 0), -torch.inf, device=device) for t in tests]
        labels = [torch.zeros((len(t), 0), dtype=torch.long, device=device) for t in tests]
        for start, chunk in train.chunks(device):
            chunk = F.normalize(chunk, dim=1)
            chunk_y = train_y[start : start + len(chunk)]
            for b, t in enumerate(tests):
                best[b], labels[b] = _merge_top(best[b], labels[b], t @ chunk.T, chunk_y, k)
        for a, t, top, ys in zip(blocks, tests, best, labels, strict=True):
            votes = torch.zeros(len(t), num_classes, device=device)
            votes.scatter_add_(1, ys, (top / temperature).exp())
            correct += int((votes.argmax(1) == test_y[a : a + len(t)]).sum())
    return correct / max(1, test.n)


def _merge_top(
    best: Tensor, labels: Tensor, sims: Tensor, sims_y: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The k highest of `best` and the rows of `sims` (similarities to a chunk of
    training images whose labels are `sims_y`), with their labels."""
    top, pick = sims.topk(min(k, sims.shape[1]), dim=1)
    merged = torch.cat([best, top], dim=1)
    keep = merged.topk(min(k, merged.shape[1]), dim=1)
    return keep.values, torch.cat([labels, sims_y[pick]], dim=1).gather(1, keep.indices)
