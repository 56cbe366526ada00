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


class BNGrouping(StrEnum):
    """Which images share a batch-norm batch in a training step (scaling.train.accumulate)."""

    # Both views of the (rank's) batch in one forward, as the official code
    # (`tf.concat(features_list, 0)`): BN over 2 x the batch, global across ranks.
    VIEWS_TOGETHER = "views_together"
    # Accumulation: one view per forward, in micro-batches; the second view's rows are
    # shuffled (one permutation per step, the same on every rank, undone before the loss:
    # MoCo's shuffle-BN), so no BN batch holds the two views of the same images.
    SECOND_VIEW_SHUFFLED = "second_view_shuffled"
    ONE_VIEW = "one_view"  # one view per image: BN over each micro-batch


class Evaluation(StrEnum):
    """How a trained network is scored (scaling.train.evaluate)."""

    # The encoder frozen: a linear probe (EvalConfig.protocol), kNN top-1, a validation
    # score for recipe selection and the online kNN monitor.
    FROZEN_ENCODER = "frozen_encoder"
    OWN_HEAD = "own_head"  # the trained classifier itself, top-k on the test split


class EvalConfig(StrictModel):
    """Linear evaluation of a frozen encoder (and kNN top-1 as a cheap extra), by default
    the official code's (README, "Finetuning the linear head"; model.py with
    `--train_mode=finetune --fine_tune_after_block=4`): encoder frozen with batch norm
    in inference mode, a zero-initialised linear layer on the raw features (no
    standardisation), Nesterov momentum 0.9, LR `lr` x B/256 with cosine decay and no
    warmup, crop + flip on every step (`augmented`), and the batch, epochs and weight
    decay of the data set (PROBE_DEFAULTS; null here means those).

    `features` is the fast alternative: features extracted once without augmentation
    and the same classifier fitted on them. `standardize` puts a BN without affine
    parameters (the training features' mean and std) in front of the classifier.
    """

    protocol: Literal["features", "augmented"] = "augmented"
    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: PositiveFloat = 0.1
    weight_decay: NonNegativeFloat | None = None
    standardize: bool = False
    # Smallest area of the augmented protocol's random resized crop (the official 0.08)
    crop_min_scale: float = Field(0.08, gt=0.0, le=1.0)
    knn_k: PositiveInt = 200
    knn_temperature: PositiveFloat = 0.1
    # Online kNN monitor: kNN top-1 of the encoder on a fixed subset (up to 10k training
    # and 2k test images) after every N-th epoch, logged as monitor/knn_top1. 0: off.
    # It never changes training (no RNG draw, BN in eval mode), so it is not in run_id.
    knn_every: NonNegativeInt = 0


@dataclass(frozen=True)
class ProbeDefaults:
    """The linear evaluation's settings that the official commands set per data set."""

    batch_size: int
    epochs: int
    weight_decay: float


#: The official linear-evaluation commands (google-research/simclr README): ImageNet
#: `--train_batch_size=4096 --train_epochs=90 --weight_decay=1e-6`; CIFAR-10
#: `--train_batch_size=512 --train_epochs=100 --weight_decay=0.0`, which every smaller
#: data set here (CIFAR-100, STL-10, digits, synthetic) follows.
PROBE_DEFAULTS: dict[str, ProbeDefaults] = {"imagefolder": ProbeDefaults(4096, 90, 1e-6)}
PROBE_DEFAULT = ProbeDefaults(512, 100, 0.0)


def resolve_config(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """`config` with the defaults that follow the data filled in: an `eval` section's
    null batch size, epochs and weight decay from PROBE_DEFAULTS for `dataset`."""
    out = dict(config)
    section = out.get("eval")
    if isinstance(section, Mapping):
        defaults = PROBE_DEFAULTS.get(dataset, PROBE_DEFAULT)
        out["eval"] = {
            k: (getattr(defaults, k) if v is None and hasattr(defaults, k) else v)
            for k, v in section.items()
        }
    return out


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

    def bn_grouping(self, whole_batch: bool) -> BNGrouping:
        """How its training step groups images into batch-norm batches: two views
        together when one BN batch holds the whole batch (no accumulation, one rank or
        SyncBN: the official code), else one view per forward with the second view's
        rows shuffled; a one-view method, its micro-batches."""
        if self.views == 1:
            return BNGrouping.ONE_VIEW
        return BNGrouping.VIEWS_TOGETHER if whole_batch else BNGrouping.SECOND_VIEW_SHUFFLED

    def groupings(self) -> tuple[str, ...]:
        """Every grouping its steps can use (to check a run spec's `bn_grouping`)."""
        return tuple(dict.fromkeys(str(self.bn_grouping(w)) for w in (True, False)))

    def monitor_every(self, config: Mapping[str, Any]) -> int:
        """Epochs between two runs of the online kNN monitor (0: never)."""
        if self.evaluation is not Evaluation.FROZEN_ENCODER:
            return 0
        return int((config.get("eval") or {}).get("knn_every") or 0)

    def eval_passes(self, eval_config: Mapping[str, Any] | None) -> tuple[int, int, int]:
        """Forwards of every image its evaluation makes, of (the training images it fits
        a probe on, the held-out validation images, the test images), given the config's
        `eval` section: a frozen encoder's features of each of them once, and the
        augmented protocol's fresh crops of the fitted images every probe epoch; a
        network's own head, the held-out and the test images once. The online kNN monitor
        is counted by the planner."""
        if self.evaluation is Evaluation.OWN_HEAD:
            return 0, 1, 1
        eval_config = eval_config or {}
        augmented = eval_config.get("protocol") == "augmented"
        epochs = int(eval_config.get("epochs") or PROBE_DEFAULT.epochs) if augmented else 0
        return 1 + epochs, 1, 1


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
