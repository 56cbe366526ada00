"""Scaling laws of error against one variable, with intervals that cover what they claim.

`fit_power_law(x, err)` is what the report fits to one method's runs (error against
encoder parameters, or training FLOPs): each candidate form (scaling.report.forms:
saturating E + A x^-alpha, pure A x^-alpha, a broken power law) is fitted with a Huber
loss in log space (scaling.report.solver) and gets parametric-bootstrap replicates
(scaling.report.bootstrap), is back-tested on the largest size(s) it did not see
(scaling.report.backtest), and the form with the smallest held-out error among those
that passed gives the curve. Every form that passed is kept (`members`): the band pools
their replicates (each form equally), so that a form the back-test could not rule out
is never left out of the interval, and the choice says when they predict differently
at REACH x the largest size.

What the numbers rest on (measured by scaling.report.calibration; the table is in
BENCHMARKS.md, "Interval coverage"):

- Bands and intervals are percentiles of the replicates at `level`. A nominal 90%
  covers about 85-95% of the truth at the largest size and at 10x with 4-8 sizes when
  the residuals have at least MIN_DOF degrees of freedom; with fewer (4 or 5 sizes x 1
  seed) the noise level is too poorly known for any calibration (the gap's interval
  covered 98-100%): `reliable` is False and the report says the interval is unreliable
  instead of drawing it.
- Extrapolation is only drawn to REACH x the largest size: coverage was measured there
  and nowhere further.
- A parameter pinned at its bound in every replicate has no interval (None): E at 0 means
  the asymptote is not measurable from these sizes.
- Fewer than MIN_DISTINCT_X distinct x values: no curve, and a message that says so.

`fit_runs` does the same for R data sets at the same runs at once (the coverage harness
fits hundreds); `fit_power_law` is its one-data-set form.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scaling.report import backtest as bt
from scaling.report.bootstrap import MIN_DOF, FormFit, Resampling, fit_batch, percentile_band
from scaling.report.forms import ONE_D, SATURATING, Form, FormName

__all__ = [
    "MIN_DOF",
    "FormFit",
    "LawFit",
    "fit_power_law",
    "fit_runs",
    "percentile_band",
    "reliable",
]

#: 3 parameters need at least 4 distinct x values to leave one degree of freedom.
MIN_DISTINCT_X = 4
#: below this many distinct x values a fit is flagged: its intervals are fragile.
FEW_DISTINCT_X = 6
#: bands and extrapolations reach this many times the largest size trained, no further
REACH = 10.0
#: why a fit has no interval
NO_INTERVAL = (
    "no bootstrap replicates (none asked for, or one run per size to resample): no interval"
)
UNRELIABLE = (
    "{dof} residual degree(s) of freedom ({runs} runs, {p} parameters): the interval is "
    "unreliable, so none is drawn (the noise level is too poorly known: on simulated data "
    "of such designs a nominal 90% covered 98-100% of gaps, not 90%)"
)
NOT_MEASURABLE = "the asymptote is not measurable from these sizes"


def stream(seed: int, *parts: object) -> int:
    """A seed of its own for each fit: the replicates of two laws must be independent
    (a gap's interval combines them), and stay the same from run to run."""
    return (seed * 1_000_003 + zlib.crc32(repr(parts).encode())) % (2**32)


@dataclass(frozen=True)
class LawFit:
    """The law the report states for one set of runs (or the reason there is none)."""

    label: str
    x_name: str
    status: str  # "ok" | "too_few_points"
    message: str
    n_runs: int
    n_x: int
    x_min: float
    x_max: float
    level: float = 0.9
    members: tuple[FormFit, ...] = ()  # the chosen form first, then the others that passed
    backtests: dict[FormName, bt.Backtest] = field(default_factory=dict)
    choice: str = ""  # which form and why
    withheld: str = ""  # why the extrapolation past the data is not shown ("" when it is)
    reliable: bool = True
    notes: tuple[str, ...] = ()
    resampling: Resampling = Resampling.PARAMETRIC
    n_boot_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def chosen(self) -> FormFit:
        return self.members[0]

    @property
    def form(self) -> FormName | None:
        return self.members[0].form.name if self.members else None

    @property
    def has_interval(self) -> bool:
        return self.ok and self.reliable and bool(len(self.chosen.draws([self.x_max])))

    @property
    def reach(self) -> float:
        """How far past the data the law may be drawn: REACH x, or 1 when withheld."""
        return 1.0 if self.withheld else REACH

    def predict(self, x: Any) -> np.ndarray:
        return self.chosen.predict(x)

    def draws(self, x: Any) -> np.ndarray:
        """The replicates of every member form at x, pooled (each form equally): (B', m)."""
        return np.concatenate([m.draws(x) for m in self.members])

    def band(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """The percentile band of the pooled replicates at x (NaN without an interval)."""
        x = np.atleast_1d(np.asarray(x, float))
        if not self.has_interval:
            nan = np.full(len(x), math.nan)
            return nan, nan
        return percentile_band(self.draws(x), self.level)

    def params(self) -> dict[str, float]:
        return self.chosen.params()

    def intervals(self) -> dict[str, tuple[float, float] | None]:
        return self.chosen.intervals(self.level) if self.has_interval else {}

    @property
    def backtest(self) -> bt.Backtest | None:
        return self.backtests.get(self.form) if self.form else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "x": self.x_name,
            "status": self.status,
            "message": self.message,
            "n_runs": self.n_runs,
            "n_distinct_x": self.n_x,
            "x_range": [self.x_min, self.x_max],
            "level": self.level,
            "notes": list(self.notes),
        }
        if not self.ok:
            return out
        c = self.chosen
        iv = self.intervals()
        out.update(
            {
                "form": str(c.form.name),
                "formula": c.form.formula,
                "choice": self.choice,
                "forms_not_told_apart": [str(m.form.name) for m in self.members[1:]],
                "params": self.params(),
                "intervals": {k: (None if v is None else list(v)) for k, v in iv.items()},
                "interval_reliable": self.reliable,
                "extrapolation_withheld": self.withheld or None,
                "reach": self.reach,
                "noise_points": 100 * c.sigma if math.isfinite(c.sigma) else None,
                "residual_dof": c.dof,
                "huber_delta": c.delta,
                "bootstrap": {
                    "method": str(self.resampling),
                    "replicates": int(np.isfinite(c.boot).all(axis=1).sum()),
                    "dropped": self.n_boot_dropped,
                },
                "backtests": {str(k): b.to_dict() for k, b in self.backtests.items()},
            }
        )
        return out


def fit_power_law(x: Any, err: Any, **options: Any) -> LawFit:
    """The law of err against x (one point per run; runs with a missing or non-positive
    x or a missing error are left out); `options` as `fit_runs`'s."""
    x = np.asarray(x, float)
    err = np.asarray(err, float)
    keep = np.isfinite(x) & (x > 0) & np.isfinite(err)
    return fit_runs(x[keep], err[keep][None], **options)[0]


def fit_runs(
    x: np.ndarray,
    err: np.ndarray,
    *,
    label: str = "",
    x_name: str = "x",
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    delta: float | None = None,
    forms: Sequence[Form] = ONE_D,
    resampling: Resampling = Resampling.PARAMETRIC,
    backtest: bool = True,
    extra: Any = None,
) -> list[LawFit]:
    """The law of each of R data sets err (R, n) at the same runs x (n,); see the
    module's docstring. `forms`: the candidates; `resampling`: how replicates are made;
    `backtest` False: the first form that fits, untested. `extra`: x of hypothetical runs
    (one per run) that join every parametric replicate, so that the intervals are those
    the sweep would have with them (the point fit, the back-test and the choice of form
    rest on the real runs alone)."""
    x = np.asarray(x, float).ravel()
    err = np.atleast_2d(np.asarray(err, float))
    xs = np.unique(x)
    base = dict(
        label=label,
        x_name=x_name,
        n_runs=len(x),
        n_x=len(xs),
        level=level,
        x_min=float(xs[0]) if len(xs) else math.nan,
        x_max=float(xs[-1]) if len(xs) else math.nan,
        resampling=resampling,
    )
    if len(xs) < MIN_DISTINCT_X:
        msg = (
            f"{len(xs)} distinct {x_name} value(s) from {len(x)} run(s): a 3-parameter law "
            f"needs at least {MIN_DISTINCT_X}; no curve fitted"
        )
        return [LawFit(status="too_few_points", message=msg, **base)] * len(err)  # type: ignore[arg-type]
    h = bt.holdout(len(xs)) if backtest else 0
    candidates = [f for f in forms if len(xs) - h >= f.min_points]
    if not h or not candidates:  # nothing to judge forms by: the first that fits
        candidates = [next((f for f in forms if len(xs) >= f.min_points), SATURATING)]
    tests = (
        bt.backtests(
            candidates,
            x,
            err,
            seed=stream(seed, label, "backtest"),
            x_name=x_name,
            n_boot=min(bt.BACKTEST_BOOT, max(n_boot, 200)),  # fewer for laws only drawn
        )
        if h
        else {}
    )
    # Replicates only of the forms some data set keeps (those that passed, the best of
    # those that failed, the default when it was not tested): a failed form is not drawn.
    kept = [bt.needed(candidates, {k: t[i] for k, t in tests.items()}) for i in range(len(err))]
    names = {name for row in kept for name in row}
    extra_mean = None
    if extra is not None:  # a hypothetical run's error: the mean of its data set's forms
        more = np.asarray(extra, float).ravel()
        points = {
            f.name: fit_batch(f, x[:, None], err, n_boot=0, delta=delta)
            for f in candidates
            if f.name in names
        }
        extra_mean = np.array(
            [
                np.mean([FormFit.of(points[n], i).predict(more) for n in sorted(row)], axis=0)
                for i, row in enumerate(kept)
            ]
        )
    batches = {
        f.name: fit_batch(
            f,
            x[:, None],
            err,
            n_boot=n_boot,
            seed=stream(seed, label, str(f.name)),
            resampling=resampling,
            delta=delta,
            extra=None if extra is None else np.asarray(extra, float).reshape(-1, 1),
            extra_mean=extra_mean,
        )
        for f in candidates
        if f.name in names
    }
    out = []
    for i in range(len(err)):
        fits = {name: FormFit.of(b, i) for name, b in batches.items()}
        mine = {name: t[i] for name, t in tests.items() if t[i] is not None}
        members, choice, withheld = bt.choose(fits, mine, xs[-1] * REACH, level, candidates, x_name)
        if not backtest:
            choice = f"{members[0].form.name} (the default): no back-test asked for"
        dropped = batches[members[0].form.name].dropped
        fit = LawFit(
            status="ok",
            message="",
            members=members,
            backtests=mine,
            choice=choice,
            withheld=withheld,
            reliable=resampling is Resampling.RUNS or reliable(members[0]),
            n_boot_dropped=0 if dropped is None else int(dropped[i]),
            **base,  # type: ignore[arg-type]
        )
        out.append(_with_notes(fit))
    return out


def reliable(fit: FormFit) -> bool:
    """Whether its interval method covered on simulated data of this design: enough
    residual degrees of freedom to estimate the noise (calibration, BENCHMARKS.md)."""
    return fit.dof >= MIN_DOF


def _with_notes(fit: LawFit) -> LawFit:
    from dataclasses import replace

    notes = []
    c = fit.chosen
    if fit.n_x < FEW_DISTINCT_X:
        notes.append(
            f"only {fit.n_x} distinct {fit.x_name} values: the curve and its band "
            "rest on very few points"
        )
    if not fit.reliable:
        notes.append(UNRELIABLE.format(dof=c.dof, runs=fit.n_runs, p=c.form.n_params))
    elif not len(c.boot):
        notes.append(NO_INTERVAL)
    if c.floor_at_bound:
        notes.append(f"E at its lower bound, the data show no saturation: {NOT_MEASURABLE}")
    elif "log_E" in c.form.params and fit.has_interval and fit.intervals().get("E", 0) is None:
        upper = 100 * c.floor_upper(fit.level)
        notes.append(
            f"E's {fit.level:.0%} interval reaches 0 (at most {upper:.2f} points): {NOT_MEASURABLE}"
        )
    if fit.n_boot_dropped:
        total = len(c.boot)
        notes.append(
            f"{fit.n_boot_dropped} of {total} bootstrap replicates kept fewer than "
            f"{MIN_DISTINCT_X} distinct x values and were dropped"
        )
    return replace(fit, notes=tuple(notes))
