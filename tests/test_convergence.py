"""Convergence judged from the training curve: one verdict, recorded by the trainer and
read by status, MLflow, the results table and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scaling.train.convergence import (
    CHANCE_SHARE,
    LOSS_SHARE,
    TOP1_SHARE,
    Convergence,
    judge,
    of_result,
)

CURVES = Path(__file__).resolve().parent / "golden" / "curves"


def records(loss: list[float], top1: list[float] | None = None) -> list[dict[str, Any]]:
    top1 = top1 or [0.0] * len(loss)
    return [
        {"epoch": i + 1, "loss": v, "top1": a}
        for i, (v, a) in enumerate(zip(loss, top1, strict=True))
    ]


def curve(epochs: int, tau: float, noise: float = 0.0, seed: int = 0) -> list[float]:
    """A loss levelling off with time constant `tau` epochs, with epoch-to-epoch noise:
    tau well under the run's length has converged, tau near it has not."""
    rng = np.random.default_rng(seed)
    t = np.arange(epochs)
    return [float(v) for v in 0.2 + 2.0 * np.exp(-t / tau) + rng.normal(0, noise, epochs)]


def test_a_curve_that_levelled_off_converged() -> None:
    loss = [2.3, 1.2, 0.6, 0.4, 0.32, 0.29, 0.28, 0.275, 0.27, 0.27]
    top1 = [0.2, 0.6, 0.8, 0.86, 0.89, 0.9, 0.905, 0.91, 0.91, 0.91]
    verdict = judge(records(loss, top1))
    assert verdict.converged and verdict.reasons == () and verdict.label == "converged"
    assert verdict.describe() == "train top-1 0.91, converged"


def test_a_loss_still_falling_at_the_end_has_not_converged() -> None:
    loss = [2.3 - 0.045 * i for i in range(10)]  # a straight line
    verdict = judge(records(loss), accuracy_plateaus=False)
    assert not verdict.converged and verdict.reasons == ("loss still falling",)
    # the last two epochs' mean against the two before, over the fall to the last two
    assert verdict.loss_share == pytest.approx(2 * 0.045 / (8.5 * 0.045))


def test_a_classifier_whose_accuracy_still_rises_has_not_converged() -> None:
    loss = [2.3, 1.0, 0.5, 0.45, 0.42, 0.41, 0.40, 0.40, 0.39, 0.39]  # nearly flat late
    top1 = [0.1, 0.15, 0.2, 0.24, 0.27, 0.3, 0.32, 0.34, 0.345, 0.35]
    verdict = judge(records(loss, top1))
    assert not verdict.converged and "training accuracy still rising" in verdict.reasons
    assert verdict.describe().startswith("train top-1 0.35")
    # a contrastive method's "accuracy" says nothing more than its loss: not judged
    assert judge(records(loss, top1), accuracy_plateaus=False).converged


def test_a_classifier_far_above_its_plateau_has_not_converged_however_level() -> None:
    """A cosine schedule flattens a short run's end: a level curve at 81% of the
    chance-level loss has not fit its training data."""
    loss = [2.32, 2.2, 2.07, 1.99, 1.95, 1.92, 1.9, 1.89, 1.885, 1.88]
    top1 = [0.11, 0.2, 0.25, 0.29, 0.31, 0.33, 0.34, 0.345, 0.347, 0.35]
    assert judge(records(loss, top1), classes=None).loss_share < LOSS_SHARE
    verdict = judge(records(loss, top1), classes=10)
    assert not verdict.converged
    assert verdict.reasons[-1] == "loss still 82% of chance level"
    assert 1.88 / math.log(10) > CHANCE_SHARE


def test_one_epoch_or_no_fall_is_never_shown_converged() -> None:
    one = judge(records([2.3], [0.11]))
    assert not one.converged and one.describe() == "train top-1 0.11, one epoch: no curve to judge"
    flat = judge(records([2.3] * 6, [0.1] * 6))
    assert not flat.converged and "the loss did not fall" in flat.reasons


def test_noise_neither_hides_nor_fakes_a_trend() -> None:
    """Epoch-to-epoch noise of 2% of the fall, over 50 draws: a levelled curve is always
    converged, a run stopped on its straight descent is always caught."""
    for seed in range(50):
        done = curve(30, tau=4, noise=0.04, seed=seed)
        rng = np.random.default_rng(seed)
        early = [2.3 - 0.05 * t + rng.normal(0, 0.01) for t in range(10)]
        assert judge(records(done), accuracy_plateaus=False).converged, seed
        assert not judge(records(early), accuracy_plateaus=False).converged, seed


def test_the_recorded_verdict_wins_and_old_results_are_judged_from_their_curve() -> None:
    falling = records([2.3 - 0.045 * i for i in range(10)])
    recorded = Convergence(True, 10, 0.9, 0.01, 0.01).to_dict()
    assert of_result({"top1": 0.9, "convergence": recorded}, falling).converged
    assert not of_result({"top1": 0.9}, falling).converged  # judged now
    assert of_result(None, falling) is None  # unfinished: no verdict
    assert Convergence.from_dict({"converged": "x"}) is None
    round_trip = Convergence.from_dict(json.loads(json.dumps(judge(falling).to_dict())))
    assert round_trip == judge(falling)


@pytest.mark.parametrize("path", sorted(CURVES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_real_curves_get_the_verdict_they_were_recorded_with(path: Path) -> None:
    """Curves of real runs on this machine: the quickstart's (converged, both methods and
    every width) and the digits baseline the issue found (10 epochs, training top-1 0.35,
    loss still falling; and 1 epoch). The name says the method and the expected verdict."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    method, expected = path.stem.split("-")[:2]
    verdict = judge(lines, method == "supervised", classes=10)  # digits
    assert verdict.label == expected.replace("_", " "), verdict


def test_thresholds_leave_room_on_both_sides_of_the_real_curves() -> None:
    """The quickstart's shares stay well under the thresholds (a rerun on another machine
    must not flag it); the issue's baseline is well over one of them."""
    worst = {"loss": 0.0, "top1": 0.0}
    for path in CURVES.glob("*-converged-*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        verdict = judge(lines, path.name.startswith("supervised"), classes=10)
        worst["loss"] = max(worst["loss"], verdict.loss_share or 0.0)
        worst["top1"] = max(worst["top1"], verdict.top1_share or 0.0)
    assert worst["loss"] < 0.75 * LOSS_SHARE and worst["top1"] < 0.75 * TOP1_SHARE, worst
    (issue,) = CURVES.glob("supervised-not_converged-digits_10_epochs*.jsonl")
    lines = [json.loads(line) for line in issue.read_text().splitlines()]
    verdict = judge(lines, classes=10)
    chance = sum(r["loss"] for r in lines[-2:]) / 2 / math.log(10)
    assert verdict.top1_share > 1.2 * TOP1_SHARE and chance > 1.5 * CHANCE_SHARE
    assert verdict.describe() == (
        "train top-1 0.36, training accuracy still rising, loss still 81% of chance level"
    )
