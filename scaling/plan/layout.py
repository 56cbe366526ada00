"""How one run is laid out on hardware, and the quantities derived from spec + layout.

`derive` is the single pure function that turns a run spec and its layout into the
numbers training uses (scaled LR, steps, warmup); the trainer prints and logs them at
start, the planner shows them, and nothing else recomputes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from scaling.plan.data_info import STL10_UNLABELED, count_images, held_out, train_split
from scaling.plan.schedule import lr_for_batch
from scaling.sweep.methods import get_method
from scaling.sweep.spec import VALIDATION_FRACTION

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


def bn_grouping_of(method: str, bn_batch: int, batch: int) -> str:
    """How `method`'s step groups images into batch-norm batches when BN sees `bn_batch`
    images per view of a `batch` (scaling.sweep.methods.BNGrouping)."""
    return str(get_method(method).bn_grouping(whole_batch=bn_batch >= batch))


@dataclass(frozen=True)
class Layout:
    """micro_batch images per rank per micro-step; micro_batch * accum_steps * gpus == batch.

    bn_batch: the images per view batch norm normalises over: one micro-batch on one rank,
    times the ranks when SyncBatchNorm joins them (CUDA). 0: micro_batch.
    bn_grouping: which images share a BN batch (methods.BNGrouping): when one BN batch
    holds the whole batch, both views together (2 x bn_batch images, the official code's
    grouping); otherwise one view per forward, the second view's rows shuffled. "": not
    resolved yet (`with_grouping`).
    precision: "bf16" (autocast, loss in fp32), "fp32", or "auto" (bf16 on CUDA, fp32
    elsewhere; resolved by the trainer on its device).
    """

    micro_batch: int
    accum_steps: int
    gpus: int = 1
    nodes: int = 1
    precision: str = "auto"
    bn_batch: int = 0
    bn_grouping: str = ""

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
        return cls(
            **sizes,
            precision=str(data.get("precision", "auto")),
            bn_batch=bn_batch,
            bn_grouping=str(data.get("bn_grouping") or ""),
        )

    def resolved_precision(self, device_type: str) -> str:
        return resolve_precision(self.precision, device_type)

    def for_device(self, device_type: str) -> Layout:
        """This layout with its BN batch on `device_type` (SyncBatchNorm on CUDA only)."""
        return replace(self, bn_batch=bn_batch_of(self.micro_batch, self.gpus, device_type))

    def with_grouping(self, method: str) -> Layout:
        """This layout with `method`'s batch-norm grouping for its BN batch."""
        batch = self.micro_batch * self.accum_steps * self.gpus
        return replace(self, bn_grouping=bn_grouping_of(method, self.bn_batch, batch))

    @classmethod
    def single(cls, batch_size: int) -> Layout:
        return cls(micro_batch=batch_size, accum_steps=1, gpus=1, nodes=1)


def labelled_size(dataset: Mapping[str, Any]) -> int | None:
    """Labelled training images of the data set, held-out share included (None: nothing
    tells, e.g. an unreachable folder)."""
    name = dataset["name"]
    if name == "synthetic":
        return int(dataset.get("size") or SYNTHETIC_DEFAULT_SIZE)
    if name == "imagefolder":
        if dataset.get("size"):
            return int(dataset["size"])
        return count_images(dataset.get("root"), "train")
    return TRAIN_SIZES.get(name)


def validation_size(dataset: Mapping[str, Any]) -> int:
    """Labelled training images held out for validation (DatasetConfig.validation)."""
    n = labelled_size(dataset)
    return held_out(n, validation_fraction(dataset)) if n else 0


def validation_fraction(dataset: Mapping[str, Any]) -> float:
    return float(dataset.get("validation", VALIDATION_FRACTION))


