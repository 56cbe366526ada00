"""Loading YAML into strict pydantic models with one-line, actionable errors.

Shared by sweep specs and cluster profiles: unknown keys are answered with the list
of valid ones, type errors with the key path and what is allowed, and `--set`
overrides are applied to the raw mapping before validation so they are checked too.
Types are strict (pydantic's strict mode: `true` is not a number, `"8"` is not an
integer, 2.0 is not an integer; an integer is a float), a key given twice in one mapping
is an error (YAML keeps the last one silently), and `1e-4` is a float as in YAML 1.2
(PyYAML follows YAML 1.1, where it is a string).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from scaling.errors import SpecError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


#: YAML aliases a sweep or profile may use: anchors are fine for sharing a block, but
#: unbounded aliases of aliases ("billion laughs") expand exponentially when walked
MAX_ALIASES = 100


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document with more than MAX_ALIASES aliases or a key
    given twice in one mapping, and reads YAML 1.2 floats (`1e-4`, `5E3`)."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.YAMLError(
                    f"more than {MAX_ALIASES} YAML aliases (*name); write the values out"
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """As SafeLoader's, but a key written twice is an error naming both lines (a
        merge key's values, `<<: *base`, may still be overridden: that is their use)."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (first on line {first.line + 1}); "
                        "keep one (YAML would silently use the last)",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


#: YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot or
#: without a sign (1e-4, 5E3, 1.0e9)
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """YAML text as the sweep and profile files are read (the `--set` values too)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a SpecError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("file not found", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"not UTF-8 text (byte {exc.start}); save it as UTF-8", file=str(path)
        ) from None
    except OSError as exc:
        raise SpecError(f"cannot be read ({exc.strerror or exc})", file=str(path)) from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {where}{problem}", file=str(path)) from None
    if data is None:
        raise SpecError("the file is empty; expected a mapping of keys", file=str(path))
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of keys, got {type(data).__name__}", file=str(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    """Apply `key.path=value` overrides (value parsed as YAML) to a nested mapping."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set expects key.path=value, got {item!r}", file=file)
        try:
            value = load_yaml_text(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"cannot set inside a {type(child).__name__}", file=file, key=key)
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def submodel(annotation: Any) -> type[StrictModel] | None:
    """The StrictModel inside an annotation such as `Model | None`, if any."""
    candidates = [annotation, *typing.get_args(annotation)]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, StrictModel):
            return cand
    return None


def check_keys(
    data: Mapping[str, Any], model: type[StrictModel], file: str, prefix: str = ""
) -> None:
    """Reject unknown keys anywhere in `data`, listing the valid ones."""
    fields = model.model_fields
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise SpecError(f"unknown key {key!r}; valid keys: {valid}", file=file, key=path)
        sub = submodel(fields[key].annotation)
        if sub is not None and isinstance(value, Mapping):
            check_keys(value, sub, file, prefix=f"{path}.")


def validate(model: type[StrictModel], data: Mapping[str, Any], file: str, prefix: str = "") -> Any:
    """`model.model_validate(data)` with the first error as a one-line SpecError."""
    check_keys(data, model, file, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file, prefix) from None


def validation_error(exc: ValidationError, file: str, prefix: str = "") -> SpecError:
    """The first pydantic error as a SpecError naming the key and what is allowed.

    A union (`seeds: list[int] | int`) reports one error per branch: the one to show is
    a branch whose type matched and whose bound failed (-1 is an int below 0, not "not a
    list"), else the first."""
    errors = exc.errors(include_url=False)
    same = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
    bounds = [e for e in same if not e["type"].endswith("_type") and e["type"] != "literal_error"]
    err = bounds[0] if bounds and len(same) > 1 else errors[0]
    loc = [str(p) for p in err["loc"] if not _is_union_branch(p)]
    key = prefix + ".".join(loc) if loc else prefix.rstrip(".") or None
    msg = err["msg"]
    if err["type"] == "literal_error":
        msg = "must be " + msg.removeprefix("Input should be ")
    elif msg.startswith("Input should be"):
        msg = "must be" + msg.removeprefix("Input should be")
    elif err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "value_error":  # a validator's own message
        msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "missing" and not isinstance(value, (dict, list)):
        msg = f"{msg} (got {value!r})"
    return SpecError(msg, file=file, key=key)


def _is_union_branch(part: Any) -> bool:
    # pydantic puts the tried branch of a union into the location ("int", "list[int]",
    # "literal['sqrt','linear']", "function-after[...]"); the user wrote only the key.
    return isinstance(part, str) and (
        "[" in part
        or part in {"int", "float", "str", "bool", "none", "list"}
        or part.startswith("constrained-")
    )
