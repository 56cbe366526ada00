"""The method registry: every entry complete, implemented by every stage, named nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from scaling.models.resnet import HEADS, build_network
from scaling.plan.costs import eval_flops
from scaling.plan.data_info import train_split
from scaling.sweep.methods import (
    METHODS,
    Augmentation,
    BNGrouping,
    Evaluation,
    Head,
    MethodInfo,
    Objective,
    get_method,
    reference_method,
    register,
)
from scaling.train.augment import AUGMENTATIONS, SimCLRAugment
from scaling.train.evaluate import EVALUATIONS
from scaling.train.steps import STEPS

PACKAGE = Path(__file__).resolve().parent.parent / "scaling"
REGISTRY = PACKAGE / "sweep" / "methods.py"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_component_a_method_names_is_implemented(name: str) -> None:
    info = METHODS[name]
    assert info.name == name and info.description
    assert info.head in HEADS
    assert info.augmentation in AUGMENTATIONS
    assert info.objective in STEPS
    assert info.evaluation in EVALUATIONS
    assert info.views >= 1 and info.warmup_cap_epochs >= 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_its_network_and_augmentation_from_its_default_config(
    name: str,
) -> None:
    info = METHODS[name]
    config = info.config().model_dump()
    net = build_network(name, depth=10, width=0.125, stem="cifar", num_classes=3)
    assert hasattr(net, "encoder")
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape[0] == 2
    aug = AUGMENTATIONS[info.augmentation](8, config, False)
    assert isinstance(aug, SimCLRAugment)
    fit_passes, val_passes, test_passes = info.eval_passes(config.get("eval"))
    assert fit_passes >= 0 and val_passes >= 1 and test_passes >= 1
    assert str(info.bn_grouping(whole_batch=True)) in info.groupings()
    assert info.monitor_every(config) >= 0
    assert train_split("digits", name) == "train"


def test_every_component_is_used_by_some_method() -> None:
    """A component no method names is dead code (or a registration was forgotten)."""
    for kind, field in (
        (Head, "head"),
        (Augmentation, "augmentation"),
        (Objective, "objective"),
        (Evaluation, "evaluation"),
    ):  # noqa: E127
        assert set(kind) == {getattr(m, field) for m in METHODS.values()}, kind
    used = {g for m in METHODS.values() for g in m.groupings()}
    assert used == {str(g) for g in BNGrouping}


def test_the_registry_answers_what_other_modules_used_to_branch_on() -> None:
    assert reference_method() == "supervised"
    assert train_split("stl10", "simclr") == "train+unlabeled"
    assert train_split("stl10", "supervised") == "train"
    augmented = {"protocol": "augmented", "epochs": 3}
    assert eval_flops(10, (100, 10, 20), "simclr", augmented) == 10 * (4 * 100 + 10 + 20)
    assert get_method("simclr").monitor_every({"eval": {"knn_every": 5}}) == 5
    assert get_method("supervised").monitor_every({"eval": {"knn_every": 5}}) == 0


def test_a_name_or_a_second_reference_registered_twice_is_an_error() -> None:
    simclr = METHODS["simclr"]
    with pytest.raises(ValueError, match="already registered"):
        register(simclr)
    fake = MethodInfo(**{**simclr.__dict__, "name": "another-baseline", "reference": True})
    with pytest.raises(ValueError, match="reference"):
        register(fake)
    assert "another-baseline" not in METHODS


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_no_module_outside_the_registry_names_a_method() -> None:
    """Branches on a method's name belong in its registry entry (STYLE.md 4)."""
    named = {
        str(path.relative_to(PACKAGE.parent)): sorted(_string_constants(path) & set(METHODS))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != REGISTRY
    }
    assert not {k: v for k, v in named.items() if v}
