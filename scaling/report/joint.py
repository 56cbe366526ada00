"""The joint law over model size and training length, and what it says per FLOP.

When a sweep varies both the encoder's size N (parameters) and its training length D
(images seen: epochs x the images of one epoch, for SimCLR its pretraining), each method
gets err = E + A N^-alpha + B D^-beta (Hoffmann et al. 2022, Approach 3; scaling.report.
forms.JOINT), fitted with the same Huber loss in log space and the same parametric
bootstrap as the one-variable laws, back-tested on the largest N (every training length
at that size held out, predicted from the smaller ones).

Compute: a run's training FLOPs are in the results table (`train_flops`, counted by the
trainer: SimCLR's two views and gradient caching cost more per image than a supervised
step). Per method, FLOPs per image seen are fitted as c N^gamma over its runs, so a
budget C buys D = C / (c N^gamma) images at size N. The compute-optimal point minimises
the law along that line (`optimum`); for c N^gamma the closed form is
N* = (alpha A / (beta gamma B))^(1 / (alpha + gamma beta)) (C / c)^(beta / (alpha +
gamma beta)) (Hoffmann et al.'s with gamma = 1), which tests/test_joint.py checks the
search against. The search stays within SEARCH x the sizes and lengths trained: an
optimum on that edge says so instead of following the law where it was never measured.

Everything here is fitted, never measured, and the report labels it so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from scaling.report import backtest as bt
from scaling.report.bootstrap import fit_batch
from scaling.report.fit import UNRELIABLE, FormFit, reliable, stream
from scaling.report.forms import JOINT
from scaling.report.numbers import human

#: the optimum is sought within this factor of the sizes and lengths trained
SEARCH = 10.0
#: a joint law needs this many distinct (N, D) cells (5 parameters and one to spare),
#: and at least two sizes and two lengths
MIN_CELLS = JOINT.min_points
GRID = 240  # points on log N per replicate when searching the optimum


@dataclass(frozen=True)
class CostModel:
    """Training FLOPs per image seen = c N^gamma, fitted to a method's runs."""

    log_c: float
    gamma: float

    def per_image(self, n: Any) -> np.ndarray:
        return np.exp(self.log_c + self.gamma * np.log(np.asarray(n, float)))

    @classmethod
    def fit(cls, n: np.ndarray, flops_per_image: np.ndarray) -> CostModel:
        slope, intercept = np.polyfit(np.log(n), np.log(flops_per_image), 1)
        return cls(float(intercept), float(slope))


