"""A law fitted to R data sets on one design, with bootstrap replicates of each.

`fit_batch(form, x, err)` fits `form` to every row of `err` (R data sets whose runs sit
at the same x: the report passes one, the coverage harness in scaling.report.calibration
passes hundreds) and draws `n_boot` replicates of each fit:

- `Resampling.PARAMETRIC` (the default): each replicate is a new data set simulated
  from the fitted law at the same runs (seeds included: every run gets its own noise)
  and refitted by the same code. The noise is Gaussian in the error with the standard
  deviation of the fit's residuals, sigma^2 = RSS / (n - p), and because that estimate
  rests on n - p degrees of freedom only, each replicate draws its own sigma from the
  estimate's distribution, sigma* = sigma sqrt(dof / chi2_dof): for a linear model the
  replicates' percentiles are then the Student-t interval, which is what makes a
  nominal 90% cover about 90% with 4 to 8 sizes (measured by simulation:
  scaling.report.calibration and benchmarks/bench_coverage.py). Hypothetical extra runs
  (`extra`) join every replicate: the interval they would give, before they are run;
  their error is drawn around `extra_mean` where given (scaling.report.fit passes the
  mean of the forms it keeps, so that forms that disagree there are pulled together).
- `Resampling.RUNS` (the method before): resample runs with replacement, dropping
  replicates that keep fewer distinct points than the form needs. Kept for comparison:
  it covered 74% at the largest size with 4 sizes x 3 seeds.

Errors are clipped to [ERR_FLOOR, 1] before the log (a perfect score would be -inf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from scaling.enums import StrEnum
from scaling.report.forms import LOG_E_BOUNDS, Form, natural
from scaling.report.solver import Design, design, fit_starts, solve

#: errors are clipped here before the log: a perfect score would otherwise be -inf.
ERR_FLOOR = 1e-4
#: residual degrees of freedom below which no interval was calibrated (4 or 5 sizes x 1
#: seed: the gap's nominal 90% covered 98-100%): such a fit gets no replicates
MIN_DOF = 3
#: relative loss change at which a replicate's refit stops (a percentile needs no more)
REFIT_TOL = 1e-7
#: an error floor E at or below this is at its bound (the data show no saturation)
FLOOR_BOUND = math.exp(LOG_E_BOUNDS[0]) * 1.0001


class Resampling(StrEnum):
    PARAMETRIC = "parametric"
    RUNS = "runs"


@dataclass(frozen=True)
class Batch:
    """`form` fitted to R data sets at the same runs. Coordinates are u = log x - log_ref;
    `theta` (R, p), `boot` (R, B, p) (B may be 0), `sigma` (R,) the residual standard
    deviation of the error (a fraction; NaN without degrees of freedom) on `dof`
    degrees of freedom, `noise` (R, B) the sigma each replicate was drawn with."""

    form: Form
    log_ref: np.ndarray
    x: np.ndarray = field(repr=False)  # (n, dims): the runs, in the design's order
    err: np.ndarray = field(repr=False)  # (R, n)
    theta: np.ndarray = field(repr=False)
    delta: np.ndarray = field(repr=False)
    sigma: np.ndarray = field(repr=False)
    dof: int
    boot: np.ndarray = field(repr=False)
    noise: np.ndarray = field(repr=False)
    resampling: Resampling = Resampling.PARAMETRIC
    dropped: np.ndarray | None = field(default=None, repr=False)  # (R,) RUNS only

    @property
    def n_sets(self) -> int:
        return len(self.theta)

    def u(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float).reshape(-1, self.form.dims)
        return np.log(x) - self.log_ref

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The fitted error at x (m, dims) for every data set: (R, m)."""
        return np.exp(self.form.log_pred(self.theta, self.u(x)))

    def draws(self, x: np.ndarray) -> np.ndarray:
        """Every replicate's error at x: (R, B, m)."""
        r, b, p = self.boot.shape
        out = np.exp(self.form.log_pred(self.boot.reshape(r * b, p), self.u(x)))
        return out.reshape(r, b, -1)