def train_size(dataset: Mapping[str, Any], method: str | None = None) -> int | None:
    """Images in one training epoch of `method` (None: the labelled images it trains or
    fits a probe on), the held-out validation share excluded, or None when nothing tells
    (an unreachable folder). SimCLR on STL-10 pretrains on train+unlabeled: 104,500
    images at the default share (4,500 labelled + 100,000), not 4,500."""
    n = labelled_size(dataset)
    if n is None:
        return None
    n -= validation_size(dataset)
    if method is not None and train_split(dataset["name"], method) == "train+unlabeled":
        n += STL10_UNLABELED
    return n


def test_size(dataset: Mapping[str, Any]) -> int | None:
    if dataset["name"] == "synthetic":
        return max(1, (labelled_size(dataset) or 0) // 4)
    if dataset["name"] == "imagefolder":
        return count_images(dataset.get("root"), "val") or count_images(dataset.get("root"), "test")
    return TEST_SIZES.get(dataset["name"])


def default_warmup_epochs(method: str, epochs: int) -> float:
    """min(the method's warmup cap, 10% of the run): SimCLR 10 epochs, supervised 5."""
    return min(get_method(method).warmup_cap_epochs, WARMUP_FRACTION * epochs)


WARMUP_FRACTION = 0.1


def total_steps(n_train: int, epochs: int, batch: int) -> int:
    """Optimizer steps of a run, as the official code counts them (`get_train_steps` in
    model_util.py): `num_examples * train_epochs // train_batch_size + 1`. Batches are
    cut from one stream of images (a fresh permutation per epoch, `epoch_steps`), so no
    image is dropped at an epoch's end and a step may span two epochs."""
    return n_train * epochs // batch + 1


def epoch_steps(n_train: int, batch: int, epochs: int, epoch: int) -> range:
    """The global steps that make up `epoch`: those whose batch starts in its permutation
    of the images (steps ceil(e N / B) up to ceil((e + 1) N / B)); the last epoch also
    holds the steps that start after it (the official count's final `+ 1`)."""
    start = -(-epoch * n_train // batch)
    if epoch >= epochs - 1:
        return range(start, total_steps(n_train, epochs, batch))
    return range(start, -(-(epoch + 1) * n_train // batch))


@dataclass(frozen=True)
class Derived:
    effective_batch: int
    lr: float
    steps_per_epoch: float  # images per epoch / batch (steps may span two epochs)
    total_steps: int
    warmup_epochs: float  # as given, or the method's default (`default_warmup_epochs`)
    warmup_steps: int
    per_rank_batch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive(config: Mapping[str, Any], layout: Layout, n_train: int, method: str) -> Derived:
    """LR from the rule on the EFFECTIVE batch; steps counted in optimizer steps, as the
    official code (model_util.py): `N * E // B + 1` steps, warmup over
    `int(round(warmup_epochs * N // B))` steps from LR 0, then cosine to 0.

    Warmup: `warmup_epochs`, or when null the method's default, the paper's 10 epochs
    (5 for supervised) or 10% of the run, whichever is shorter, so that a short run
    still decays (a 10-epoch run with 10 warmup epochs would never leave its peak).
    """
    batch = int(config["batch_size"])
    if layout.micro_batch * layout.accum_steps * layout.gpus != batch:
        raise ValueError(f"layout {layout} does not multiply to the batch {batch}")
    epochs = int(config["epochs"])
    total = total_steps(n_train, epochs, batch)
    warmup_epochs = config.get("warmup_epochs")
    if warmup_epochs is None:
        warmup_epochs = default_warmup_epochs(method, epochs)
    warmup = min(total, int(float(warmup_epochs) * n_train // batch))
    return Derived(
        effective_batch=batch,
        lr=lr_for_batch(config["lr_rule"], batch, config.get("base_lr")),
        steps_per_epoch=n_train / batch,
        total_steps=total,
        warmup_epochs=float(warmup_epochs),
        warmup_steps=warmup,
        per_rank_batch=batch // layout.gpus,
    )