@dataclass(frozen=True)
class JointLaw:
    """One method's joint law (or why there is none)."""

    method: str
    label: str
    status: str  # "ok" | "too_few_points"
    message: str
    n_runs: int
    n_cells: int
    n_range: tuple[float, float]
    d_range: tuple[float, float]
    level: float = 0.9
    fit: FormFit | None = field(default=None, repr=False)
    cost: CostModel | None = None
    backtest: bt.Backtest | None = None
    withheld: str = ""
    reliable: bool = True
    notes: tuple[str, ...] = ()
    images_per_epoch: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def has_interval(self) -> bool:
        return self.ok and self.reliable and self.fit is not None and len(self.fit.boot) > 0

    def predict(self, n: Any, d: Any) -> np.ndarray:
        assert self.fit is not None
        return self.fit.predict(np.column_stack(np.broadcast_arrays(n, d)))

    def draws(self, n: Any, d: Any) -> np.ndarray:
        assert self.fit is not None
        return self.fit.draws(np.column_stack(np.broadcast_arrays(n, d)))

    def bounds(self, budget: float) -> tuple[float, float]:
        """The range of N searched for an optimum at `budget`: within SEARCH x the sizes
        trained, and where the images it buys are within SEARCH x the lengths trained
        (empty, lo >= hi, when the budget is out of that range)."""
        assert self.cost is not None
        size = lambda flops_per_image: math.exp(  # noqa: E731 - N at that cost per image
            (math.log(flops_per_image) - self.cost.log_c) / self.cost.gamma
        )
        lo, hi = self.n_range[0] / SEARCH, self.n_range[1] * SEARCH
        if self.cost.gamma > 0:
            lo = max(lo, size(budget / (self.d_range[1] * SEARCH)))
            hi = min(hi, size(budget / (self.d_range[0] / SEARCH)))
        return lo, hi

    def optimum(self, budget: float) -> dict[str, Any]:
        """The compute-optimal (N, D) for `budget` FLOPs and its fitted error, with
        intervals over the replicates; `edge` says when the optimum sits on the edge
        of the searched range (the law would go further than it was measured)."""
        assert self.fit is not None and self.cost is not None
        lo, hi = np.log(self.bounds(budget))
        cost = self.cost
        if lo >= hi:
            return {"budget": budget, "out_of_range": True}

        def loss(log_n: float) -> float:
            n = math.exp(log_n)
            return float(self.predict(n, budget / cost.per_image(n))[0])

        best = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
        n_opt = math.exp(float(best.x))
        out: dict[str, Any] = {
            "budget": budget,
            "N": n_opt,
            "D": budget / float(cost.per_image(n_opt)),
            "err": float(best.fun),
            "edge": bool(min(best.x - lo, hi - best.x) < 1e-3 * (hi - lo)),
            "out_of_range": False,
        }
        if self.has_interval:
            n_b, err_b = self.optimum_draws(budget)
            q = ((1 - self.level) / 2, (1 + self.level) / 2)
            out["N_interval"] = tuple(float(v) for v in np.quantile(n_b, q))
            out["err_interval"] = tuple(float(v) for v in np.quantile(err_b, q))
            d_b = budget / cost.per_image(n_b)
            out["D_interval"] = tuple(float(v) for v in np.quantile(d_b, q))
        return out

    def optimum_draws(self, budget: float) -> tuple[np.ndarray, np.ndarray]:
        """Each replicate's optimal N and its error at `budget` (grid search, refined by
        a parabola through the grid's best point and its neighbours)."""
        assert self.fit is not None and self.cost is not None
        log_n = np.linspace(*np.log(self.bounds(budget)), GRID)
        n = np.exp(log_n)
        errs = self.draws(n, budget / self.cost.per_image(n))  # (B, GRID)
        i = np.clip(errs.argmin(axis=1), 1, GRID - 2)
        rows = np.arange(len(errs))
        y0, y1, y2 = errs[rows, i - 1], errs[rows, i], errs[rows, i + 1]
        curv = y0 - 2 * y1 + y2
        shift = np.where(curv > 0, 0.5 * (y0 - y2) / np.where(curv > 0, curv, 1.0), 0.0)
        step = log_n[1] - log_n[0]
        shift = np.clip(shift, -1, 1)
        vertex = y1 - 0.25 * (y0 - y2) * shift  # the parabola's value at its vertex
        return np.exp(log_n[i] + shift * step), vertex

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "label": self.label,
            "status": self.status,
            "message": self.message,
            "n_runs": self.n_runs,
            "n_cells": self.n_cells,
            "N_range": list(self.n_range),
            "D_range": list(self.d_range),
            "level": self.level,
            "notes": list(self.notes),
        }
        if self.ok and self.fit is not None:
            iv = self.fit.intervals(self.level) if self.has_interval else {}
            out.update(
                {
                    "formula": JOINT.formula,
                    "params": self.fit.params(),
                    "intervals": {k: (None if v is None else list(v)) for k, v in iv.items()},
                    "interval_reliable": self.reliable,
                    "noise_points": 100 * self.fit.sigma,
                    "residual_dof": self.fit.dof,
                    "flops_per_image": None
                    if self.cost is None
                    else {"c": math.exp(self.cost.log_c), "gamma": self.cost.gamma},
                    "backtest": None if self.backtest is None else self.backtest.to_dict(),
                    "extrapolation_withheld": self.withheld or None,
                }
            )
        return out


