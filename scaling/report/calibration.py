"""Do the report's intervals cover what they claim? Measured on data drawn from known laws.

A design is a sweep's shape: `sizes` model sizes (each 4x the parameters of the last, as
doubling a ResNet's width does, from X_MIN), `seeds` runs per size, Gaussian noise of
`noise` points of top-1 on every run, and laws with or without an error floor. For each
design, `measure` draws `reps` pairs of data sets (a supervised and a SimCLR law, in the
range of errors our sweeps see), fits them with the report's own code path
(scaling.report.fit.fit_runs, then scaling.report.gapcurve.gap_band) and counts how
often the stated band holds the true error:

- at the largest size trained, and at REACH (10x) the largest size;
- of the gap (SimCLR minus supervised, in points) at both;
- how often the back-test withheld the extrapolation, and how often the interval was
  declared unreliable (those draw no band and are not counted in the coverage).

`measure_joint` does the same for the joint law over size and training length (its band
at the largest cell and at 10x both, and the compute-optimal size at a budget).

`Method.AFTER` is the report's method (parametric bootstrap, forms chosen by back-test);
`Method.BEFORE` the one it replaced (the saturating law, runs resampled with replacement,
no back-test). tests/test_calibration.py runs a fixed-seed few designs in the suite;
benchmarks/bench_coverage.py runs the whole grid and prints the table in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.enums import StrEnum
from scaling.report.bootstrap import Resampling
from scaling.report.fit import REACH, LawFit, fit_runs
from scaling.report.forms import SATURATING
from scaling.report.gapcurve import gap_band

#: the smallest model of a design (a depth-10 ResNet at width 1/32 has 5,010 parameters)
X_MIN = 5e3
#: parameters grow 4x per size (the width doubles)
RATIO = 4.0


class Method(StrEnum):
    AFTER = "after"  # the report's: parametric bootstrap, forms chosen by back-test
    BEFORE = "before"  # saturating law, runs resampled with replacement, no back-test


@dataclass(frozen=True)
class Law:
    e: float
    a: float
    alpha: float

    def err(self, x: Any) -> np.ndarray:
        return self.e + self.a * np.asarray(x, float) ** -self.alpha


@dataclass(frozen=True)
class Design:
    sizes: int
    seeds: int
    noise: float  # points of top-1, per run
    floor: bool  # whether the true laws saturate

    @property
    def sizes_x(self) -> np.ndarray:
        return X_MIN * RATIO ** np.arange(self.sizes)

    @property
    def x(self) -> np.ndarray:
        return np.repeat(self.sizes_x, self.seeds)

    def laws(self) -> tuple[Law, Law]:
        """(supervised, SimCLR): errors from 25% and 45% at the smallest size to 6% and
        9% at the largest (with a floor of 3% and 5%), or to 4% and 7% without one."""
        xs = self.sizes_x
        out = []
        for first, last, floor in ((0.25, 0.06, 0.03), (0.45, 0.09, 0.05)):
            e = floor if self.floor else 0.0
            last = last if self.floor else last - floor + 0.01
            alpha = math.log((first - e) / (last - e)) / math.log(xs[-1] / xs[0])
            out.append(Law(e, (first - e) * xs[0] ** alpha, alpha))
        return out[0], out[1]

    def __str__(self) -> str:
        return (
            f"{self.sizes} sizes x {self.seeds} seed{'s' * (self.seeds > 1)}, "
            f"{self.noise:g} pt, {'floor' if self.floor else 'no floor'}"
        )


@dataclass(frozen=True)
class Coverage:
    """What `measure` saw on one design: coverage among the data sets that drew a band."""

    design: Design
    method: Method
    reps: int
    at_max: float  # band at the largest size covers the truth
    at_reach: float  # band at REACH x the largest size
    gap_at_max: float
    gap_at_reach: float
    drawn: float  # share of data sets with a band at the largest size (both laws)
    extrapolated: float  # share with a band at REACH x (not withheld, reliable)
    withheld: float  # share of laws whose back-test failed
    forms: dict[str, int] = field(default_factory=dict)  # chosen forms, both laws

    def row(self) -> dict[str, Any]:
        pct = lambda v: None if math.isnan(v) else round(100 * v, 1)  # noqa: E731
        return {
            "design": str(self.design),
            "method": str(self.method),
            "data sets": self.reps,
            "at largest": pct(self.at_max),
            "at 10x": pct(self.at_reach),
            "gap at largest": pct(self.gap_at_max),
            "gap at 10x": pct(self.gap_at_reach),
            "band drawn": pct(self.drawn),
            "10x drawn": pct(self.extrapolated),
            "back-test failed": pct(self.withheld),
            "forms": ", ".join(f"{k} {v}" for k, v in sorted(self.forms.items())),
        }


def fit_design(
    design: Design,
    err: np.ndarray,
    *,
    method: Method,
    n_boot: int,
    seed: int,
    label: str,
) -> list[LawFit]:
    """The report's fit (or the one before it) of R data sets err (R, n) of a design."""
    if method is Method.AFTER:
        return fit_runs(design.x, err, label=label, n_boot=n_boot, seed=seed)
    return fit_runs(
        design.x,
        err,
        label=label,
        n_boot=n_boot if design.seeds > 1 else 0,  # it drew no interval from one seed
        seed=seed,
        forms=(SATURATING,),
        resampling=Resampling.RUNS,
        backtest=False,
    )