def fit_batch(
    form: Form,
    x: np.ndarray,
    err: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    resampling: Resampling = Resampling.PARAMETRIC,
    delta: float | None = None,
    extra: np.ndarray | None = None,
    extra_mean: np.ndarray | None = None,
    log_ref: np.ndarray | None = None,
) -> Batch:
    """Fit `form` to each row of err (R, n) at x (n, dims), with bootstrap replicates.
    `extra`: x of hypothetical runs added to every parametric replicate, their error
    drawn around `extra_mean` (R, k) where given (the laws' consensus, so that forms
    that disagree there are pulled together as a measured run would), else around this
    form's own fit. `log_ref`: the coordinates' origin (default: the mean of log x)."""
    x = np.asarray(x, float).reshape(len(x), -1)
    err = np.atleast_2d(np.asarray(err, float))
    ref = np.log(x).mean(axis=0) if log_ref is None else np.asarray(log_ref, float)
    d, order = design(np.log(x) - ref)
    x, err = x[order], err[:, order]
    logy = np.log(np.clip(err, ERR_FLOOR, 1.0))
    theta, deltas, second = fit_starts(form, d, logy, delta)
    dof = d.n_runs - form.n_params
    fitted = np.exp(form.log_pred(theta, d.u))[:, d.idx]
    rss = ((np.clip(err, ERR_FLOOR, 1.0) - fitted) ** 2).sum(axis=1)
    sigma = np.sqrt(rss / dof) if dof > 0 else np.full(len(theta), math.nan)
    rng = np.random.default_rng(seed)
    dropped = None
    if n_boot <= 0 or dof < MIN_DOF:
        boot, noise = np.empty((len(theta), 0, form.n_params)), np.empty((len(theta), 0))
    elif resampling is Resampling.PARAMETRIC:
        boot, noise = _parametric(
            form, d, x, theta, deltas, sigma, dof, n_boot, rng, ref, extra, extra_mean
        )
    else:
        boot, dropped = _runs(form, d, logy, theta, second, deltas, n_boot, rng)
        noise = np.broadcast_to(sigma[:, None], boot.shape[:2]).copy()
    return Batch(form, ref, x, err, theta, deltas, sigma, dof, boot, noise, resampling, dropped)


