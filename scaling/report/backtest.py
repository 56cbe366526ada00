"""The back-test of a law, and the choice of form it judges (Alabdulmohsin et al. 2022:
judge a scaling law by its extrapolation).

`backtests`: each candidate form is fitted without the largest size (the largest two
where HOLDOUT_TWO or more sizes leave enough), and predicts the held-out sizes' mean error
over seeds, with a prediction interval from its parametric bootstrap (the fit's band
plus the noise of a mean of that many runs, the noise sd drawn per replicate) at
BACKTEST_LEVEL. With two sizes held out each gets a Bonferroni share of it, so that a
correct law fails its back-test at most 1 - BACKTEST_LEVEL of the time (measured:
scaling.report.calibration).

`choose`: the form with the smallest held-out error among those whose back-test passed
(every held-out measurement inside its prediction interval) gives the curve; every other
form that passed is kept beside it (the band pools their replicates), and where one
predicts differently at the reach of the extrapolation (its point outside the chosen
band, or the chosen point outside its band) the choice says that the data cannot tell
them apart. When no form passes, the best is shown as failed and its extrapolation
withheld, with the reason. Measured (scaling.report.calibration): choosing one form by
one held-out size and banding it alone covered 76-77% at 10x on designs with 3 points of
noise, where the back-test cannot tell a floor from none; pooling covers 85-95%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scaling.report.bootstrap import MIN_DOF, Batch, FormFit, fit_batch
from scaling.report.forms import SATURATING, Form, FormName
from scaling.report.numbers import human

#: from this many sizes, the largest two are held out (the fit keeps one more size than
#: the saturating law's minimum); from MIN_SIZES, the largest one
HOLDOUT_TWO = 7
MIN_SIZES = SATURATING.min_points + 1
#: replicates of each back-test fit
BACKTEST_BOOT = 400
#: the back-test's prediction intervals (each held-out size a Bonferroni share): a correct
#: law fails at most 1 - this of the time, so that few sound extrapolations are withheld
BACKTEST_LEVEL = 0.95


def level_text(level: float) -> str:
    """0.95 -> '95%', 0.975 -> '97.5%'."""
    return f"{100 * level:.3g}%"


def holdout(n_sizes: int) -> int:
    """How many of the largest sizes a back-test holds out (0: too few sizes)."""
    return 2 if n_sizes >= HOLDOUT_TWO else 1 if n_sizes >= MIN_SIZES else 0


@dataclass(frozen=True)
class Backtest:
    """One form fitted without the largest size(s): what it predicted for them."""

    form: FormName
    held: np.ndarray  # x of the held-out sizes
    runs: np.ndarray  # runs at each
    measured: np.ndarray  # mean error over those runs (fraction)
    predicted: np.ndarray
    lo: np.ndarray  # prediction interval of the measured mean
    hi: np.ndarray
    level: float  # of each size's interval (a Bonferroni share of BACKTEST_LEVEL)
    where: tuple[str, ...] = ()  # how to name each held-out point (default: its x)

    @property
    def covered(self) -> np.ndarray:
        return (self.lo <= self.measured) & (self.measured <= self.hi)

    @property
    def passed(self) -> bool:
        return bool(self.covered.all())

    @property
    def error(self) -> float:
        """Mean absolute held-out error in points."""
        return float(100 * np.abs(self.measured - self.predicted).mean())

    def sentence(self) -> str:
        parts = []
        where = self.where or tuple(human(float(x)) for x in self.held)
        for at, m, p, lo, hi, ok in zip(
            where, self.measured, self.predicted, self.lo, self.hi, self.covered, strict=True
        ):
            parts.append(
                f"at {at} it predicted {100 * p:.2f}% error "
                f"({level_text(self.level)} prediction interval {100 * lo:.2f} to "
                f"{100 * hi:.2f}), "
                f"measured {100 * m:.2f}%: " + ("covered" if ok else "NOT covered")
            )
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": str(self.form),
            "held_out": self.held.tolist(),
            "runs": self.runs.tolist(),
            "measured": self.measured.tolist(),
            "predicted": self.predicted.tolist(),
            "interval": [self.lo.tolist(), self.hi.tolist()],
            "interval_level": self.level,
            "covered": self.covered.tolist(),
            "passed": self.passed,
            "held_out_error_points": self.error,
        }


def backtests(
    forms: Sequence[Form],
    x: np.ndarray,
    err: np.ndarray,
    *,
    seed: int,
    n_boot: int = BACKTEST_BOOT,
    x_name: str = "x",
) -> dict[FormName, list[Backtest | None]]:
    """Each form that can be fitted without the held-out sizes, back-tested on each of
    the R data sets err (R, n) at runs x (n,)."""
    xs = np.unique(x)
    h = holdout(len(xs))
    if not h:
        return {}
    held = xs[-h:]
    train = x < held[0]
    runs = np.array([(x == v).sum() for v in held])
    measured = np.stack([err[:, x == v].mean(axis=1) for v in held], axis=1)  # (R, h)
    where = tuple(f"{human(float(v))} {x_name}" for v in held)
    each = 1 - (1 - BACKTEST_LEVEL) / h
    out: dict[FormName, list[Backtest | None]] = {}
    rng = np.random.default_rng(seed)
    for form in forms:
        if len(xs) - h < form.min_points:
            continue
        b = fit_batch(
            form, x[train, None], err[:, train], n_boot=n_boot, seed=int(rng.integers(2**31))
        )
        if not b.boot.shape[1]:
            out[form.name] = [None] * len(err)
            continue
        pred, lo, hi = predictive(b, held[:, None], runs, each, rng)
        out[form.name] = [
            Backtest(form.name, held, runs, measured[i], pred[i], lo[i], hi[i], each, where)
            for i in range(len(err))
        ]
    return out


def predictive(
    b: Batch, held: np.ndarray, runs: np.ndarray, level: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit's prediction of the mean error of `runs` new runs at each held-out point
    (h, dims), and its prediction interval at `level`: each replicate's law plus the
    noise of a mean of that many runs at the replicate's noise level. (R, h) each."""
    shake = rng.standard_normal((*b.noise.shape, len(held))) / np.sqrt(runs)
    # a measured error lies in [0, 1]
    draws = np.clip(b.draws(held) + b.noise[..., None] * shake, 0.0, 1.0)  # (R, B, h)
    q = ((1 - level) / 2, (1 + level) / 2)
    return b.predict(held), np.quantile(draws, q[0], axis=1), np.quantile(draws, q[1], axis=1)


