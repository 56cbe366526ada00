"""Saturating power laws err = E + A * x^(-alpha), fitted robustly, with bootstrap intervals.

The standard we follow is public scaling-law code: Hoffmann et al. 2022 (Chinchilla,
Approach 3) and Epoch AI's replication fit in LOG space with a Huber loss (delta 1e-3),
log(pred) = logsumexp(e, a - alpha * log x), from a grid of initial values, keeping the
best optimum, and give intervals by bootstrap; LAION's scaling-laws-for-comparison
bounds the parameters. Here:

- x is scaled by its geometric mean before fitting (u = log x - mean log x), so the
  optimisation is well conditioned whether x is 1e5 parameters or 1e18 FLOPs;
  `A` is reported back in the units of x.
- The Huber threshold: Chinchilla's delta = 1e-3 suits language-model losses predicted
  to about 1e-3. Errors of image classifiers scatter by a few percent over seeds, which
  that delta turns into least absolute deviations (slow to solve, less efficient).
  The default (delta=None) is Huber's own rule, delta = 1.345 sigma, sigma the MAD
  scale of the residuals of a least-squares fit (at least 1e-3); pass delta=1e-3 for
  the Chinchilla setting. Bootstrap replicates reuse the point fit's delta.
- Bounds: 1e-8 <= E <= 1 (an error rate), 0 <= alpha <= 5. A fit that ends on a bound
  says so (E at its floor: the data show no saturation).
- The solver is a batched Levenberg-Marquardt on the Huber IRLS model in numpy: every
  bootstrap replicate (and every start of the grid) is solved at once, which is what
  makes 1,000 replicates cost well under a second. tests/test_fit.py checks its optimum
  against scipy.optimize.least_squares(loss="huber").
- Intervals: percentile bootstrap over runs (a seed is a run, so seeds are resampled
  too). Replicates that keep fewer than MIN_DISTINCT_X distinct x values are dropped
  and counted.
- Fewer than MIN_DISTINCT_X distinct x values: no curve, and a message that says so.
- No interval from a degenerate bootstrap: with one run at some x (one seed), resampling
  runs can only drop sizes, every kept replicate is the point fit, and the "interval"
  has zero width. Such a fit has no bootstrap (`boot` None) and a note that says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

#: 3 parameters need at least 4 distinct x values to leave one degree of freedom.
MIN_DISTINCT_X = 4
#: below this many distinct x values a fit is flagged: its intervals are fragile.
FEW_DISTINCT_X = 6
#: Huber threshold on log residuals of Hoffmann et al. 2022 and Epoch AI's replication;
#: the floor of the automatic threshold.
DELTA = 1e-3
#: Huber's tuning constant: 95% efficiency under Gaussian noise.
HUBER_K = 1.345
#: errors are clipped here before the log: a perfect score would otherwise be -inf.
ERR_FLOOR = 1e-4
LOG_E_BOUNDS = (math.log(1e-8), 0.0)
LOG_A_BOUNDS = (-30.0, 10.0)
ALPHA_BOUNDS = (0.0, 5.0)
_LOWER = np.array([LOG_E_BOUNDS[0], LOG_A_BOUNDS[0], ALPHA_BOUNDS[0]])
_UPPER = np.array([LOG_E_BOUNDS[1], LOG_A_BOUNDS[1], ALPHA_BOUNDS[1]])
#: why a fit has no interval (one run at some model size, so nothing to resample)
NO_INTERVAL = "one run at some size (one seed): no bootstrap interval"
#: problems x points solved per chunk (memory: ~40 bytes x this per array).
_CHUNK = 1_000_000


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


class _Data(NamedTuple):
    """Runs sorted by x: u of each distinct x, each run's index into it, the boundaries
    of each x's block (for np.add.reduceat), and log errors. The model and its Jacobian
    depend on x alone, so they are evaluated once per distinct x, not once per run."""

    ux: np.ndarray
    idx: np.ndarray
    bounds: np.ndarray
    logy: np.ndarray


def _data(u: np.ndarray, logy: np.ndarray) -> _Data:
    """From u and log errors ALREADY SORTED by u."""
    ux, idx = np.unique(u, return_inverse=True)
    bounds = np.flatnonzero(np.r_[True, np.diff(idx) != 0])
    return _Data(ux, idx, bounds, logy)


def _log_pred(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    """log(E + A' exp(-alpha u)) for K parameter rows (e, a, alpha): shape (K, len(u))."""
    return np.logaddexp(theta[:, :1], theta[:, 1:2] - theta[:, 2:3] * u)


def _loss(theta: np.ndarray, d: _Data, w: np.ndarray, delta: float) -> np.ndarray:
    r = _log_pred(theta, d.ux)[:, d.idx] - d.logy
    out = (w * huber(r, delta)).sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


def _lm_step(
    theta: np.ndarray, d: _Data, w: np.ndarray, delta: float, lam: np.ndarray
) -> np.ndarray:
    """One damped Gauss-Newton step on the IRLS (reweighted least squares) model."""
    lpx = _log_pred(theta, d.ux)
    r = lpx[:, d.idx] - d.logy
    omega = w * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
    omega_x = np.add.reduceat(omega, d.bounds, axis=1)  # (K, n_x)
    resid_x = np.add.reduceat(omega * r, d.bounds, axis=1)
    d_e = np.exp(theta[:, :1] - lpx)
    d_a = np.exp(theta[:, 1:2] - theta[:, 2:3] * d.ux - lpx)
    jac = np.stack([d_e, d_a, -d.ux * d_a], axis=2)  # (K, n_x, 3)
    jac_t = jac.transpose(0, 2, 1)
    hess = np.matmul(jac_t * omega_x[:, None, :], jac)
    grad = np.matmul(jac_t, resid_x[:, :, None])[..., 0]
    diag = np.diagonal(hess, axis1=1, axis2=2)
    damp = lam[:, None] * (diag + 1e-9 * diag.sum(axis=1, keepdims=True) + 1e-300)
    hess = hess + damp[:, :, None] * np.eye(3)
    step = np.linalg.solve(hess, grad[..., None])[..., 0]
    return np.clip(theta - step, _LOWER, _UPPER)


def _solve(
    theta0: np.ndarray, d: _Data, w: np.ndarray, delta: float, iters: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber loss for K problems at once; returns (theta, loss)."""
    theta = np.clip(theta0.astype(float), _LOWER, _UPPER)
    loss = _loss(theta, d, w, delta)
    lam = np.full(len(theta), 1e-2)
    active = np.ones(len(theta), bool)
    for _ in range(iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        with np.errstate(all="ignore"):
            cand = _lm_step(theta[idx], d, w[idx], delta, lam[idx])
            new = _loss(cand, d, w[idx], delta)
        ok = new <= loss[idx]
        moved = np.abs(cand - theta[idx]).max(axis=1)
        gain = loss[idx] - new
        theta[idx[ok]] = cand[ok]
        loss[idx[ok]] = new[ok]
        lam[idx] = np.where(ok, lam[idx] / 3, lam[idx] * 4)
        done = (ok & ((moved < 1e-7) | (gain <= 1e-9 * loss[idx]))) | (lam[idx] > 1e8)
        active[idx[done]] = False
    return theta, loss


def _grid_starts(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """E in {0, .3, .6, .9} x min(err), alpha in 6 values, log A' by projection."""
    starts = []
    for frac in (0.0, 0.3, 0.6, 0.9):
        big_e = frac * float(y.min())
        for alpha in (0.05, 0.15, 0.3, 0.6, 1.2, 2.5):
            a = float(np.median(np.log(np.maximum(y - big_e, 1e-6)) + alpha * u))
            starts.append((math.log(max(big_e, 1e-8)), a, alpha))
    return np.array(starts)


@dataclass(frozen=True)
class PowerLawFit:
    """One fitted law (or the reason there is none). Parameters in internal units:
    theta = (log E, log A', alpha) with x / x_ref; use the properties for E, A, alpha."""

    label: str
    x_name: str
    status: str  # "ok" | "too_few_points"
    message: str
    n_runs: int
    n_x: int
    x_min: float
    x_max: float
    x_ref: float = 1.0
    level: float = 0.9
    theta: np.ndarray | None = field(default=None, repr=False)
    boot: np.ndarray | None = field(default=None, repr=False)
    n_boot_dropped: int = 0
    delta: float = DELTA
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def params(self, theta: np.ndarray | None = None) -> dict[str, Any]:
        """E, A (in the units of x) and alpha of `theta` rows (default: the point fit)."""
        t = np.atleast_2d(self.theta if theta is None else theta)
        log_a = t[:, 1] + t[:, 2] * math.log(self.x_ref)
        out = {"E": np.exp(t[:, 0]), "A": np.exp(log_a), "alpha": t[:, 2], "log_A": log_a}
        return {k: (float(v[0]) if theta is None else v) for k, v in out.items()}

    def intervals(self) -> dict[str, tuple[float, float]]:
        if self.boot is None or len(self.boot) == 0:
            return {}
        q = ((1 - self.level) / 2, (1 + self.level) / 2)
        vals = self.params(self.boot)
        return {
            k: (float(np.quantile(v, q[0])), float(np.quantile(v, q[1]))) for k, v in vals.items()
        }

    def predict(self, x: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """Error at x: (len(x),) for the point fit, (len(theta), len(x)) for rows."""
        t = np.atleast_2d(self.theta if theta is None else theta)
        u = np.log(np.asarray(x, float)) - math.log(self.x_ref)
        out = np.exp(_log_pred(t, u))
        return out[0] if theta is None else out

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the error at x over bootstrap replicates."""
        if self.boot is None or len(self.boot) == 0:
            nan = np.full(len(np.atleast_1d(x)), np.nan)
            return nan, nan
        preds = self.predict(x, self.boot)
        q = ((1 - self.level) / 2, (1 + self.level) / 2)
        return np.quantile(preds, q[0], axis=0), np.quantile(preds, q[1], axis=0)

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
            "huber_delta": self.delta,
            "notes": list(self.notes),
        }
        if self.ok:
            out["params"] = self.params()
            out["intervals"] = {k: list(v) for k, v in self.intervals().items()}
            out["bootstrap"] = {
                "replicates": 0 if self.boot is None else len(self.boot),
                "dropped": self.n_boot_dropped,
            }
        return out


def fit_power_law(
    x: Any,
    err: Any,
    *,
    label: str = "",
    x_name: str = "x",
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    delta: float | None = None,
) -> PowerLawFit:
    """Fit err = E + A x^-alpha to runs (one point per run) with bootstrap intervals."""
    x = np.asarray(x, float)
    y = np.clip(np.asarray(err, float), ERR_FLOOR, 1.0)
    keep = np.isfinite(x) & (x > 0) & np.isfinite(np.asarray(err, float))
    order = np.argsort(x[keep], kind="stable")
    x, y = x[keep][order], y[keep][order]
    xs, per_x = np.unique(x, return_counts=True)
    base = dict(
        label=label,
        x_name=x_name,
        n_runs=len(x),
        n_x=len(xs),
        level=level,
        x_min=float(xs[0]) if len(xs) else math.nan,
        x_max=float(xs[-1]) if len(xs) else math.nan,
    )
    if len(xs) < MIN_DISTINCT_X:
        msg = (
            f"{len(xs)} distinct {x_name} value(s) from {len(x)} run(s): a 3-parameter law "
            f"needs at least {MIN_DISTINCT_X}; no curve fitted"
        )
        return PowerLawFit(status="too_few_points", message=msg, **base)
    x_ref = float(np.exp(np.log(x).mean()))
    d = _data(np.log(x) - math.log(x_ref), np.log(y))
    starts = _grid_starts(d.ux[d.idx], y)
    if delta is None:  # Huber's rule on the residuals of a least-squares fit
        ls_theta, ls_loss = _solve(starts, d, np.ones((len(starts), len(x))), 1e6)
        best_ls = ls_theta[[ls_loss.argmin()]]
        r = (_log_pred(best_ls, d.ux)[:, d.idx] - d.logy)[0]
        delta = max(HUBER_K * 1.4826 * float(np.median(np.abs(r - np.median(r)))), DELTA)
        starts = np.vstack([best_ls, starts])
    optima, losses = _solve(starts, d, np.ones((len(starts), len(x))), delta)
    rank = np.argsort(losses)
    theta = optima[rank[0]]
    # Warm starts for the replicates: the optimum, and the best distinct local optimum.
    other = [i for i in rank[1:] if np.abs(optima[i] - theta).max() > 1e-3][:1]
    replicated = bool(per_x.min() >= 2)
    boot, dropped = _bootstrap(
        d, optima[[rank[0], *other]], n_boot if replicated else 0, seed, delta
    )
    if len(boot) and float(np.ptp(boot, axis=0).max()) == 0.0:
        boot = np.empty((0, 3))  # every replicate equals the point fit: no interval
    fit = PowerLawFit(
        status="ok",
        message="",
        x_ref=x_ref,
        theta=theta,
        boot=boot,
        n_boot_dropped=dropped,
        delta=delta,
        **base,
    )
    return _with_notes(fit)


def _bootstrap(
    d: _Data, starts: np.ndarray, n_boot: int, seed: int, delta: float
) -> tuple[np.ndarray, int]:
    """Refit on runs resampled with replacement, warm-started from the best optima."""
    if n_boot <= 0:
        return np.empty((0, 3)), 0
    n = len(d.logy)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    present = np.add.reduceat(counts, d.bounds, axis=1) > 0
    counts = counts[present.sum(axis=1) >= MIN_DISTINCT_X].astype(float)
    s, size = len(starts), max(1, _CHUNK // len(d.logy))  # problems per chunk, for memory
    theta0, weights = np.tile(starts, (len(counts), 1)), np.repeat(counts, s, axis=0)
    parts = [
        _solve(theta0[i : i + size], d, weights[i : i + size], delta)
        for i in range(0, len(theta0), size)
    ]
    theta = np.concatenate([p[0] for p in parts]).reshape(-1, s, 3)
    best = np.concatenate([p[1] for p in parts]).reshape(-1, s).argmin(axis=1)
    return theta[np.arange(len(counts)), best], n_boot - len(counts)


def _with_notes(fit: PowerLawFit) -> PowerLawFit:
    notes = []
    if fit.theta is None:
        return fit
    if fit.n_x < FEW_DISTINCT_X:
        notes.append(
            f"only {fit.n_x} distinct {fit.x_name} values: the curve and its band "
            "rest on very few points"
        )
    if fit.theta[0] <= LOG_E_BOUNDS[0] + 1e-6:
        notes.append("E at its lower bound: the data show no saturation (a pure power law)")
    if fit.theta[2] >= ALPHA_BOUNDS[1] - 1e-6:
        notes.append(f"alpha at its upper bound {ALPHA_BOUNDS[1]}")
    if fit.theta[2] <= ALPHA_BOUNDS[0] + 1e-6:
        notes.append("alpha at 0: the error does not fall with x in these data")
    if fit.boot is None or len(fit.boot) == 0:
        notes.append(NO_INTERVAL)
    if fit.n_boot_dropped:
        total = fit.n_boot_dropped + (0 if fit.boot is None else len(fit.boot))
        notes.append(
            f"{fit.n_boot_dropped} of {total} bootstrap replicates kept fewer than "
            f"{MIN_DISTINCT_X} distinct x values and were dropped"
        )
    return replace(fit, notes=tuple(notes))
