"""Sweep specs and run specs.

A sweep spec (YAML in sweeps/) names a dataset, a model family, seeds and, per method,
its hyperparameters. Any scalar field given as a list is a grid axis. Expansion is
method-aware: each method's runs are (dataset axes x model axes x seeds x that
method's own axes). Each resulting `RunSpec` is frozen, and its `run_id` is a short
sha256 of the canonical JSON of what changes the result (not where it runs).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from scaling.errors import SpecError
from scaling.sweep.config import (
    StrictModel,
    apply_overrides,
    flat_config,
    read_yaml,
    validate,
)
from scaling.sweep.grid import section_grid
from scaling.sweep.identity import (
    _canonical,
    _evaluation,
    _hash,
    _runs_of_configs,
    _unique,
    check_fraction,
    checked_list,
    default_grouping,
    eval_identity,
    evaluation_identity,
    identity_of_config,
    identity_of_dataset,
    label_shares,
    run_id_of,
)
from scaling.sweep.methods import METHODS, Labels, MethodConfig, get_method, resolve_config

#: the share of the labelled training images held out for validation (recipe selection)
VALIDATION_FRACTION = 0.1
#: the official code's CIFAR stem (3x3 stride 1, no max-pool) up to this image size
#: (run.py: `cifar_stem=FLAGS.image_size <= 32`), the ImageNet stem above it
CIFAR_STEM_MAX_SIZE = 32


class DatasetConfig(StrictModel):
    name: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic"]
    image_size: PositiveInt = 32
    root: str | None = None
    # Training images per epoch: how many to make for `synthetic` (test: a quarter); for
    # `imagefolder` what the planner assumes when the folder is not reachable from here.
    size: PositiveInt | None = None
    # A fixed random share of the labelled training images held out from training, for
    # EVERY method: SimCLR neither pretrains nor fits its probe on them, the supervised
    # baseline never trains on them; both are scored there (val_top1), and a sweep's
    # recipes are chosen on that score, never on the test set. 0: train on everything
    # (then there is no validation score, and several recipes are chosen on test).
    validation: float = Field(VALIDATION_FRACTION, ge=0.0, lt=1.0)


#: The narrowest width: scaling.models.resnet builds round(64 x width) channels in the stem
#: (at least 1), so below 1/128 the stem and then every stage are clamped at one channel
#: and width no longer scales every channel (width 1e-9 built a 126-parameter network).
MIN_WIDTH = 1 / 128
#: The widest: beyond it the widest layer's weights ((2048 x width)^2 x 9 4-byte floats)
#: exceed what a tensor can address, and not even the plan's meta-device trace can build
#: it. Widths below it that do not fit the accelerator are the plan's infeasible runs.
MAX_WIDTH = 2.0**18
#: Pixels one output pixel of the last stage covers: the CIFAR stem keeps the resolution
#: and the stages halve it three times (8); the ImageNet stem's stride-2 conv and max-pool
#: divide it by 4 more (32). A smaller image reaches the last stages as a single pixel.
STEM_REDUCTION = {"cifar": 8, "imagenet": 32}
#: Seeds torch's generators and numpy's SeedSequence both take (0 <= seed < 2^63).
MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class ModelConfig(StrictModel):
    depth: Literal[10, 18, 34, 50, 101, 152, 200] = 18
    width: PositiveFloat = 1.0
    # auto: the official code's rule, the CIFAR stem at 32 px and below, else ImageNet's
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    depth_multiplier: PositiveFloat = 1.0

    @field_validator("width")
    @classmethod
    def _width(cls, width: float) -> float:
        if width < MIN_WIDTH:
            raise ValueError(
                f"must be at least 1/128 = {MIN_WIDTH:g}: the stem has round(64 x width) "
                f"channels, clamped at one below it (got {width:g})"
            )
        if width > MAX_WIDTH:
            raise ValueError(
                f"must be at most {MAX_WIDTH:g}: wider layers cannot even be allocated "
                f"(the paper's widest network is 4x; got {width:g})"
            )
        return width


def resolve_model(model: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """The model section with `stem: auto` resolved for the image size (CIFAR_STEM_MAX_SIZE)."""
    out = dict(model)
    if out.get("stem", "auto") == "auto":
        out["stem"] = "cifar" if int(image_size) <= CIFAR_STEM_MAX_SIZE else "imagenet"
    return out


class WandbConfig(StrictModel):
    """An optional Weights & Biases mirror (beside MLflow; needs `scaling[wandb]`)."""

    project: str = Field(min_length=1)
    entity: str | None = None  # None: the W&B default entity of the logged-in user
    mode: Literal["online", "offline"] = "online"  # offline: files only, `wandb sync` later


class TrackingConfig(StrictModel):
    uri: str | None = None  # None: MLflow's default store (sqlite:///mlflow.db)
    experiment: str | None = None  # None: the sweep's name
    wandb: WandbConfig | None = None


class SweepFile(StrictModel):
    """The top level of a sweep file; sections are validated by their own models."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    dataset: dict[str, Any]
    seeds: list[Seed] | Seed = [0]
    model: dict[str, Any] = {}
    methods: dict[str, dict[str, Any] | None]
    # The labelled share of the training images (class-balanced, drawn from the seed): a
    # method trained on labels has one run per fraction, one pretrained without them one
    # run evaluated at every fraction (methods.Labels).
    # or, per fraction, {fraction, file}: a file of training image names (sweep.labellist)
    label_fraction: list[float | dict[str, Any]] | float | dict[str, Any] = 1.0
    tracking: TrackingConfig = TrackingConfig()
    # The grid's runs to keep, by run_id (`scaling advise --out` writes it): None, all.
    only: list[str] | None = None


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run. Never mutated; `run_id` identifies its result."""

    method: str
    dataset: Mapping[str, Any]
    model: Mapping[str, Any]
    seed: int
    config: Mapping[str, Any]
    sweep: str = ""
    # Images per batch-norm batch, per view, when the layout makes it smaller than the
    # batch (accumulation, ranks without SyncBN): BN statistics then differ, and so does
    # the result. None: BN over each view's whole batch.
    bn_batch: int | None = None
    # How the views are grouped into batch-norm batches (methods.BNGrouping), when the
    # layout makes it differ from the method's grouping without accumulation. None: that.
    bn_grouping: str | None = None
    # The labelled share of the training images a method trained on labels trains on
    # (Labels.TRAINING: part of the identity below 1).
    label_fraction: float = 1.0
    # Its images named by a file (sweep.labellist: path, sha256, ...) instead of drawn
    # from the seed; its sha256 is part of the identity. None: drawn.
    label_list: Mapping[str, Any] | None = None
    # A method pretrained without labels (Labels.EVALUATION): its evaluations, each an
    # `eval` section with its `label_fraction`, never part of the pretraining's identity
    # (adding one later never trains again). Empty: the config's `eval` on every label.
    evals: tuple[Mapping[str, Any], ...] = ()
    run_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Always fully resolved (stem auto, the probe's data-set defaults), however built.
        size = int(self.dataset.get("image_size", 32))
        object.__setattr__(self, "model", resolve_model(self.model, size))
        object.__setattr__(self, "config", resolve_config(self.config, self.dataset["name"]))
        object.__setattr__(
            self,
            "evals",
            tuple(resolve_config({"eval": e}, self.dataset["name"])["eval"] for e in self.evals),
        )
        object.__setattr__(self, "run_id", run_id_of(self.identity()))

    def identity(self) -> dict[str, Any]:
        """What changes the result: everything but the sweep's name and data location,
        plus how batch norm groups the images (always named: a run laid out with another
        grouping is another run)."""
        identity = {
            "method": self.method,
            "dataset": identity_of_dataset(self.dataset),
            "model": dict(self.model),
            "seed": self.seed,
            "config": identity_of_config(self.config, self.method),
            "bn_grouping": self.bn_grouping or default_grouping(self.method),
        }
        if self.bn_batch is not None:
            identity["bn_batch"] = self.bn_batch
        if self.label_fraction != 1.0:
            identity["label_fraction"] = self.label_fraction
        if self.label_list is not None:
            identity["label_list"] = self.label_list["sha256"]
        return identity

    def evaluations(self) -> list[dict[str, Any]]:
        """The run's evaluations, each with its `eval_id` (unique within the run), its
        `protocol` and `label_fraction`: a method trained on labels, its own head on its
        fraction; one pretrained without them, each of `evals` (or the config's `eval` on
        every label)."""
        info = get_method(self.method)
        if info.labels is Labels.TRAINING:
            items = [{"protocol": str(info.evaluation), "label_fraction": self.label_fraction}]
            if self.label_list is not None:
                items[0]["label_list"] = dict(self.label_list)
        else:
            items = [dict(e) for e in self.evals] or [
                {**eval_identity(self.config.get("eval") or {}), "label_fraction": 1.0}
            ]
        return [{**item, "eval_id": run_id_of(evaluation_identity(item))} for item in items]

    def group_id(self) -> str:
        """The identity without the seed: the same for every seed of this run (MLflow's
        `scaling.group` tag, to compare means over seeds in the UI)."""
        return run_id_of({k: v for k, v in self.identity().items() if k != "seed"})

    def with_bn_batch(self, bn_batch: int, grouping: str | None = None) -> RunSpec:
        """This run with batch norm over `bn_batch` images per view, grouped as `grouping`
        (None: the method's grouping over the whole batch): a new run_id when the BN batch
        is less than the batch or the grouping is not that default; the same spec otherwise."""
        small = int(bn_batch) if bn_batch < int(self.config["batch_size"]) else None
        other = None if grouping in (None, default_grouping(self.method)) else str(grouping)
        if (small, other) == (self.bn_batch, self.bn_grouping):
            return self
        return replace(self, bn_batch=small, bn_grouping=other)

    @classmethod
    def _trusted(
        cls,
        method: str,
        dataset: Mapping[str, Any],
        model: Mapping[str, Any],
        seed: int,
        config: Mapping[str, Any],
        sweep: str,
        canonical: str,
    ) -> RunSpec:
        """Build from validated parts whose canonical identity JSON is already known."""
        spec = object.__new__(cls)
        for name, value in (
            ("method", method),
            ("dataset", dataset),
            ("model", model),
            ("seed", seed),
            ("config", config),
            ("sweep", sweep),
            ("bn_batch", None),
            ("bn_grouping", None),
            ("label_fraction", 1.0),
            ("label_list", None),
            ("evals", ()),
        ):
            object.__setattr__(spec, name, value)
        object.__setattr__(spec, "run_id", _hash(canonical))
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "sweep": self.sweep,
            "method": self.method,
            "dataset": dict(self.dataset),
            "model": dict(self.model),
            "seed": self.seed,
            "config": dict(self.config),
            **({"bn_batch": self.bn_batch} if self.bn_batch is not None else {}),
            **({"bn_grouping": self.bn_grouping} if self.bn_grouping is not None else {}),
            **({"label_fraction": self.label_fraction} if self.label_fraction != 1.0 else {}),
            **({"label_list": dict(self.label_list)} if self.label_list is not None else {}),
            **({"evals": [dict(e) for e in self.evals]} if self.evals else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: str = "<run spec>") -> RunSpec:
        """Rebuild (and re-validate) a run spec, e.g. from a run directory's spec.json."""
        if not isinstance(data, Mapping):
            raise SpecError(
                f"expected a run spec (a JSON object), got {type(data).__name__}", file=file
            )
        for key in ("method", "dataset", "model", "seed", "config"):
            if key not in data:
                raise SpecError(
                    "missing; a run spec has method, dataset, model, seed, config",
                    file=file,
                    key=key,
                )
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SpecError(f"must be an integer, got {seed!r}", file=file, key="seed")
        if not 0 <= seed <= MAX_SEED:
            raise SpecError(f"must be in 0 .. 2^63 - 1, got {seed}", file=file, key="seed")
        method = data.get("method")
        if method not in METHODS:
            raise SpecError(f"must be one of {', '.join(METHODS)}", file=file, key="method")
        dataset = validate(DatasetConfig, data["dataset"], file, "dataset.").model_dump()
        model = validate(ModelConfig, data["model"], file, "model.").model_dump()
        check_input_size(dataset, model, file)
        config = validate(METHODS[method].config, data["config"], file, "config.").model_dump()
        grouping = data.get("bn_grouping")
        if grouping is not None and grouping not in get_method(method).groupings():
            allowed = ", ".join(get_method(method).groupings())
            raise SpecError(f"must be one of {allowed}", file=file, key="bn_grouping")
        fraction = check_fraction(data.get("label_fraction", 1.0), file, "label_fraction")
        evals = data.get("evals") or []
        if not isinstance(evals, list):
            raise SpecError("must be a list of evaluations", file=file, key="evals")
        spec = cls(
            method=method,
            dataset=dataset,
            model=model,
            seed=int(data["seed"]),
            config=config,
            sweep=str(data.get("sweep", "")),
            bn_batch=None if data.get("bn_batch") is None else int(data["bn_batch"]),
            bn_grouping=None if grouping is None else str(grouping),
            label_fraction=fraction,
            label_list=(
                None
                if data.get("label_list") is None
                else checked_list(data["label_list"], file, "label_list")
            ),
            evals=tuple(_evaluation(e, file, f"evals.{i}") for i, e in enumerate(evals)),
        )
        if "run_id" in data and data["run_id"] != spec.run_id:
            raise SpecError(
                f"run_id {data['run_id']} does not match the spec's content ({spec.run_id})",
                file=file,
                key="run_id",
            )
        return spec

    def flat(self) -> dict[str, Any]:
        """One flat row: method, dataset, image_size, depth, width, ..., eval_protocol."""
        row: dict[str, Any] = {"run_id": self.run_id, "method": self.method}
        row["dataset"] = self.dataset["name"]
        row["image_size"] = self.dataset["image_size"]
        row.update(self.model)
        row["seed"] = self.seed
        row.update(flat_config(self.config))
        if get_method(self.method).labels is Labels.TRAINING:
            row["label_fraction"] = self.label_fraction
        return row


def check_input_size(dataset: Mapping[str, Any], model: Mapping[str, Any], file: str) -> None:
    """An image at least as large as the stem and stages reduce to one pixel (a
    SpecError otherwise: a 1 px image trained "to chance" and entered the fits)."""
    size = int(dataset["image_size"])
    stem = str(resolve_model(model, size)["stem"])
    need = STEM_REDUCTION[stem]
    if size < need:
        other = " (or stem: cifar, which needs 8)" if stem == "imagenet" else ""
        raise SpecError(
            f"must be at least {need} with the {stem} stem, which with the stages reduces "
            f"{need} x {need} pixels to one; use image_size >= {need}{other} (got {size})",
            file=file,
            key="dataset.image_size",
        )


def _with_json(
    items: Iterable[dict[str, Any]], part: Any = dict
) -> list[tuple[dict[str, Any], str]]:
    return [(item, _canonical(part(item))) for item in items]


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    path: str
    tracking: TrackingConfig
    runs: tuple[RunSpec, ...]
    axes: Mapping[str, tuple[Any, ...]]  # every grid axis with more than one value

    def runs_of(self, method: str) -> tuple[RunSpec, ...]:
        return tuple(r for r in self.runs if r.method == method)


# ----------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> Sweep:
    """Read, validate and expand a sweep file into its runs."""
    file = str(path)
    raw = apply_overrides(read_yaml(path), list(overrides), file)
    top: SweepFile = validate(SweepFile, raw, file)
    if not top.methods:
        raise SpecError(
            f"empty grid: no methods; allowed: {', '.join(METHODS)}", file=file, key="methods"
        )
    seeds = [top.seeds] if isinstance(top.seeds, int) else list(dict.fromkeys(top.seeds))
    if not seeds:
        raise SpecError("empty list: give at least one seed", file=file, key="seeds")
    data_grid = section_grid(top.dataset, DatasetConfig, file, "dataset.")
    model_grid = section_grid(top.model, ModelConfig, file, "model.")
    for dataset, model in itertools.product(data_grid.expand(), model_grid.expand()):
        check_input_size(dataset, model, file)
    axes: dict[str, tuple[Any, ...]] = {f"dataset.{k}": v for k, v in data_grid.axes if len(v) > 1}
    axes.update({f"model.{k}": v for k, v in model_grid.axes if len(v) > 1})
    if len(seeds) > 1:
        axes["seed"] = tuple(seeds)
    shares = label_shares(top.label_fraction, file, [d["name"] for d in data_grid.expand()])
    if len(shares) > 1:
        axes["label_fraction"] = tuple(f for f, _ in shares)
    runs: list[RunSpec] = []
    datasets = _with_json(data_grid.expand(), identity_of_dataset)
    models = list(model_grid.expand())
    for method, section in top.methods.items():
        if method not in METHODS:
            raise SpecError(
                f"unknown method {method!r}; allowed: {', '.join(METHODS)}",
                file=file,
                key=f"methods.{method}",
            )
        config_model: type[MethodConfig] = METHODS[method].config
        grid = section_grid(section or {}, config_model, file, f"methods.{method}.")
        axes.update({f"methods.{method}.{k}": v for k, v in grid.axes if len(v) > 1})
        raw_configs = list(grid.expand())
        info = METHODS[method]
        method_json = _canonical(method)
        grouping_json = _canonical(default_grouping(method))
        by_labels = info.labels is Labels.TRAINING
        # Defaults that follow the data (the probe's settings, the stem) are resolved per
        # data set and image size, once each. A method pretrained without labels: one run
        # per pretraining, owning an evaluation per (eval section x label fraction).
        configs_for = functools.cache(
            lambda name, raw=raw_configs, evaluated=not by_labels, m=method: _runs_of_configs(
                [resolve_config(r, name) for r in raw], m, shares if evaluated else ()
            )
        )
        models_for = functools.cache(
            lambda size: _with_json(resolve_model(m, size) for m in models)
        )
        for dataset, d_json in datasets:
            configs = configs_for(dataset["name"])
            for (model, m_json), seed in itertools.product(
                models_for(dataset["image_size"]), seeds
            ):
                for config, c_json, evals in configs:
                    for fraction, listed in shares if by_labels else ((1.0, None),):
                        # The identity's canonical JSON assembled from per-part fragments:
                        # the same string json.dumps(sort_keys=True) gives, without
                        # re-encoding every part for each of (possibly) 100,000 runs.
                        share = f'"label_fraction":{fraction!r},' if fraction != 1.0 else ""
                        if listed is not None:
                            share += f'"label_list":{_canonical(listed["sha256"])},'
                        canonical = (
                            f'{{"bn_grouping":{grouping_json},"config":{c_json},'
                            f'"dataset":{d_json},{share}"method":{method_json},'
                            f'"model":{m_json},"seed":{seed}}}'
                        )
                        spec = RunSpec._trusted(
                            method, dataset, model, seed, config, top.name, canonical
                        )
                        object.__setattr__(spec, "label_fraction", fraction)
                        object.__setattr__(spec, "label_list", listed)
                        object.__setattr__(spec, "evals", evals)
                        runs.append(spec)
    unique = tuple(_unique(runs, file))
    if top.only is not None:
        unknown = sorted(set(top.only) - {r.run_id for r in unique})
        if unknown:
            raise SpecError(
                f"run ids not in the grid: {', '.join(unknown[:5])}; allowed: the run_id "
                "of any run the grid expands to (scaling plan lists them)",
                file=file,
                key="only",
            )
        unique = tuple(r for r in unique if r.run_id in set(top.only))
    if top.tracking.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise SpecError(
            "W&B tracking needs the wandb package: pip install 'scaling[wandb]'",
            file=file,
            key="tracking.wandb",
        )
    return Sweep(top.name, top.description, file, top.tracking, unique, axes)
