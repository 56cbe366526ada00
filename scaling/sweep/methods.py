"""The method registry: what each training method is, its config and its grid axes.

A new method is a new entry, not a flag. Each entry names the config model whose
fields are that method's own axes, so a supervised baseline is never multiplied by
SimCLR-only axes such as temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from scaling.sweep.config import StrictModel

LrRule = Literal["linear", "sqrt"] | PositiveFloat
#: images the online kNN monitor (EvalConfig.knn_every) scores on: training, test
MONITOR_TRAIN, MONITOR_TEST = 10_000, 2_000


class EvalConfig(StrictModel):
    """Linear evaluation of a frozen encoder (and kNN top-1 as a cheap extra).

    `features` (the fast default) extracts features once without augmentation and fits
    the linear classifier on them; `augmented` is the paper's protocol (crop + flip on
    every epoch, encoder frozen).
    """

    protocol: Literal["features", "augmented"] = "features"
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 0.1
    weight_decay: NonNegativeFloat = 0.0
    knn_k: PositiveInt = 200
    knn_temperature: PositiveFloat = 0.1
    # Online kNN monitor: kNN top-1 of the encoder on a fixed subset (up to 10k training
    # and 2k test images) after every N-th epoch, logged as monitor/knn_top1. 0: off.
    # It never changes training (no RNG draw, BN in eval mode), so it is not in run_id.
    knn_every: NonNegativeInt = 0


class MethodConfig(StrictModel):
    """Fields every method shares. Defaults follow the SimCLR paper (Appendix B)."""

    batch_size: PositiveInt = 256
    epochs: PositiveInt = 100
    lr_rule: LrRule = "linear"
    base_lr: PositiveFloat | None = None  # replaces 0.3 (linear) or 0.075 (sqrt)
    weight_decay: NonNegativeFloat = 1e-6
    # null: the paper's 10 epochs (5 supervised) or 10% of the run, whichever is shorter
    warmup_epochs: NonNegativeFloat | None = None
    optimizer: Literal["lars", "sgd"] = "lars"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    # Smallest area of the random resized crop (paper: 0.08). Tiny images trained for a
    # few epochs (the quickstart's 16 px digits) learn faster with milder crops.
    crop_min_scale: float = Field(0.08, gt=0.0, le=1.0)


class SimCLRConfig(MethodConfig):
    temperature: PositiveFloat = 0.5
    projection_dim: PositiveInt = 128
    color_strength: PositiveFloat = 1.0
    eval: EvalConfig = EvalConfig()


class SupervisedConfig(MethodConfig):
    """The supervised baseline: momentum SGD with the linear scaling rule of Goyal et al.
    (2017), 0.1 x B/256, the standard ResNet recipe. LARS (optimizer: lars) is the
    paper's choice for very large batches and is one line away."""

    epochs: PositiveInt = 90
    optimizer: Literal["lars", "sgd"] = "sgd"
    base_lr: PositiveFloat | None = 0.1
    weight_decay: NonNegativeFloat = 1e-4


@dataclass(frozen=True)
class MethodInfo:
    """A registered method.

    views: images per sample in a step (2 for two-view contrastive methods).
    cached_accumulation: whether accumulation must keep the whole batch's negatives
    (gradient caching, one extra forward) instead of plain gradient accumulation.
    """

    name: str
    config: type[MethodConfig]
    views: int
    cached_accumulation: bool
    description: str
    warmup_cap_epochs: float  # default warmup: min(this, 10% of the run)


METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    if info.name in METHODS:
        raise ValueError(f"method {info.name!r} is already registered")
    METHODS[info.name] = info
    return info


register(
    MethodInfo(
        name="simclr",
        config=SimCLRConfig,
        views=2,
        cached_accumulation=True,
        description="SimCLR pretraining (NT-Xent, LARS), then linear evaluation",
        warmup_cap_epochs=10.0,  # paper B.1 and the official code's warmup_epochs
    )
)
register(
    MethodInfo(
        name="supervised",
        config=SupervisedConfig,
        views=1,
        cached_accumulation=False,
        description="supervised cross-entropy training of the same encoder",
        warmup_cap_epochs=5.0,  # Goyal et al. 2017's gradual warmup
    )
)


def get_method(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None