def fit_joint(
    runs: pd.DataFrame,
    *,
    method: str,
    label: str,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    extra: Any = None,
) -> JointLaw:
    """The joint law of one method's finished runs (columns encoder_params, images_seen,
    top1, train_flops). `extra`: (N, D) of hypothetical runs, one row per run, that join
    every parametric replicate (as scaling.report.fit.fit_power_law's)."""
    runs = runs[
        runs["top1"].notna() & (runs["images_seen"].fillna(0) > 0) & (runs["encoder_params"] > 0)
    ]
    n = runs["encoder_params"].to_numpy(float)
    d = runs["images_seen"].to_numpy(float)
    err = 1 - runs["top1"].to_numpy(float)
    cells = {(a, b) for a, b in zip(n, d, strict=True)}
    base = dict(
        method=method,
        label=label,
        n_runs=len(runs),
        n_cells=len(cells),
        n_range=(float(n.min()), float(n.max())) if len(n) else (math.nan, math.nan),
        d_range=(float(d.min()), float(d.max())) if len(d) else (math.nan, math.nan),
        level=level,
    )
    if "epochs" in runs and len(runs):
        base["images_per_epoch"] = float((d / runs["epochs"].to_numpy(float)).mean())
    sizes, lengths = len(set(n)), len(set(d))
    if len(cells) < MIN_CELLS or sizes < 2 or lengths < 2:
        msg = (
            f"{len(cells)} (size, length) cells from {sizes} size(s) x {lengths} training "
            f"length(s): the joint law needs two of each and at least {MIN_CELLS} cells"
        )
        return JointLaw(status="too_few_points", message=msg, **base)  # type: ignore[arg-type]
    x = np.column_stack([n, d])
    more = None if extra is None else np.asarray(extra, float).reshape(-1, 2)
    batch = fit_batch(
        JOINT, x, err[None], n_boot=n_boot, seed=stream(seed, label, "joint"), extra=more
    )
    fit = FormFit.of(batch, 0)
    flops = runs["train_flops"].to_numpy(float)
    ok = np.isfinite(flops) & (flops > 0)
    cost = CostModel.fit(n[ok], flops[ok] / d[ok]) if len(set(n[ok])) >= 2 else None
    test = _backtest(x, err, stream(seed, label, "joint backtest"))
    withheld = ""
    if test is not None and not test.passed:
        withheld = (
            f"the joint law failed its back-test: fitted without the largest size, "
            f"{test.sentence()}; its frontier and the gap at equal compute are withheld"
        )
    notes = []
    if cost is None:
        notes.append("no training FLOPs in the results: no compute-optimal frontier")
    if test is None:
        notes.append("no back-test: it needs three sizes and six cells without the largest")
    if not reliable(fit):
        notes.append(UNRELIABLE.format(dof=fit.dof, runs=len(runs), p=JOINT.n_params))
    return JointLaw(
        status="ok",
        message="",
        fit=fit,
        cost=cost,
        backtest=test,
        withheld=withheld,
        reliable=reliable(fit),
        notes=tuple(notes),
        **base,  # type: ignore[arg-type]
    )


def _backtest(x: np.ndarray, err: np.ndarray, seed: int) -> bt.Backtest | None:
    """Fit without the largest size (all its lengths), predict each held-out cell."""
    n_max = x[:, 0].max()
    train = x[:, 0] < n_max
    train_cells = {tuple(r) for r in x[train]}
    if len(set(x[train, 0])) < 2 or len(train_cells) < MIN_CELLS:
        return None
    held = np.unique(x[~train], axis=0)
    runs = np.array([(x[~train] == h).all(axis=1).sum() for h in held])
    measured = np.array([err[(x == h).all(axis=1)].mean() for h in held])
    rng = np.random.default_rng(seed)
    b = fit_batch(JOINT, x[train], err[train][None], n_boot=bt.BACKTEST_BOOT, seed=seed)
    if not b.boot.shape[1]:
        return None
    each = 1 - (1 - bt.BACKTEST_LEVEL) / len(held)
    pred, lo, hi = bt.predictive(b, held, runs, each, rng)
    where = tuple(f"N {human(h[0])}, D {human(h[1])}" for h in held)
    return bt.Backtest(JOINT.name, held, runs, measured, pred[0], lo[0], hi[0], each, where)
