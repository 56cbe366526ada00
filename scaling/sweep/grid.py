"""A sweep section's grid: any scalar field given as a list is an axis; the section is
validated with the axes' first values and each axis value on its own, then expanded as
the product of its axes (`scaling.sweep.spec.load_sweep` multiplies the sections)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scaling.errors import SpecError
from scaling.sweep.config import StrictModel, check_keys, submodel, validate


@dataclass(frozen=True)
class Grid:
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


def section_grid(raw: Mapping[str, Any], model: type[StrictModel], file: str, prefix: str) -> Grid:
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
    return Grid(base=base.model_dump(), axes=tuple(validated_axes))


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
