"""How one run is laid out on hardware, and the quantities derived from spec + layout.

`derive` is the single pure function that turns a run spec and its layout into the
numbers training uses (scaled LR, steps, warmup); the trainer prints and logs them at
start, the planner shows them, and nothing else recomputes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from scaling.plan.schedule import lr_for_batch

# Training images per epoch, for data sets whose size is fixed (imagefolder: counted).
TRAIN_SIZES = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}
TEST_SIZES = {"digits": 360, "cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000}
SYNTHETIC_DEFAULT_SIZE = 1024


@dataclass(frozen=True)
class Layout:
    """micro_batch images per rank per micro-step; micro_batch * accum_steps * gpus == batch."""

    micro_batch: int
    accum_steps: int
    gpus: int = 1
    nodes: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(**{k: int(data[k]) for k in ("micro_batch", "accum_steps", "gpus", "nodes")})

    @classmethod
    def single(cls, batch_size: int) -> Layout:
        return cls(micro_batch=batch_size, accum_steps=1, gpus=1, nodes=1)


def train_size(dataset: Mapping[str, Any]) -> int | None:
    """Images in one training epoch, or None when nothing tells (an unreachable folder)."""
    name = dataset["name"]
    if name == "synthetic":
        return int(dataset.get("size") or SYNTHETIC_DEFAULT_SIZE)
    if name == "imagefolder":
        if dataset.get("size"):
            return int(dataset["size"])
        from scaling.plan.data_info import count_images

        return count_images(dataset.get("root"), "train")
    return TRAIN_SIZES.get(name)


def test_size(dataset: Mapping[str, Any]) -> int | None:
    if dataset["name"] == "synthetic":
        return max(1, (train_size(dataset) or 0) // 4)
    if dataset["name"] == "imagefolder":
        from scaling.plan.data_info import count_images

        return count_images(dataset.get("root"), "val") or count_images(dataset.get("root"), "test")
    return TEST_SIZES.get(dataset["name"])


@dataclass(frozen=True)
class Derived:
    effective_batch: int
    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    per_rank_batch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive(config: Mapping[str, Any], layout: Layout, n_train: int) -> Derived:
    """LR from the rule on the EFFECTIVE batch; steps counted in optimizer steps."""
    batch = int(config["batch_size"])
    if layout.micro_batch * layout.accum_steps * layout.gpus != batch:
        raise ValueError(f"layout {layout} does not multiply to the batch {batch}")
    steps_per_epoch = max(1, n_train // batch)  # the last partial batch is dropped
    total = steps_per_epoch * int(config["epochs"])
    warmup = min(total, round(float(config["warmup_epochs"]) * steps_per_epoch))
    return Derived(
        effective_batch=batch,
        lr=lr_for_batch(config["lr_rule"], batch, config.get("base_lr")),
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        per_rank_batch=batch // layout.gpus,
    )
