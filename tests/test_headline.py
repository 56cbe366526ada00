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
                val = top1  # both methods are scored on the held-out tenth
                rows.append(
                    run(
                        i,
                        method,
                        18,
                        w,
                        top1 + rng.normal(0, noise) * (seeds > 1),
                        seed=s,
                        val_top1=val,
                        converged=True,
                        convergence="train top-1 0.99, converged",
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
    assert a.measured.startswith(
        "Measured (one SimCLR recipe, batch 256, 100 epochs; SimCLR top-1 by linear eval, "
        "supervised top-1 by own classifier): the gap"
    )
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


def test_the_supervised_recipe_is_chosen_on_validation_too() -> None:
    # Two supervised recipes: the test set prefers batch 64, the held-out tenth batch 128.
    rows = [run(0, "simclr", 18, 1.0, 0.85, val_top1=0.84)]
    for i, (batch, test, val) in enumerate([(64, 0.95, 0.90), (128, 0.93, 0.92)], start=1):
        rows.append(run(i, "supervised", 18, 1.0, test, batch=batch, val_top1=val))
    g = gaps.gap_table(to_table(rows))
    best = g[(g["kind"] == "best") & (g["method"] == "simclr")].iloc[0]
    assert best["sup_recipe"] == "batch 128, 100 epochs"
    assert best["sup_selected_by"] == "validation"
    assert best["gap"] == pytest.approx(93.0 - 85.0)  # the chosen recipe's TEST accuracy
    for r in rows:
        r.pop("val_top1", None)
    g = gaps.gap_table(to_table(rows))
    best = g[(g["kind"] == "best") & (g["method"] == "simclr")].iloc[0]
    assert (
        best["sup_selected_by"] == "test" and f"supervised {gaps.SELECTED_ON_TEST}" in best["note"]
    )
    assert "supervised recipe chosen on the test set" in answer_of(rows).measured


def answer_of(rows: list[dict[str, Any]]) -> headline.Answer:
    df = to_table(rows).to_pandas()
    (a,) = headline.answers(gaps.gap_table(df), laws.fit_sweep(df, n_boot=20))
    return a


def test_the_headline_recipe_is_ranked_on_validation_when_sizes_tie() -> None:
    # Both SimCLR recipes cover every size; test top-1 prefers batch 64, validation 128.
    rows, i = [], 0
    for w in WIDTHS:
        for method, batch, test, val in (
            ("supervised", 256, 0.95, 0.95),
            ("simclr", 64, 0.90, 0.80),
            ("simclr", 128, 0.85, 0.86),
        ):
            i += 1
            rows.append(run(i, method, 18, w, test - 0.01 / w, batch=batch, val_top1=val))
    fits = laws.fit_sweep(to_table(rows).to_pandas(), n_boot=20, n_boot_other=5)
    (head,) = [f for f in fits.params if f.role == "headline"]
    assert head.recipe["batch_size"] == 128


def test_a_baseline_that_has_not_converged_makes_no_finding() -> None:
    """Its gaps say "cannot judge" with why, in the gap table, the display, the headline
    and the warnings; never a number stated as a finding, and no fitted curve on it."""
    rows = sweep_rows({w: 3.0 for w in WIDTHS}, seeds=2)
    for r in rows:
        if r["method"] == "supervised" and r["width"] >= 1.0:
            r.update(converged=False, convergence="train top-1 0.35, loss still falling")
    df = to_table(rows).to_pandas()
    g = gaps.gap_table(df)
    best = g[g["kind"] == "best"].set_index("width")
    why = "cannot judge: the supervised baseline has not converged (train top-1 0.35, loss still falling)"
    assert (best.loc[[1.0, 2.0], "judgement"] == why).all()
    assert best.loc[[1.0, 2.0], ["gap", "gap_lo", "gap_hi"]].isna().all().all()
    assert best.loc[[0.125, 0.25, 0.5], "gap"].notna().all()
    assert (best.loc[[0.125, 0.25, 0.5], "judgement"] == "").all()
    shown = gaps.display_table(g).set_index("architecture")
    assert (shown["gap"].str.contains("cannot judge")).sum() == 2
    assert all(why in note for note in shown[shown["gap"] == "cannot judge"]["note"])
    a = answer(rows)
    assert "at R18 0.125x" in a.measured and "and 3.00 points" not in a.measured
    assert "Not judged: the supervised baseline has not converged at R18 1x" in a.measured
    assert "R18 2x" in a.measured and "loss still falling" in a.measured
    assert a.extrapolation.startswith("No fitted curve is stated")
    warnings = checks.validity_warnings(df, g)
    assert any(
        "supervised runs have not converged in 4 of 10 (widths 1x, 2x;" in w
        and "cannot be judged" in w
        for w in warnings
    )


def test_a_baseline_unconverged_at_every_size_gives_no_answer_but_why() -> None:
    rows = sweep_rows({w: 3.0 for w in WIDTHS}, seeds=1)
    for r in rows:
        if r["method"] == "supervised":
            r.update(converged=False, convergence="train top-1 0.11, one epoch: no curve to judge")
    a = answer(rows)
    assert a.measured.startswith("Cannot judge: the supervised baseline has not converged")
    assert "points" not in a.measured.split("converged at")[0]
    assert "one epoch: no curve to judge" in a.measured


def test_a_test_set_too_small_for_the_gaps_is_flagged() -> None:
    rows = [dict(r, dataset="digits") for r in sweep_rows({w: 0.5 for w in WIDTHS}, seeds=2)]
    df = to_table(rows).to_pandas()
    warnings = checks.validity_warnings(df, gaps.gap_table(df))
    assert any(w.startswith("the test set has 360 images") for w in warnings)
    wide = to_table(sweep_rows({w: 3.0 for w in WIDTHS}, seeds=2)).to_pandas()  # CIFAR-10's 10k
    assert not any("test set" in w for w in checks.validity_warnings(wide, gaps.gap_table(wide)))
