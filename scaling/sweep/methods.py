"""The method registry: what each training method is, does and costs.

A method is one registration: its config (whose fields are the method's own grid
axes, so a supervised baseline is never multiplied by SimCLR-only axes such as
temperature) and the components it is made of, each named by an enum: the head on the
encoder, the augmentation, the training objective (one optimizer step), the evaluation,
whether it trains on unlabelled images, and its cost terms (views per image, gradient
caching, evaluation passes). The stages that implement a component keep one table keyed
by its enum (`scaling.models.resnet.HEADS`, `scaling.train.augment.AUGMENTATIONS`,
`scaling.train.steps.STEPS`, `scaling.train.evaluate.EVALUATIONS`); the trainer, the cost
model, the data-split rule and the report ask the registry, and no other module names a
method. A new method built of existing components is one registration here; a new
component is one entry in its stage's table (tests/test_methods.py checks that every
registered method's components are implemented everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from scaling.enums import StrEnum
from scaling.sweep.config import StrictModel

LrRule = Literal["linear", "sqrt"] | PositiveFloat
#: images the online kNN monitor (EvalConfig.knn_every) scores on: training, test
MONITOR_TRAIN, MONITOR_TEST = 10_000, 2_000
#: colour strength s: the hue shift 0.2 s stays within half a turn; contrast and saturation
#: factors from 1 - 0.8 s stay non-negative, which TensorFlow's ops require
MAX_STRENGTH, OFFICIAL_MAX_STRENGTH = 2.5, 1.25


class Head(StrEnum):
    """What sits on the encoder during training."""

    PROJECTION = "projection"  # SimCLR's g(.): Linear-BN-ReLU-Linear-BN (models.resnet)
    CLASSIFIER = "classifier"  # a linear classifier over the data set's classes


class Augmentation(StrEnum):
    """How training views are made from an image."""

    CONTRASTIVE = "contrastive"  # crop, flip, colour jitter, grey, blur (the paper's)
    CROP_FLIP = "crop_flip"  # random resized crop and flip only


class AugmentStyle(StrEnum):
    """Whose semantics the crop and colour distortion follow (a config field, `augment`)."""

    # google-research/simclr's TensorFlow ops: sample_distorted_bounding_box crops
    # resized bicubically, contrast per channel, saturation in HSV (scaling.train.official)
    OFFICIAL = "official"
    # torchvision's RandomResizedCrop (bilinear) and ColorJitter (scaling.train.augment)
    TORCHVISION = "torchvision"


class Objective(StrEnum):
    """What one optimizer step minimises (scaling.train.steps)."""

    NT_XENT = "nt_xent"  # two views per image, the other view the positive
    CROSS_ENTROPY = "cross_entropy"  # labels


class Evaluation(StrEnum):
    """How a trained network is scored (scaling.train.evaluate)."""

    # The encoder frozen: a linear probe (EvalConfig.protocol), kNN top-1, a validation
    # score for recipe selection and the online kNN monitor.
    FROZEN_ENCODER = "frozen_encoder"
    OWN_HEAD = "own_head"  # the trained classifier itself, top-k on the test split


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
    # The crop (and, for SimCLR, colour distortion): the official code's TensorFlow ops,
    # or torchvision's (this tool's semantics before issue 21).
    augment: AugmentStyle = Field(AugmentStyle.OFFICIAL, strict=False)  # YAML gives a str

    @field_validator("batch_size")
    @classmethod
    def _two_per_batch(cls, batch: int) -> int:
        if batch < 2:
            raise ValueError(
                f"must be at least 2: batch norm normalises over the images of a batch and "
                f"cannot train on one (got {batch})"
            )
        return batch


class SimCLRConfig(MethodConfig):
    temperature: PositiveFloat = 0.5
    projection_dim: PositiveInt = 128
    color_strength: PositiveFloat = 1.0
    eval: EvalConfig = EvalConfig()

    @field_validator("color_strength")
    @classmethod
    def _official_strength(cls, value: float, info: ValidationInfo) -> float:
        # tf.image.random_contrast and random_saturation refuse a negative lower bound,
        # 1 - 0.8 s: the official code runs only up to s = 1.25.
        if info.data.get("augment") == AugmentStyle.OFFICIAL and value > OFFICIAL_MAX_STRENGTH:
            raise ValueError(
                f"must be at most {OFFICIAL_MAX_STRENGTH} with augment: official "
                "(TensorFlow refuses a contrast or saturation factor below 0); "
                "augment: torchvision allows up to 2.5"
            )
        if value > MAX_STRENGTH:
            raise ValueError(f"must be at most {MAX_STRENGTH} (a hue shift of 0.2 s turns)")
        return value


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
    """A registered method: its config and the components it is made of.

    views: images per sample in a step (2 for two-view contrastive methods).
    cached_accumulation: whether accumulation must keep the whole batch's negatives
    (gradient caching, one extra forward) instead of plain gradient accumulation.
    unlabelled: whether it trains on a data set's unlabelled images too (STL-10's
    100,000: `train+unlabeled`); it never reads their labels.
    reference: the baseline every other method's gap is measured against (one method).
    accuracy_plateaus: whether its training accuracy is a classifier's, which levels off
    as the run converges (scaling.train.convergence judges it with the loss); a
    contrastive objective's "accuracy" (the positive among 2N - 1 views) is not.
    """

    name: str
    config: type[MethodConfig]
    description: str
    warmup_cap_epochs: float  # default warmup: min(this, 10% of the run)
    head: Head
    augmentation: Augmentation
    objective: Objective
    evaluation: Evaluation
    views: int
    cached_accumulation: bool
    unlabelled: bool = False
    reference: bool = False
    accuracy_plateaus: bool = False

    def monitor_every(self, config: Mapping[str, Any]) -> int:
        """Epochs between two runs of the online kNN monitor (0: never)."""
        if self.evaluation is not Evaluation.FROZEN_ENCODER:
            return 0
        return int((config.get("eval") or {}).get("knn_every") or 0)

    def eval_passes(self, eval_config: Mapping[str, Any] | None) -> tuple[int, int]:
        """(forwards of every training image, of every test image) its evaluation makes,
        given the config's `eval` section: a frozen encoder's features of both splits
        once, and the augmented protocol's fresh crops of the training split every probe
        epoch; a network's own head, the test split once. The online kNN monitor is
        counted by the planner."""
        if self.evaluation is Evaluation.OWN_HEAD:
            return 0, 1
        eval_config = eval_config or {}
        augmented = eval_config.get("protocol") == "augmented"
        return 1 + (int(eval_config.get("epochs") or 0) if augmented else 0), 1


METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    if info.name in METHODS:
        raise ValueError(f"method {info.name!r} is already registered")
    if info.reference and any(m.reference for m in METHODS.values()):
        raise ValueError(f"method {info.name!r}: a reference method is already registered")
    METHODS[info.name] = info
    return info


register(
    MethodInfo(
        name="simclr",
        config=SimCLRConfig,
        description="SimCLR pretraining (NT-Xent, LARS), then linear evaluation",
        warmup_cap_epochs=10.0,  # paper B.1 and the official code's warmup_epochs
        head=Head.PROJECTION,
        augmentation=Augmentation.CONTRASTIVE,
        objective=Objective.NT_XENT,
        evaluation=Evaluation.FROZEN_ENCODER,
        views=2,
        cached_accumulation=True,
        unlabelled=True,  # pretrains on STL-10's train+unlabeled, as the paper and peers
    )
)
register(
    MethodInfo(
        name="supervised",
        config=SupervisedConfig,
        description="supervised cross-entropy training of the same encoder",
        warmup_cap_epochs=5.0,  # Goyal et al. 2017's gradual warmup
        head=Head.CLASSIFIER,
        augmentation=Augmentation.CROP_FLIP,
        objective=Objective.CROSS_ENTROPY,
        evaluation=Evaluation.OWN_HEAD,
        views=1,
        cached_accumulation=False,
        reference=True,
        accuracy_plateaus=True,
    )
)


def get_method(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None


def reference_method() -> str:
    """The name of the baseline method every gap is measured against."""
    return next(m.name for m in METHODS.values() if m.reference)
