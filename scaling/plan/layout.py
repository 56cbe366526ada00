"""How one run is laid out on hardware, and the quantities derived from spec + layout.

`derive` is the single pure function that turns a run spec and its layout into the
numbers training uses (scaled LR, steps, warmup); the trainer prints and logs them at
start, the planner shows them, and nothing else recomputes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from scaling.plan.data_info import STL10_UNLABELED, count_images, train_split
from scaling.plan.schedule import lr_for_batch
from scaling.sweep.methods import get_method

# Training images per epoch, for data sets whose size is fixed (imagefolder: counted).
TRAIN_SIZES = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}
TEST_SIZES = {"digits": 360, "cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000}
SYNTHETIC_DEFAULT_SIZE = 1024


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device_type: str) -> str:
    """auto: bf16 on CUDA, fp32 elsewhere; bf16 and fp32 as they are."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def bn_batch_of(micro_batch: int, gpus: int, device_type: str) -> int:
    """Images per view batch norm normalises over: one micro-batch, times the ranks when
    SyncBatchNorm joins them (the trainer converts on CUDA only)."""
    return micro_batch * (gpus if device_type == "cuda" else 1)


@dataclass(frozen=True)
class Layout:
    """micro_batch images per rank per micro-step; micro_batch * accum_steps * gpus == batch.

    bn_batch: the images batch norm normalises over, per view: one micro-batch of one
    view on one rank (gradient caching and plain_backward never put both views in one
    forward), times the ranks when SyncBatchNorm joins them (CUDA). 0: micro_batch.
    precision: "bf16" (autocast, loss in fp32), "fp32", or "auto" (bf16 on CUDA, fp32
    elsewhere; resolved by the trainer on its device).
    """

    micro_batch: int
    accum_steps: int
    gpus: int = 1
    nodes: int = 1
    precision: str = "auto"
    bn_batch: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.bn_batch <= 0:
            object.__setattr__(self, "bn_batch", self.micro_batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        sizes = {k: int(data[k]) for k in ("micro_batch", "accum_steps", "gpus", "nodes")}
        bn_batch = int(data.get("bn_batch") or 0)
        return cls(**sizes, precision=str(data.get("precision", "auto")), bn_batch=bn_batch)

    def resolved_precision(self, device_type: str) -> str:
        return resolve_precision(self.precision, device_type)

    def for_device(self, device_type: str) -> Layout:
        """This layout with its BN batch on `device_type` (SyncBatchNorm on CUDA only)."""
        return replace(self, bn_batch=bn_batch_of(self.micro_batch, self.gpus, device_type))

    @classmethod
    def single(cls, batch_size: int) -> Layout:
        return cls(micro_batch=batch_size, accum_steps=1, gpus=1, nodes=1)


def train_size(dataset: Mapping[str, Any], method: str | None = None) -> int | None:
    """Images in one training epoch of `method` (None: the labelled training split), or
    None when nothing tells (an unreachable folder). SimCLR on STL-10 pretrains on
    train+unlabeled: 105,000 images, not 5,000."""
    name = dataset["name"]
    if method is not None and train_split(name, method) == "train+unlabeled":
        return TRAIN_SIZES[name] + STL10_UNLABELED
    if name == "synthetic":
        return int(dataset.get("size") or SYNTHETIC_DEFAULT_SIZE)
    if name == "imagefolder":
        if dataset.get("size"):
            return int(dataset["size"])
        return count_images(dataset.get("root"), "train")
    return TRAIN_SIZES.get(name)


def test_size(dataset: Mapping[str, Any]) -> int | None:
    if dataset["name"] == "synthetic":
        return max(1, (train_size(dataset) or 0) // 4)
    if dataset["name"] == "imagefolder":
        return count_images(dataset.get("root"), "val") or count_images(dataset.get("root"), "test")
    return TEST_SIZES.get(dataset["name"])


def default_warmup_epochs(method: str, epochs: int) -> float:
    """min(the method's warmup cap, 10% of the run): SimCLR 10 epochs, supervised 5."""
    return min(get_method(method).warmup_cap_epochs, WARMUP_FRACTION * epochs)


WARMUP_FRACTION = 0.1


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


def derive(config: Mapping[str, Any], layout: Layout, n_train: int, method: str) -> Derived:
    """LR from the rule on the EFFECTIVE batch; steps counted in optimizer steps.

    Warmup: `warmup_epochs`, or when null the method's default, the paper's 10 epochs
    (5 for supervised) or 10% of the run, whichever is shorter, so that a short run
    still decays (a 10-epoch run with 10 warmup epochs would never leave its peak).
    """
    batch = int(config["batch_size"])
    if layout.micro_batch * layout.accum_steps * layout.gpus != batch:
        raise ValueError(f"layout {layout} does not multiply to the batch {batch}")
    steps_per_epoch = max(1, n_train // batch)  # the last partial batch is dropped
    total = steps_per_epoch * int(config["epochs"])
    epochs = config.get("warmup_epochs")
    if epochs is None:
        epochs = default_warmup_epochs(method, int(config["epochs"]))
    warmup = min(total, round(float(epochs) * steps_per_epoch))
    return Derived(
        effective_batch=batch,
        lr=lr_for_batch(config["lr_rule"], batch, config.get("base_lr")),
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        per_rank_batch=batch // layout.gpus,
    )
