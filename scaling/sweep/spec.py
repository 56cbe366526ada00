"""Sweep specs and run specs.

A sweep spec (YAML in sweeps/) names a dataset, a model family, seeds and, per method,
its hyperparameters. Any scalar field given as a list is a grid axis. Expansion is
method-aware: each method's runs are (dataset axes x model axes x seeds x that
method's own axes). Each resulting `RunSpec` is frozen, and its `run_id` is a short
sha256 of the canonical JSON of what changes the result (not where it runs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from scaling.errors import SpecError
from scaling.sweep.config import (
    StrictModel,
    apply_overrides,
    check_keys,
    read_yaml,
    submodel,
    validate,
)
from scaling.sweep.methods import METHODS, MethodConfig


class DatasetConfig(StrictModel):
    name: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic"]
    image_size: PositiveInt = 32
    root: str | None = None
    # Training images per epoch: how many to make for `synthetic` (test: a quarter); for
    # `imagefolder` what the planner assumes when the folder is not reachable from here.
    size: PositiveInt | None = None


class ModelConfig(StrictModel):
    depth: Literal[10, 18, 34, 50, 101, 152, 200] = 18
    width: PositiveFloat = 1.0
    stem: Literal["cifar", "imagenet"] = "cifar"
    depth_multiplier: PositiveFloat = 1.0


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
    seeds: list[int] | int = [0]
    model: dict[str, Any] = {}
    methods: dict[str, dict[str, Any] | None]
    tracking: TrackingConfig = TrackingConfig()
    # The grid's runs to keep, by run_id (`scaling advise --out` writes it): None, all.
    only: list[str] | None = None


_IDENTITY_EXCLUDED = {("dataset", "root")}
#: config fields that never change a run's result (monitoring), left out of run_id
_CONFIG_NOT_IDENTITY = {("eval", "knn_every")}


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
    run_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", run_id_of(self.identity()))

    def identity(self) -> dict[str, Any]:
        """What changes the result: everything but the sweep's name and data location."""
        identity = {
            "method": self.method,
            "dataset": identity_of_dataset(self.dataset),
            "model": dict(self.model),
            "seed": self.seed,
            "config": identity_of_config(self.config),
        }
        if self.bn_batch is not None:
            identity["bn_batch"] = self.bn_batch
        return identity

    def group_id(self) -> str:
        """The identity without the seed: the same for every seed of this run (MLflow's
        `scaling.group` tag, to compare means over seeds in the UI)."""
        return run_id_of({k: v for k, v in self.identity().items() if k != "seed"})

    def with_bn_batch(self, bn_batch: int) -> RunSpec:
        """This run with batch norm over `bn_batch` images per view (a new run_id when
        that is less than the batch; the same spec otherwise)."""
        if bn_batch >= int(self.config["batch_size"]):
            return self if self.bn_batch is None else replace(self, bn_batch=None)
        return replace(self, bn_batch=int(bn_batch))

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
        method = data.get("method")
        if method not in METHODS:
            raise SpecError(f"must be one of {', '.join(METHODS)}", file=file, key="method")
        spec = cls(
            method=method,
            dataset=validate(DatasetConfig, data["dataset"], file, "dataset.").model_dump(),
            model=validate(ModelConfig, data["model"], file, "model.").model_dump(),
            seed=int(data["seed"]),
            config=validate(METHODS[method].config, data["config"], file, "config.").model_dump(),
            sweep=str(data.get("sweep", "")),
            bn_batch=None if data.get("bn_batch") is None else int(data["bn_batch"]),
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
        for key, value in self.config.items():
            if isinstance(value, Mapping):
                row.update({f"{key}_{k}": v for k, v in value.items()})
            else:
                row[key] = value
        return row


def run_id_of(identity: Mapping[str, Any]) -> str:
    return _hash(_canonical(identity))


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def identity_of_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without the fields that never change the result (the kNN monitor)."""
    out = dict(config)
    for section, key in _CONFIG_NOT_IDENTITY:
        if isinstance(out.get(section), Mapping) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def identity_of_dataset(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The data set's identity: its root is where a published data set lives (not part of
    the result), except for an image folder, whose root IS the data."""
    if dataset.get("name") == "imagefolder":
        return dict(dataset)
    return {k: v for k, v in dataset.items() if ("dataset", k) not in _IDENTITY_EXCLUDED}


def _unique(runs: list[RunSpec], file: str) -> list[RunSpec]:
    """Runs by run_id; two different specs with one id (they differ only where the
    identity does not look, e.g. a CIFAR root axis) are an error, never a silent drop."""
    out: dict[str, RunSpec] = {}
    for r in runs:
        seen = out.setdefault(r.run_id, r)
        if seen is not r and seen.to_dict() != r.to_dict():
            diff = sorted(
                k for k in ("dataset", "model", "config") if getattr(seen, k) != getattr(r, k)
            )
            raise SpecError(
                f"two runs share run_id {r.run_id}: they differ only in {', '.join(diff)} "
                "fields that do not change a result (dataset.root of a published data set); "
                "make those a single value",
                file=file,
                key=diff[0] if diff else None,
            )
    return list(out.values())


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


# ----------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class _Grid:
    """A section expanded: its validated defaults plus the axes that vary."""

    base: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    def expand(self) -> Iterable[dict[str, Any]]:
        keys = [k for k, _ in self.axes]
        for combo in itertools.product(*(values for _, values in self.axes)):
            out = _nested_copy(self.base)
            for key, value in zip(keys, combo, strict=True):
                _set_dotted(out, key, value)
            yield out


def _section_grid(
    raw: Mapping[str, Any], model: type[StrictModel], file: str, prefix: str
) -> _Grid:
    """Validate a section whose leaves may be lists, returning its grid."""
    if not isinstance(raw, Mapping):
        raise SpecError(
            f"expected a mapping, got {type(raw).__name__}", file=file, key=prefix.rstrip(".")
        )
    check_keys(raw, model, file, prefix)
    leaves = dict(_leaves(raw, model))
    axes: list[tuple[str, list[Any]]] = []
    template: dict[str, Any] = {}
    for key, value in leaves.items():
        if isinstance(value, list):
            if not value:
                raise SpecError(
                    "empty list: a grid axis needs at least one value", file=file, key=prefix + key
                )
            axes.append((key, value))
            value = value[0]
        _set_dotted(template, key, value)
    base = validate(model, template, file, prefix)
    validated_axes = []
    for key, values in axes:
        coerced = []
        for value in values:
            trial = _nested_copy(template)
            _set_dotted(trial, key, value)
            coerced.append(_get_dotted(validate(model, trial, file, prefix).model_dump(), key))
        validated_axes.append((key, tuple(dict.fromkeys(coerced))))
    return _Grid(base=base.model_dump(), axes=tuple(validated_axes))


def _leaves(
    raw: Mapping[str, Any], model: type[StrictModel], prefix: str = ""
) -> Iterable[tuple[str, Any]]:
    for key, value in raw.items():
        sub = submodel(model.model_fields[key].annotation)
        if sub is not None and isinstance(value, Mapping):
            yield from _leaves(value, sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _get_dotted(data: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _nested_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _nested_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


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
    data_grid = _section_grid(top.dataset, DatasetConfig, file, "dataset.")
    model_grid = _section_grid(top.model, ModelConfig, file, "model.")
    axes: dict[str, tuple[Any, ...]] = {f"dataset.{k}": v for k, v in data_grid.axes if len(v) > 1}
    axes.update({f"model.{k}": v for k, v in model_grid.axes if len(v) > 1})
    if len(seeds) > 1:
        axes["seed"] = tuple(seeds)
    runs: list[RunSpec] = []
    for method, section in top.methods.items():
        if method not in METHODS:
            raise SpecError(
                f"unknown method {method!r}; allowed: {', '.join(METHODS)}",
                file=file,
                key=f"methods.{method}",
            )
        config_model: type[MethodConfig] = METHODS[method].config
        grid = _section_grid(section or {}, config_model, file, f"methods.{method}.")
        axes.update({f"methods.{method}.{k}": v for k, v in grid.axes if len(v) > 1})
        configs = [(c, _canonical(identity_of_config(c))) for c in grid.expand()]
        method_json = _canonical(method)
        for (dataset, d_json), (model, m_json), seed in itertools.product(
            _with_json(data_grid.expand(), identity_of_dataset),
            _with_json(model_grid.expand()),
            seeds,
        ):
            for config, c_json in configs:
                # The identity's canonical JSON assembled from per-part fragments: the
                # same string json.dumps(sort_keys=True) gives, without re-encoding
                # every part for each of (possibly) 100,000 runs.
                canonical = (
                    f'{{"config":{c_json},"dataset":{d_json},"method":{method_json},'
                    f'"model":{m_json},"seed":{seed}}}'
                )
                runs.append(
                    RunSpec._trusted(method, dataset, model, seed, config, top.name, canonical)
                )
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
