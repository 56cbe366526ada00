"""One-variable laws: the solver against scipy, each form's Jacobian, recovery of known
laws within their intervals, what a fit says when its data cannot support an interval,
and the gap curve between two laws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.report import fit as F
from scaling.report import forms
from scaling.report import gapcurve as G
from scaling.report.bootstrap import FormFit
from scaling.report.solver import huber


def law(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    return e + a * x**-alpha


def draw(seed: int, xs: np.ndarray, reps: int, points: float, e=0.03, a=3.0, alpha=0.35):
    """Runs at xs (reps seeds each) with Gaussian noise of `points` points of top-1."""
    rng = np.random.default_rng(seed)
    x = np.repeat(xs, reps)
    return x, law(x, e, a, alpha) + rng.normal(0, points / 100, len(x))


def test_recovers_known_parameters_and_intervals_cover_them() -> None:
    xs = 5e3 * 4.0 ** np.arange(7)
    x, y = draw(1, xs, 3, 0.5)
    fit = F.fit_power_law(x, y, n_boot=400, label="t")
    assert fit.ok and fit.n_runs == 21 and fit.n_x == 7 and fit.has_interval
    assert fit.form is forms.FormName.SATURATING  # the pure law fails its back-test
    p, iv = fit.params(), fit.intervals()
    for name, truth in (("E", 0.03), ("A", 3.0), ("alpha", 0.35)):
        assert iv[name][0] <= truth <= iv[name][1], (name, iv[name], p[name])
    assert p["alpha"] == pytest.approx(0.35, abs=0.05)
    x_new = np.array([xs[-1], 10 * xs[-1]])  # the largest size, and the reach of the band
    lo, hi = fit.band(x_new)
    assert ((lo <= law(x_new, 0.03, 3.0, 0.35)) & (law(x_new, 0.03, 3.0, 0.35) <= hi)).all()
    assert fit.backtest is not None and fit.backtest.passed and len(fit.backtest.held) == 2
    assert "smallest held-out error" in fit.choice and fit.withheld == ""


def test_exact_law_is_recovered_to_high_precision() -> None:
    x = np.geomspace(1e4, 1e9, 10)
    fit = F.fit_power_law(x, law(x, 0.1, 20.0, 0.4), n_boot=0, delta=1e-3, backtest=False)
    assert fit.params()["E"] == pytest.approx(0.1, rel=1e-4)
    assert fit.params()["A"] == pytest.approx(20.0, rel=1e-3)
    assert fit.params()["alpha"] == pytest.approx(0.4, rel=1e-4)


@pytest.mark.parametrize("delta", [1e-3, 0.03])
def test_optimum_matches_scipy_least_squares_huber(delta: float) -> None:
    """Independent reference: scipy's trust-region solver with its Huber loss (the same
    objective: 0.5 r^2 inside delta, delta (|r| - delta/2) outside), from many starts."""
    optimize = pytest.importorskip("scipy.optimize")
    xs = np.geomspace(1e5, 1e8, 7)
    x = np.repeat(xs, 2)
    y = law(x, 0.05, 3.0, 0.3) * np.exp(np.random.default_rng(7).normal(0, 0.05, len(x)))
    y[3] *= 1.8  # an outlier: the Huber part matters
    fit = F.fit_power_law(x, y, n_boot=0, delta=delta, forms=(forms.SATURATING,))
    theta, log_ref = fit.chosen.theta, fit.chosen.log_ref
    u, logy = np.log(x) - log_ref[0], np.log(y)

    def res(t: np.ndarray) -> np.ndarray:
        return np.logaddexp(t[0], t[1] - t[2] * u) - logy

    def loss(t: np.ndarray) -> float:
        return float(huber(res(t), delta).sum())

    bounds = forms.SATURATING.bounds(u[:, None])
    best = min(
        (
            optimize.least_squares(
                res,
                t0,
                loss="huber",
                f_scale=delta,
                method="trf",
                bounds=bounds,
                xtol=1e-14,
                ftol=1e-14,
                gtol=1e-14,
            ).x
            for t0 in [(-4.0, -1.0, 0.2), (-3.0, -0.5, 0.5), (-10.0, -1.5, 0.1), (-2.5, -2.0, 1.0)]
        ),
        key=loss,
    )
    assert loss(theta) <= loss(best) * (1 + 1e-6) + 1e-12
    np.testing.assert_allclose(theta, best, atol=2e-3)


@pytest.mark.parametrize("form", list(forms.FORMS.values()), ids=str)
def test_jacobian_matches_finite_differences(form: forms.Form) -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(0, 2, (9, form.dims))
    theta = {
        forms.FormName.SATURATING: [-3.0, -1.0, 0.4],
        forms.FormName.PURE: [-1.5, 0.3],
        forms.FormName.BROKEN: [-1.0, 0.2, 0.7, 0.3],
        forms.FormName.JOINT: [-4.0, -1.5, 0.3, -2.0, 0.5],
    }[form.name]
    t = np.array([theta], float)
    lp = form.log_pred(t, u)
    jac = form.jacobian(t, u, lp)[0]
    eps = 1e-6
    for k in range(form.n_params):
        step = np.zeros_like(t)
        step[0, k] = eps
        numeric = (form.log_pred(t + step, u) - form.log_pred(t - step, u))[0] / (2 * eps)
        np.testing.assert_allclose(jac[:, k], numeric, rtol=1e-5, atol=1e-7)


def test_too_few_points_says_so_and_fits_nothing() -> None:
    x = np.repeat([1e6, 2e6, 4e6], 5)
    fit = F.fit_power_law(x, np.full(len(x), 0.2), x_name="encoder parameters")
    assert fit.status == "too_few_points" and not fit.ok
    assert "3 distinct encoder parameters" in fit.message and "at least 4" in fit.message
    assert not fit.members and "params" not in fit.to_dict()
    lo, hi = fit.band(np.array([1e6]))
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_bad_values_are_dropped_and_perfect_scores_are_floored() -> None:
    x = np.array([1e5, 1e6, 1e7, 1e8, 1e9, 1e10, np.nan, 1e7, 1e9])
    err = law(x, 0.05, 3.0, 0.3)
    err[-2] = 0.0  # a perfect score: log would be -inf
    err[-3] = np.nan
    fit = F.fit_power_law(x, err, n_boot=50)
    assert fit.ok and fit.n_runs == 8 and fit.n_x == 6  # x nan and err nan dropped
    assert np.isfinite(fit.chosen.theta).all()


def test_too_few_residual_degrees_of_freedom_draw_no_interval_and_say_why() -> None:
    """4 sizes x 1 seed: 1 degree of freedom, where no interval was calibrated."""
    xs = 5e3 * 4.0 ** np.arange(4)
    x, y = draw(0, xs, 1, 1.0)
    one = F.fit_power_law(x, y, n_boot=200)
    assert one.ok and not one.reliable and not one.has_interval and one.intervals() == {}
    assert any("the interval is unreliable" in n for n in one.notes)
    lo, hi = one.band(np.array([1e5]))
    assert np.isnan(lo).all() and np.isnan(hi).all()  # nothing to draw
    x3, y3 = draw(0, xs, 3, 1.0)
    three = F.fit_power_law(x3, y3, n_boot=200)
    assert three.reliable and three.has_interval and three.chosen.dof == 9
    e_lo, e_hi = three.intervals()["alpha"]
    assert e_lo < three.params()["alpha"] < e_hi


def test_an_error_floor_at_zero_in_every_replicate_is_not_measurable() -> None:
    """A pure power law fitted as a saturating one: E is 0 in every replicate, so the
    asymptote has no interval (not '0.00 to 0.00'), and the gap curve says so."""
    xs = np.geomspace(1e4, 1e9, 8)
    x = np.repeat(xs, 3)
    y = 5.0 * x**-0.3 * np.exp(np.random.default_rng(3).normal(0, 0.002, len(x)))
    fit = F.fit_power_law(x, y, n_boot=200, forms=(forms.SATURATING,))
    assert fit.has_interval and fit.intervals()["E"] is None
    assert any(F.NOT_MEASURABLE in n for n in fit.notes)
    assert fit.to_dict()["intervals"]["E"] is None
    other = F.fit_power_law(x, y * 1.5, n_boot=200, forms=(forms.SATURATING,))
    curve = G.gap_curve(fit, other)
    assert curve is not None and math.isnan(curve.asymptote)
    assert "0.00 to 0.00" not in curve.statement
    if math.isinf(curve.closes_at):
        assert F.NOT_MEASURABLE in curve.statement


def known(
    e: float, a: float, alpha: float, x_min: float, x_max: float, label: str, withheld: str = ""
) -> F.LawFit:
    """A law with given parameters and no replicates (log_ref 0: A' == A)."""
    member = FormFit(
        forms.SATURATING,
        np.zeros(1),
        np.array([math.log(e), math.log(a), alpha]),
        np.empty((0, 3)),
        np.empty(0),
        math.nan,
        5,
        1e-3,
    )
    return F.LawFit(
        label=label,
        x_name="encoder parameters",
        status="ok",
        message="",
        n_runs=8,
        n_x=8,
        x_min=x_min,
        x_max=x_max,
        members=(member,),
        withheld=withheld,
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
    assert curve.x[-1] == pytest.approx(F.REACH * 1e5)  # drawn no further than checked
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


def test_a_withheld_extrapolation_stops_the_gap_curve_at_the_data() -> None:
    sup = known(0.1, 1.0, 0.5, 1e4, 1e5, "supervised", withheld="the law failed its back-test")
    sim = known(0.1, 10.0, 0.5, 1e4, 1e5, "simclr")
    curve = G.gap_curve(sup, sim)
    assert curve is not None and curve.reach == 1.0 and curve.x[-1] == pytest.approx(1e5)
    assert math.isinf(curve.closes_at)  # it would close at 810k, beyond the data
    assert "not extrapolated" in curve.statement and "failed its back-test" in curve.statement
    assert curve.to_dict()["extrapolation_withheld"]


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


def test_hypothetical_runs_drawn_around_a_given_mean_land_where_they_are_asked() -> None:
    """fit_batch's extra_mean: the hypothetical runs' error is drawn around it. Given the
    form's own prediction, the replicates are those drawn without it, bit for bit (the
    runs are placed, not permuted); given a mean 1.5x higher at one of them, the
    replicates' mean there rises and stays at the other."""
    from scaling.report.bootstrap import fit_batch

    rng = np.random.default_rng(3)
    x = np.repeat([1e4, 4e4, 1.6e5, 6.4e5, 2.6e6], 2).astype(float)
    err = 0.02 + 3.0 * x**-0.35 + rng.normal(0, 0.005, len(x))
    more = np.array([[5e3], [5e6]])  # one below, one above the data: both ends of the order

    def drawn(mean: np.ndarray | None = None) -> object:
        return fit_batch(forms.SATURATING, x[:, None], err, n_boot=200, extra=more, extra_mean=mean)

    own = drawn()
    fit = FormFit.of(own, 0)
    np.testing.assert_array_equal(drawn(fit.predict(more[:, 0])[None]).boot, own.boot)
    high = drawn((fit.predict(more[:, 0]) * [1.0, 1.5])[None])
    up = FormFit.of(high, 0).draws([5e6])[:, 0].mean() / fit.draws([5e6])[:, 0].mean()
    down = FormFit.of(high, 0).draws([5e3])[:, 0].mean() / fit.draws([5e3])[:, 0].mean()
    assert up > 1.1 and abs(down - 1) < 0.05