def needed(order: Sequence[Form], tests: Mapping[FormName, Backtest | None]) -> frozenset[FormName]:
    """The forms `choose` will look at for these back-tests."""
    mine = [t for t in tests.values() if t is not None]
    if order[0].name not in {t.form for t in mine}:
        return frozenset({order[0].name})
    passed = {t.form for t in mine if t.passed}
    return frozenset(passed or {min(mine, key=lambda t: t.error).form})


def choose(
    fits: Mapping[FormName, FormFit],
    tests: Mapping[FormName, Backtest],
    x_far: float,
    level: float,
    order: Sequence[Form],
    x_name: str = "x",
) -> tuple[tuple[FormFit, ...], str, str]:
    """(members: the chosen form first, then those not told apart from it; why; why the
    extrapolation is withheld, "" when it is not)."""
    default = order[0]
    if default.name not in tests:
        # Forms are compared only against the default: a simpler form is never chosen
        # because it alone had enough runs to be tested.
        why = (
            f"{default.name} (the default): no back-test, which needs {MIN_SIZES} sizes "
            "and, without the largest, runs enough to leave the fit "
            f"{MIN_DOF} residual degrees of freedom"
        )
        failed = [str(t.form) for t in tests.values() if not t.passed]
        if failed:
            why += f" ({', '.join(failed)} failed its own)"
        return (fits[default.name],), why, ""
    # ties (a saturating fit whose floor went to 0 is the pure law) go to the default
    rank = {f.name: i for i, f in enumerate(order)}
    ranked = sorted(tests.values(), key=lambda t: (not t.passed, round(t.error, 6), rank[t.form]))
    best = ranked[0]
    scores = ", ".join(
        f"{t.form} {t.error:.2f}" + ("" if t.passed else " (failed)") for t in ranked
    )
    if not best.passed:
        reason = (
            f"the law failed its back-test: fitted without the largest size(s), "
            f"{best.sentence()}; the extrapolation is withheld"
        )
        return (
            (fits[best.form],),
            f"{best.form}, the best of forms that all failed ({scores})",
            reason,
        )
    chosen = fits[best.form]
    members, differ = [chosen], []
    lo, hi = chosen.band([x_far], level)
    point = float(chosen.predict([x_far])[0])
    for t in ranked[1:]:
        if not t.passed or not len(fits[t.form].draws([x_far])):
            continue
        other = fits[t.form]
        members.append(other)
        o_lo, o_hi = other.band([x_far], level)
        o_point = float(other.predict([x_far])[0])
        if not (lo[0] <= o_point <= hi[0]) or not (o_lo[0] <= point <= o_hi[0]):
            differ.append(other)
    why = f"{best.form}: the smallest held-out error in points ({scores})"
    if len(members) > 1:
        names = ", ".join(str(m.form.name) for m in members)
        why += f"; the band pools the replicates of every form that passed ({names})"
    if differ:
        alt = ", ".join(f"{m.form.name} {100 * float(m.predict([x_far])[0]):.2f}%" for m in differ)
        why += (
            f"; the back-test cannot tell it from {', '.join(str(m.form.name) for m in differ)}, "
            f"which predict(s) differently at {human(x_far)} {x_name} ({best.form} "
            f"{100 * point:.2f}%, {alt})"
        )
    return tuple(members), why, ""