def _parametric(
    form: Form,
    d: Design,
    x: np.ndarray,
    theta: np.ndarray,
    deltas: np.ndarray,
    sigma: np.ndarray,
    dof: int,
    n_boot: int,
    rng: np.random.Generator,
    ref: np.ndarray,
    extra: np.ndarray | None,
    extra_mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r_sets, p = theta.shape
    xs = x if extra is None else np.vstack([x, np.asarray(extra, float).reshape(-1, form.dims)])
    db, order = design(np.log(xs) - ref)
    mean = np.exp(form.log_pred(theta, db.u))[:, db.idx]  # (R, n'), xs sorted by `order`
    if extra_mean is not None:  # xs[j] sits at np.argsort(order)[j]
        at = np.argsort(order)[len(x) :]
        mean[:, at] = np.asarray(extra_mean, float).reshape(r_sets, -1)
    # sigma* = sigma sqrt(dof / chi2_dof): the noise level as uncertain as the residuals
    # leave it; with k hypothetical runs the sweep would have dof + k residual degrees of
    # freedom. Drawn by inversion from one uniform per replicate, so that replicates with
    # and without hypothetical runs are coupled (common random numbers).
    dof_h = dof + len(xs) - len(x)
    chi2 = stats.chi2.ppf(np.clip(rng.random((r_sets, n_boot)), 1e-12, 1.0), dof_h)
    noise = sigma[:, None] * np.sqrt(dof_h / chi2)
    # The real runs' draws come first, the hypothetical runs' after them: with the same
    # seed, every set of hypothetical runs sees the same simulated real runs (common
    # random numbers), so that an advisor comparing candidates compares them, not noise.
    z = rng.standard_normal((r_sets, n_boot, len(x)))
    if extra is not None:
        z = np.concatenate([z, rng.standard_normal((r_sets, n_boot, len(xs) - len(x)))], axis=2)
    sim = mean[:, None, :] + noise[:, :, None] * z[:, :, order]
    logy = np.log(np.clip(sim, ERR_FLOOR, 1.0)).reshape(r_sets * n_boot, -1)
    # A replicate is drawn from the fit, so its optimum is near it: one warm start.
    theta0 = np.repeat(theta, n_boot, axis=0)
    fits, _ = solve(form, theta0, db, logy, np.repeat(deltas, n_boot), tol=REFIT_TOL)
    return fits.reshape(r_sets, n_boot, p), noise


def _runs(
    form: Form,
    d: Design,
    logy: np.ndarray,
    theta: np.ndarray,
    second: np.ndarray,
    deltas: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs resampled with replacement; replicates with too few distinct points are
    dropped (NaN rows) and counted."""
    r_sets, p = theta.shape
    n = d.n_runs
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=(r_sets, n_boot)).astype(float)
    present = (np.add.reduceat(counts, d.starts, axis=2) > 0).sum(axis=2)
    keep = present >= form.min_points  # (R, B)
    starts = np.stack([theta, second], axis=1)
    theta0 = np.broadcast_to(starts[:, None], (r_sets, n_boot, 2, p)).reshape(-1, p)
    logy2 = np.repeat(logy, n_boot * 2, axis=0)
    w2 = np.repeat(counts.reshape(-1, n), 2, axis=0)
    delta2 = np.repeat(deltas, n_boot * 2)
    fits, losses = solve(form, theta0, d, logy2, delta2, w2)
    fits = fits.reshape(r_sets, n_boot, 2, p)
    best = losses.reshape(r_sets, n_boot, 2).argmin(axis=2)
    boot = np.take_along_axis(fits, best[..., None, None], axis=2)[:, :, 0]
    boot[~keep] = np.nan
    return boot, (~keep).sum(axis=1)


@dataclass(frozen=True)
class FormFit:
    """One form fitted to one data set: the point fit and its replicates."""

    form: Form
    log_ref: np.ndarray
    theta: np.ndarray
    boot: np.ndarray  # (B, p); NaN rows: replicates dropped (run resampling)
    noise: np.ndarray  # (B,) the noise sd each replicate was drawn with
    sigma: float  # residual standard deviation of the error (fraction)
    dof: int
    delta: float

    @classmethod
    def of(cls, batch: Batch, i: int) -> FormFit:
        return cls(
            batch.form,
            batch.log_ref,
            batch.theta[i],
            batch.boot[i],
            batch.noise[i],
            float(batch.sigma[i]),
            batch.dof,
            float(batch.delta[i]),
        )

    def _u(self, x: Any) -> np.ndarray:
        return np.log(np.asarray(x, float).reshape(-1, self.form.dims)) - self.log_ref

    def predict(self, x: Any) -> np.ndarray:
        return np.exp(self.form.log_pred(self.theta[None], self._u(x)))[0]

    def draws(self, x: Any) -> np.ndarray:
        """(B, m): every kept replicate's error at x."""
        boot = self.boot[np.isfinite(self.boot).all(axis=1)]
        return np.exp(self.form.log_pred(boot, self._u(x))) if len(boot) else np.empty((0, 0))

    def band(self, x: Any, level: float) -> tuple[np.ndarray, np.ndarray]:
        d = self.draws(x)
        if not d.size:
            nan = np.full(len(np.atleast_1d(x)), math.nan)
            return nan, nan
        return percentile_band(d, level)

    def params(self) -> dict[str, float]:
        return {k: float(v[0]) for k, v in natural(self.form, self.theta, self.log_ref).items()}

    def intervals(self, level: float) -> dict[str, tuple[float, float] | None]:
        """Percentile interval of each parameter; None for E when it is fitted at 0 or its
        interval reaches 0 (no saturation seen: not measurable from these sizes)."""
        boot = self.boot[np.isfinite(self.boot).all(axis=1)]
        if not len(boot):
            return {}
        vals = natural(self.form, boot, self.log_ref)
        q = ((1 - level) / 2, (1 + level) / 2)
        out: dict[str, tuple[float, float] | None] = {}
        for k, v in vals.items():
            out[k] = (float(np.quantile(v, q[0])), float(np.quantile(v, q[1])))
        if "E" in out and (self.floor_at_bound or out["E"][0] <= FLOOR_BOUND):  # type: ignore[index]
            out["E"] = None
        return out

    def floor_upper(self, level: float) -> float:
        """The upper end of E's interval (NaN without replicates)."""
        boot = self.boot[np.isfinite(self.boot).all(axis=1)]
        if "log_E" not in self.form.params or not len(boot):
            return math.nan
        return float(np.quantile(np.exp(boot[:, 0]), (1 + level) / 2))

    @property
    def floor_at_bound(self) -> bool:
        """E fitted at its lower bound: the data show no saturation."""
        return "log_E" in self.form.params and bool(self.theta[0] <= LOG_E_BOUNDS[0] + 1e-6)


def percentile_band(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    q = ((1 - level) / 2, (1 + level) / 2)
    return np.quantile(draws, q[0], axis=0), np.quantile(draws, q[1], axis=0)
