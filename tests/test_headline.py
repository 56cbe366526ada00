"""The report says what its data support: intervals from seeds, a measured headline,
recipes chosen on validation, and warnings where the numbers are limited."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from scaling.report import checks, gaps, headline, laws
from scaling.report.results import to_table
from scaling.train.evaluate import VALIDATION_FRACTION, validation_split
from tests.test_gaps import run

WIDTHS = [0.125, 0.25, 0.5, 1.0, 2.0]


def sweep_rows(
    gap_at: dict[float, float], seeds: int, noise: float = 0.004
) -> list[dict[str, Any]]:
    """Supervised at 0.95 - 0.02/width; SimCLR `gap_at[width]` points below, per seed."""
    rng = np.random.default_rng(0)
    rows, i = [], 0
    for w in WIDTHS:
        sup = 0.95 - 0.02 / w
        for s in range(seeds):
            for method, top1 in (("supervised", sup), ("simclr", sup - gap_at[w] / 100)):
                i += 1
                val = None if method == "supervised" else top1
                rows.append(
                    run(
                        i,
                        method,
                        18,
                        w,
                        top1 + rng.normal(0, noise) * (seeds > 1),
                        seed=s,
                        val_top1=val,
                        train_loss_trend=0.01,
                    )
                )
    return rows


def answer(rows: list[dict[str, Any]]) -> headline.Answer:
    df = to_table(rows).to_pandas()
    g = gaps.gap_table(df)
    (a,) = headline.answers(g, laws.fit_sweep(df, n_boot=200))
    return a


def test_welch_interval_matches_scipy() -> None:
    a, b = [91.0, 92.5, 90.2], [85.0, 88.1, 86.3, 87.9]
    cell = lambda v: {"top1": np.mean(v), "std": np.std(v, ddof=1), "n": len(v)}  # noqa: E731
    se, lo, hi, dof = gaps.welch(cell(a), cell(b))
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_one_seed_prints_no_interval_and_says_why() -> None:
    rows = sweep_rows({w: 3.0 for w in WIDTHS}, seeds=1)
    g = gaps.gap_table(to_table(rows))
    best = g[g["kind"] == "best"]
    assert best["gap_lo"].isna().all() and best["gap_hi"].isna().all()
    assert all(gaps.ONE_SEED in note for note in best["note"])
    a = answer(rows)
    assert "one seed: no interval" in a.measured and "cannot be told" in a.measured
    assert "interval 3.0" not in a.measured and "interval" not in a.extrapolation.replace(
        "no interval", ""
    )
    warnings = checks.validity_warnings(to_table(rows).to_pandas(), g)
    assert any(w.startswith("one seed") for w in warnings)


def test_headline_says_the_gap_closed_when_the_largest_model_is_under_the_threshold() -> None:
    rows = sweep_rows({0.125: 6.0, 0.25: 4.0, 0.5: 2.5, 1.0: 1.2, 2.0: 0.3}, seeds=3)
    a = answer(rows)
    assert a.measured.startswith("Measured (one SimCLR recipe, batch 256, 100 epochs): the gap")
    assert "It shrinks by" in a.measured and "under 1 point (interval included)" in a.measured
    # the fit can never claim the gap stays open past the largest model trained
    assert "stays above" not in a.extrapolation


def test_no_measurable_trend_is_said_as_such() -> None:
    rows = sweep_rows({w: 3.0 for w in WIDTHS}, seeds=3, noise=0.01)
    a = answer(rows)
    assert "within noise: no measurable trend" in a.measured


def test_a_fit_that_contradicts_the_measurements_is_not_stated() -> None:
    from scaling.report.gapcurve import GapCurve
    from scaling.report.laws import FitSet, SweepGap

    x = np.geomspace(1e5, 1e9, 5)
    curve = GapCurve(
        label="c",
        threshold=1.0,
        level=0.9,
        x=x,
        gap=np.full(5, 3.9),
        lo=x,
        hi=x,
        data_min=1e5,
        data_max=1e6,
        reach=10.0,
        closes_at=math.inf,
        closes_interval=(math.nan, math.nan),
        asymptote=3.9,
        asymptote_interval=(math.nan, math.nan),
        withheld="",
        statement="does not close",
    )
    fits = FitSet(gaps=[SweepGap({"dataset": "cifar10"}, {}, curve, curve.statement, True)])
    rows = sweep_rows({0.125: 4.17, 0.25: -1.11, 0.5: 0.0, 1.0: 0.83, 2.0: 0.5}, seeds=1)
    g = gaps.gap_table(to_table(rows))
    (a,) = headline.answers(g, fits)
    assert "is not stated" in a.extrapolation and "does not close" not in a.extrapolation


def test_recipes_are_chosen_on_validation_not_on_test() -> None:
    rows = []
    for i, (batch, test, val) in enumerate([(64, 0.90, 0.80), (128, 0.85, 0.86)]):
        rows.append(run(i, "simclr", 18, 1.0, test, batch=batch, val_top1=val))
    rows.append(run(9, "supervised", 18, 1.0, 0.93, batch=128))
    g = gaps.gap_table(to_table(rows))
    best = g[(g["kind"] == "best") & (g["method"] == "simclr")].iloc[0]
    assert best["recipe"] == "best: batch 128, 100 epochs" and best["selected_by"] == "validation"
    assert best["top1"] == pytest.approx(85.0)  # the chosen recipe's TEST accuracy
    for r in rows:
        r.pop("val_top1", None)
    best = gaps.gap_table(to_table(rows))
    best = best[(best["kind"] == "best") & (best["method"] == "simclr")].iloc[0]
    assert best["selected_by"] == "test" and gaps.SELECTED_ON_TEST in best["note"]


@pytest.mark.parametrize("n", [2, 10, 1437, 5000])
def test_validation_split_is_held_out_from_the_training_images(n: int) -> None:
    fit, val = validation_split(n)
    assert set(fit.tolist()).isdisjoint(val.tolist())
    assert sorted(fit.tolist() + val.tolist()) == list(range(n))  # training indices only
    assert len(val) == min(n - 1, max(1, round(VALIDATION_FRACTION * n)))
    assert torch_equal(validation_split(n)[1], val)  # the same images for every run


def torch_equal(a: Any, b: Any) -> bool:
    return bool((a == b).all())


def test_a_baseline_still_training_is_flagged() -> None:
    rows = sweep_rows({w: 3.0 for w in WIDTHS}, seeds=2)
    for r in rows:
        if r["method"] == "supervised" and r["width"] >= 1.0:
            r["train_loss_trend"] = 0.4
    df = to_table(rows).to_pandas()
    warnings = checks.validity_warnings(df, gaps.gap_table(df))
    assert any("has not converged in 4 of 10 runs (widths 1x, 2x)" in w for w in warnings)


def test_a_test_set_too_small_for_the_gaps_is_flagged() -> None:
    rows = [dict(r, dataset="digits") for r in sweep_rows({w: 0.5 for w in WIDTHS}, seeds=2)]
    df = to_table(rows).to_pandas()
    warnings = checks.validity_warnings(df, gaps.gap_table(df))
    assert any(w.startswith("the test set has 360 images") for w in warnings)
    wide = to_table(sweep_rows({w: 3.0 for w in WIDTHS}, seeds=2)).to_pandas()  # CIFAR-10's 10k
    assert not any("test set" in w for w in checks.validity_warnings(wide, gaps.gap_table(wide)))


def test_loss_trend() -> None:
    from scaling.report.results import loss_trend

    assert loss_trend([5, 4, 3, 2, 1.0]) == pytest.approx(2 / 3)  # last 2 epochs
    assert loss_trend([5, 1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert loss_trend([1.0]) is None