def measure(
    design: Design,
    *,
    method: Method = Method.AFTER,
    reps: int = 200,
    n_boot: int = 200,
    seed: int = 0,
) -> Coverage:
    rng = np.random.default_rng([seed, design.sizes, design.seeds, int(design.noise * 10)])
    sup_law, sim_law = design.laws()
    x = design.x
    fits = {}
    for name, law in (("reference", sup_law), ("contrastive", sim_law)):
        err = law.err(x)[None] + rng.normal(0, design.noise / 100, (reps, len(x)))
        fits[name] = fit_design(design, err, method=method, n_boot=n_boot, seed=seed, label=name)
    far = design.sizes_x[-1] * np.array([1.0, REACH])
    truth = {"reference": sup_law.err(far), "contrastive": sim_law.err(far)}
    true_gap = 100 * (truth["contrastive"] - truth["reference"])
    hits: dict[str, list[bool]] = {k: [] for k in ("max", "reach", "gap_max", "gap_reach")}
    drawn = extrapolated = 0
    forms: Counter[str] = Counter()
    withheld = 0
    for i in range(reps):
        pair = [fits["reference"][i], fits["contrastive"][i]]
        forms.update(str(f.form) for f in pair)
        withheld += sum(bool(f.withheld) for f in pair)
        if not all(f.has_interval for f in pair):
            continue
        drawn += 1
        shown = not any(f.withheld for f in pair)
        extrapolated += shown
        for f, name in zip(pair, ("reference", "contrastive"), strict=True):
            lo, hi = f.band(far)
            inside = (lo <= truth[name]) & (truth[name] <= hi)
            hits["max"].append(bool(inside[0]))
            if shown:
                hits["reach"].append(bool(inside[1]))
        _, g_lo, g_hi = gap_band(pair[0], pair[1], far)
        inside = (g_lo <= true_gap) & (true_gap <= g_hi)
        hits["gap_max"].append(bool(inside[0]))
        if shown:
            hits["gap_reach"].append(bool(inside[1]))
    rate = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return Coverage(
        design,
        method,
        reps,
        rate(hits["max"]),
        rate(hits["reach"]),
        rate(hits["gap_max"]),
        rate(hits["gap_reach"]),
        drawn / reps,
        extrapolated / reps,
        withheld / (2 * reps),
        dict(forms),
    )


