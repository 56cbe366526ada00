"""What identifies a run and an evaluation: the canonical JSON of what changes a result,
hashed (`run_id_of`), and the parts of a spec that never do (a published data set's root,
the kNN monitor, a pretraining's evaluations)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from scaling.errors import SpecError
from scaling.sweep.config import validate
from scaling.sweep.labellist import NAMED_DATASET, checked_list, label_list
from scaling.sweep.methods import EvalConfig, Labels, Protocol, get_method

_IDENTITY_EXCLUDED = {("dataset", "root")}
#: config fields that never change a run's result (monitoring), left out of run_id
_CONFIG_NOT_IDENTITY = {("eval", "knn_every")}


def default_grouping(method: str) -> str:
    """The method's batch-norm grouping when BN sees the whole batch (methods.MethodInfo)."""
    return str(get_method(method).bn_grouping(whole_batch=True))


def run_id_of(identity: Mapping[str, Any]) -> str:
    return _hash(_canonical(identity))


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def identity_of_config(config: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
    """The config without the fields that never change the result (the kNN monitor) and,
    for a method pretrained without labels, without its `eval` section: evaluations are
    the run's, not its identity (`RunSpec.evaluations`)."""
    out = dict(config)
    if method is not None and get_method(method).labels is Labels.EVALUATION:
        out.pop("eval", None)
    for section, key in _CONFIG_NOT_IDENTITY:
        if isinstance(out.get(section), Mapping) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def eval_identity(section: Mapping[str, Any]) -> dict[str, Any]:
    """An `eval` section as far as it changes that protocol's evaluation: fine-tuning, its
    `finetune` recipe; a linear probe, all else (never the kNN monitor)."""
    if section.get("protocol") == Protocol.FINETUNE:
        return {"protocol": section["protocol"], "finetune": section.get("finetune")}
    return {
        k: v
        for k, v in section.items()
        if ("eval", k) not in _CONFIG_NOT_IDENTITY and k != "finetune"
    }


def check_fraction(value: Any, file: str, key: str) -> float:
    """A label fraction: a number in (0, 1], or a one-line SpecError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SpecError(
            f"must be a number in (0, 1] (the labelled share of the training images), "
            f"got {value!r}",
            file=file,
            key=key,
        )
    return float(value)


Share = tuple[float, "dict[str, Any] | None"]  # (fraction, its list of names or None)


def label_shares(value: Any, file: str, datasets: list[str]) -> tuple[Share, ...]:
    """A sweep's `label_fraction`: each a number in (0, 1] (drawn from the seed) or
    `{fraction, file}` (sweep.labellist: named by the file, only for an image folder's
    named images); each fraction once. One-line SpecErrors naming the key."""
    many = isinstance(value, list)
    entries = value if many else [value]
    if not entries:
        raise SpecError("empty list: give at least one fraction", file=file, key="label_fraction")
    out: dict[float, Share] = {}
    for i, entry in enumerate(entries):
        key = f"label_fraction.{i}" if many else "label_fraction"
        if isinstance(entry, Mapping):
            others = sorted(set(datasets) - {NAMED_DATASET})
            if others:
                raise SpecError(
                    f"a file of image names needs dataset {NAMED_DATASET} (named images); "
                    f"{others[0]} has none: give a number",
                    file=file,
                    key=key,
                )
            share: Share = label_list(entry, file, key)
        else:
            share = (check_fraction(entry, file, key), None)
        seen = out.setdefault(share[0], share)
        if seen != share:
            raise SpecError(
                f"fraction {share[0]:g} is given twice, differently: one entry per fraction "
                "(the report has a gap per fraction)",
                file=file,
                key=key,
            )
    return tuple(out.values())


def evaluation_identity(item: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies an evaluation: the item with its list of names as the list's
    content (sha256), never its path."""
    listed = item.get("label_list")
    return dict(item) if listed is None else {**item, "label_list": listed["sha256"]}


def _evaluation(data: Any, file: str, key: str) -> dict[str, Any]:
    """One evaluation of a run spec's `evals`: an `eval` section with its label fraction."""
    if not isinstance(data, Mapping):
        raise SpecError(
            "must be a mapping (an eval section with label_fraction)", file=file, key=key
        )
    fraction = check_fraction(data.get("label_fraction", 1.0), file, f"{key}.label_fraction")
    section = {k: v for k, v in data.items() if k not in ("label_fraction", "label_list")}
    checked = validate(EvalConfig, section, file, f"{key}.").model_dump()
    listed = data.get("label_list")
    if listed is None:
        return {**eval_identity(checked), "label_fraction": fraction}
    listed = checked_list(listed, file, f"{key}.label_list")
    return {**eval_identity(checked), "label_fraction": fraction, "label_list": listed}


def identity_of_dataset(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The data set's identity: its root is where a published data set lives (not part of
    the result), except for an image folder, whose root IS the data."""
    if dataset.get("name") == "imagefolder":
        return dict(dataset)
    return {k: v for k, v in dataset.items() if ("dataset", k) not in _IDENTITY_EXCLUDED}


def _runs_of_configs(
    configs: list[dict[str, Any]], method: str, fractions: tuple[Share, ...]
) -> list[tuple[dict[str, Any], str, tuple[dict[str, Any], ...]]]:
    """(config, its identity's canonical JSON, its evaluations) per run: with `fractions`
    (a method pretrained without labels), configs that differ only in `eval` are one
    pretraining owning every (eval section x fraction), the first section its config's."""
    runs: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for config in configs:
        c_json = _canonical(identity_of_config(config, method))
        first, evals = runs.setdefault(c_json, (config, []))
        if fractions:
            section = eval_identity(config.get("eval") or {})
            for fraction, listed in fractions:
                item = {**section, "label_fraction": fraction}
                if listed is not None:
                    item["label_list"] = listed
                if item not in evals:
                    evals.append(item)
    return [
        (config, c_json, () if evals == [_default_eval(config)] else tuple(evals))
        for c_json, (config, evals) in runs.items()
    ]


def _default_eval(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**eval_identity(config.get("eval") or {}), "label_fraction": 1.0}


def _unique(runs: list[Any], file: str) -> list[Any]:
    """Runs by run_id; two different specs with one id (they differ only where the
    identity does not look, e.g. a CIFAR root axis) are an error, never a silent drop."""
    out: dict[str, Any] = {}
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
