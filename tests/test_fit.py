from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.report import fit as F
from scaling.report import gapcurve as G


def law(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    return e + a * x**-alpha


def draw(seed: int, xs: np.ndarray, reps: int, sigma: float, e=0.05, a=3.0, alpha=0.3):
    rng = np.random.default_rng(seed)
    x = np.repeat(xs, reps)
    return x, law(x, e, a, alpha) * np.exp(rng.normal(0, sigma, len(x)))


def test_recovers_known_parameters_and_intervals_cover_them() -> None:
    x, y = draw(1, np.geomspace(1e5, 1e8, 8), 3, 0.02)
    fit = F.fit_power_law(x, y, n_boot=400, label="t")
    p, iv = fit.params(), fit.intervals()
    assert fit.ok and fit.n_runs == 24 and fit.n_x == 8
    assert p["E"] == pytest.approx(0.05, rel=0.25)
    assert p["A"] == pytest.approx(3.0, rel=0.35)
    assert p["alpha"] == pytest.approx(0.3, abs=0.03)
    for name in ("E", "A", "alpha"):  # coverage of the truth: the repeated-draws test
        assert iv[name][0] <= p[name] <= iv[name][1]
    assert iv["alpha"][1] - iv["alpha"][0] < 0.1
    x_new = np.array([3e5, 3e7])
    np.testing.assert_allclose(fit.predict(x_new), law(x_new, 0.05, 3.0, 0.3), rtol=0.03)
    lo, hi = fit.band(x_new)
    assert (lo <= fit.predict(x_new)).all() and (fit.predict(x_new) <= hi).all()


def test_exact_law_is_recovered_to_high_precision() -> None:
    x = np.geomspace(1e4, 1e9, 10)
    fit = F.fit_power_law(x, law(x, 0.1, 20.0, 0.4), n_boot=0, delta=1e-3)
    assert fit.params()["E"] == pytest.approx(0.1, rel=1e-4)
    assert fit.params()["A"] == pytest.approx(20.0, rel=1e-3)
    assert fit.params()["alpha"] == pytest.approx(0.4, rel=1e-4)


@pytest.mark.parametrize("delta", [1e-3, 0.03])
def test_optimum_matches_scipy_least_squares_huber(delta: float) -> None:
    """Independent reference: scipy's trust-region solver with its Huber loss (the same
    objective: 0.5 r^2 inside delta, delta (|r| - delta/2) outside), from many starts."""
    optimize = pytest.importorskip("scipy.optimize")
    x, y = draw(7, np.geomspace(1e5, 1e8, 7), 2, 0.05)
    y[3] *= 1.8  # an outlier: the Huber part matters
    fit = F.fit_power_law(x, y, n_boot=0, delta=delta)
    u, logy = np.log(x) - math.log(fit.x_ref), np.log(y)

    def res(t: np.ndarray) -> np.ndarray:
        return np.logaddexp(t[0], t[1] - t[2] * u) - logy

    def objective(t: np.ndarray) -> float:
        return float(F.huber(res(t), delta).sum())

    best = min(
        (
            optimize.least_squares(
                res,
                t0,
                loss="huber",
                f_scale=delta,
                method="trf",
                bounds=(F._LOWER, F._UPPER),
                xtol=1e-14,
                ftol=1e-14,
                gtol=1e-14,
            ).x
            for t0 in [(-4.0, -1.0, 0.2), (-3.0, -0.5, 0.5), (-10.0, -1.5, 0.1), (-2.5, -2.0, 1.0)]
        ),
        key=objective,
    )
    assert objective(fit.theta) <= objective(best) * (1 + 1e-6) + 1e-12
    np.testing.assert_allclose(fit.theta, best, atol=2e-3)


def test_ninety_percent_intervals_cover_the_truth_about_ninety_percent() -> None:
    """100 synthetic draws (8 sizes x 3 seeds, 3% noise), 200 replicates each."""
    xs, truth = np.geomspace(1e5, 1e8, 8), (0.05, 3.0, 0.3)
    hits = {"E": 0, "alpha": 0, "err at 1e6": 0}
    repeats = 100
    for i in range(repeats):
        x, y = draw(1000 + i, xs, 3, 0.03)
        fit = F.fit_power_law(x, y, n_boot=200, seed=i)
        iv = fit.intervals()
        hits["E"] += iv["E"][0] <= truth[0] <= iv["E"][1]
        hits["alpha"] += iv["alpha"][0] <= truth[2] <= iv["alpha"][1]
        lo, hi = fit.band(np.array([1e6]))
        hits["err at 1e6"] += bool(lo[0] <= law(np.array(1e6), *truth) <= hi[0])
    for name, n in hits.items():
        assert 0.8 <= n / repeats <= 0.98, (name, n)


def test_too_few_points_says_so_and_fits_nothing() -> None:
    x = np.repeat([1e6, 2e6, 4e6], 5)
    fit = F.fit_power_law(x, np.full(len(x), 0.2), x_name="encoder parameters")
    assert fit.status == "too_few_points" and not fit.ok
    assert "3 distinct encoder parameters" in fit.message and "at least 4" in fit.message
    assert fit.theta is None and "params" not in fit.to_dict()
    lo, hi = fit.band(np.array([1e6]))
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_bad_values_are_dropped_and_perfect_scores_are_floored() -> None:
    x = np.array([1e5, 1e6, 1e7, 1e8, 1e9, np.nan, 1e7])
    err = law(x, 0.05, 3.0, 0.3)
    err[-1] = 0.0  # a perfect score: log would be -inf
    err[-3] = np.nan
    fit = F.fit_power_law(x, err, n_boot=50)
    assert fit.ok and fit.n_runs == 5 and fit.n_x == 4  # x nan and err nan dropped
    assert np.isfinite(fit.theta).all()
    # one run at most sizes: resampling can only drop sizes, so no interval is claimed
    assert F.NO_INTERVAL in fit.notes and fit.intervals() == {} and fit.boot is not None
    assert len(fit.boot) == 0


def test_one_seed_gives_no_interval_and_seeds_give_one() -> None:
    x = np.repeat([1e5, 1e6, 1e7, 1e8, 1e9], 3)
    rng = np.random.default_rng(0)
    err = law(x, 0.05, 3.0, 0.3) * np.exp(rng.normal(0, 0.05, len(x)))
    one = F.fit_power_law(x[::3], err[::3], n_boot=200)
    assert one.ok and one.intervals() == {} and F.NO_INTERVAL in one.notes
    lo, hi = np.array(one.band(np.array([1e6]))).ravel()
    assert np.isnan(lo) and np.isnan(hi)  # nothing to draw
    three = F.fit_power_law(x, err, n_boot=200)
    (e_lo, e_hi) = three.intervals()["E"]
    assert e_lo < three.params()["E"] < e_hi or e_lo <= three.params()["E"] <= e_hi
    assert e_hi > e_lo and F.NO_INTERVAL not in three.notes


def test_pure_power_law_notes_that_e_is_at_its_bound() -> None:
    x = np.geomspace(1e4, 1e9, 8)
    fit = F.fit_power_law(x, 5.0 * x**-0.3, n_boot=50, delta=1e-3)
    assert fit.params()["E"] < 1e-6
    assert any("lower bound" in n for n in fit.notes)
    few = F.fit_power_law(x[:5], 5.0 * x[:5] ** -0.3 + 0.01, n_boot=20)
    assert any("only 5 distinct" in n for n in few.notes)


def known(
    e: float, a: float, alpha: float, x_min: float, x_max: float, label: str
) -> F.PowerLawFit:
    """A fit with given parameters and no bootstrap (x_ref 1: A' == A)."""
    return F.PowerLawFit(
        label=label,
        x_name="encoder parameters",
        status="ok",
        message="",
        n_runs=8,
        n_x=8,
        x_min=x_min,
        x_max=x_max,
        theta=np.array([math.log(e), math.log(a), alpha]),
    )


def test_gap_closing_point_matches_the_analytic_solution() -> None:
    # gap = 100 * (10 - 1) * x^-0.5 points = 1  <=>  x = 900^2 = 810,000
    sup = known(0.1, 1.0, 0.5, 1e4, 1e5, "supervised")
    sim = known(0.1, 10.0, 0.5, 1e4, 1e5, "simclr")
    curve = G.gap_curve(sup, sim, points=4000)
    assert curve is not None
    assert curve.closes_at == pytest.approx(810_000, rel=2e-3)
    assert "8.1x the largest model" in curve.statement and "Extrapolated" in curve.statement
    np.testing.assert_allclose(curve.gap, 900 * curve.x**-0.5)
    inside = G.gap_curve(known(0.1, 1.0, 0.5, 1e4, 1e6, "s"), known(0.1, 10.0, 0.5, 1e4, 1e6, "c"))
    assert inside is not None and "within the range of models trained" in inside.statement


def test_gap_that_never_closes_states_the_asymptote() -> None:
    sup = known(0.10, 1.0, 0.5, 1e4, 1e6, "supervised")
    sim = known(0.15, 10.0, 0.5, 1e4, 1e6, "simclr")
    curve = G.gap_curve(sup, sim)
    assert curve is not None and math.isinf(curve.closes_at)
    assert curve.asymptote == pytest.approx(5.0)
    assert "stays above 1 point" in curve.statement and "not a measurement" in curve.statement
    assert curve.to_dict()["closes_at"] is None
    closed = G.gap_curve(sup, known(0.10, 1.001, 0.5, 1e4, 1e6, "c"))
    assert closed is not None and "whole range" in closed.statement


def test_gap_curve_needs_two_curves() -> None:
    sup = known(0.1, 1.0, 0.5, 1e4, 1e6, "supervised")
    few = F.fit_power_law([1e4, 1e5], [0.3, 0.2])
    assert G.gap_curve(sup, few) is None


def test_closing_point_is_where_the_gap_stays_under_the_threshold() -> None:
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    gaps = np.array(
        [
            [3.0, 0.5, 2.0, 0.5],  # dips, comes back, closes for good between 100 and 1000
            [0.5, 0.2, 0.1, 0.0],  # under everywhere
            [5.0, 4.0, 3.0, 2.0],  # never
        ]
    )
    out = G._closing(x, gaps, 1.0)
    # linear in the gap, log in x: 2.0 -> 0.5 crosses 1.0 at 2/3 of the decade
    assert out[0] == pytest.approx(10 ** (2 + 2 / 3))
    assert out[1] == 1.0 and math.isinf(out[2])


def test_human_numbers() -> None:
    assert G.human(23_508_032) == "23.5M" and G.human(1.5e18) == "1.5E" and G.human(512) == "512"