#: The grid benchmarks/bench_coverage.py measures: designs like ours.
GRID = tuple(
    Design(sizes, seeds, noise, floor)
    for floor in (True, False)
    for sizes in (4, 5, 6, 8)
    for seeds in (1, 3, 5)
    for noise in (0.5, 1.0, 3.0)
)
#: A few designs the test suite measures with fixed seeds (the quickstart's among them).
FAST = (
    Design(5, 3, 1.0, True),
    Design(4, 3, 1.0, True),
    Design(6, 2, 3.0, False),
)


#: The joint law measured: err = E + A N^-alpha + B D^-beta over 5 sizes x 4 lengths
#: (images seen, 7,040 to 56,320: the digits sweep's range), FLOPs = 6 N D.
JOINT_TRUTH = {"E": 0.02, "A": 3.0, "alpha": 0.35, "B": 8.0, "beta": 0.5}
JOINT_SIZES = X_MIN * RATIO ** np.arange(5)
JOINT_LENGTHS = 7_040 * 2.0 ** np.arange(4)


def joint_err(n: Any, d: Any) -> np.ndarray:
    t = JOINT_TRUTH
    return (
        t["E"]
        + t["A"] * np.asarray(n, float) ** -t["alpha"]
        + t["B"] * np.asarray(d, float) ** -t["beta"]
    )


def joint_optimum(budget: float) -> float:
    """The true compute-optimal N for FLOPs = 6 N D (Hoffmann et al.'s closed form)."""
    t = JOINT_TRUTH
    a, b = t["alpha"], t["beta"]
    return (a * t["A"] / (b * t["B"])) ** (1 / (a + b)) * (budget / 6) ** (b / (a + b))


def measure_joint(
    noise: float, *, seeds: int = 3, reps: int = 100, n_boot: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Coverage of the joint law's band at the largest (N, D) trained and at 10x both, of
    the compute-optimal N at the largest run's FLOPs, and its back-test's failure rate,
    over `reps` data sets fitted by the report's code path (scaling.report.joint)."""
    from scaling.report.joint import fit_joint

    rng = np.random.default_rng([seed, seeds, int(noise * 10)])
    n, d = np.meshgrid(JOINT_SIZES, JOINT_LENGTHS, indexing="ij")
    n, d = np.repeat(n.ravel(), seeds), np.repeat(d.ravel(), seeds)
    at = [(n.max(), d.max()), (REACH * n.max(), REACH * d.max())]
    budget = 6 * n.max() * d.max()
    hits: dict[str, list[bool]] = {"largest": [], "10x": [], "optimal N": []}
    failed = 0
    for i in range(reps):
        err = joint_err(n, d) + rng.normal(0, noise / 100, len(n))
        runs = pd.DataFrame(
            {"encoder_params": n, "images_seen": d, "top1": 1 - err, "train_flops": 6 * n * d}
        )
        law = fit_joint(runs, method="m", label="m", n_boot=n_boot, seed=seed + i)
        failed += bool(law.withheld)
        if not law.has_interval:
            continue
        for name, (nn, dd) in zip(("largest", "10x"), at, strict=True):
            lo, hi = np.quantile(law.draws(nn, dd)[:, 0], [0.05, 0.95])
            hits[name].append(bool(lo <= joint_err(nn, dd) <= hi))
        opt = law.optimum(budget)
        if "N_interval" in opt:
            lo, hi = opt["N_interval"]
            hits["optimal N"].append(bool(lo <= joint_optimum(budget) <= hi))
    out: dict[str, Any] = {"design": f"5 sizes x 4 lengths x {seeds} seeds, {noise:g} pt"}
    out.update({k: round(100 * float(np.mean(v)), 1) if v else None for k, v in hits.items()})
    out["back-test failed"] = round(100 * failed / reps, 1)
    return out


def table(rows: Iterable[Coverage]) -> str:
    """A Markdown table of coverage rows (percent)."""
    rows = [r.row() for r in rows]
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
