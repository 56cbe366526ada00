"""Fit these runs, answer one question with a calibrated interval: the API an advisor
(which runs would narrow the answer most?) builds on.

    from scaling.report.questions import GapAt, GapCloses, ComputeOptimal, Run, answer
    answer(table, GapAt(params=5e6))                   # the fitted gap at 5M parameters
    answer(table, GapCloses(threshold=1.0))             # where it falls under 1 point
    answer(table, ComputeOptimal(flops=1e15))           # the gap at equal compute there
    answer(table, ComputeOptimal(flops=1e15, method="simclr"))  # its optimal size
    answer(table, GapAt(params=5e6), hypothetical=[Run("simclr", 5e6, seeds=3)])

Each answer is an `Estimate`: the value from the real runs, its interval at `level`,
whether that interval is reliable (else why not) and that it is fitted. The laws are the
report's (scaling.report.fit, scaling.report.joint): the supervised reference and the
headline SimCLR recipe (most sizes, then best mean top-1), each in the form its back-test
chose. With `hypothetical` runs (not run yet), every parametric replicate also simulates
them from the fitted law at its noise and refits: the interval is the one the sweep would
be expected to give with them added, while the value stays the real runs' (an advisor
compares these widths per device-hour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from scaling.report.fit import REACH, LawFit, fit_power_law
from scaling.report.frontier import interval
from scaling.report.gapcurve import gap_band, gap_curve, gap_reach
from scaling.report.gaps import REFERENCE, by_values, every_label
from scaling.report.joint import JointLaw, fit_joint
from scaling.report.laws import joint_group, top_group
from scaling.report.results import recipe_columns


@dataclass(frozen=True)
class GapAt:
    """The fitted gap (points, supervised minus SimCLR top-1) at `params` parameters."""

    params: float


@dataclass(frozen=True)
class GapCloses:
    """The size from which the fitted gap stays under `threshold` points."""

    threshold: float = 1.0


@dataclass(frozen=True)
class ComputeOptimal:
    """At `flops` training FLOPs: the gap at equal compute (points; method None), or one
    method's compute-optimal size (parameters)."""

    flops: float
    method: str | None = None


Question = GapAt | GapCloses | ComputeOptimal


@dataclass(frozen=True)
class Run:
    """A run not made yet: its method, size, training length (images seen; joint laws
    only), how many seeds of it and its recipe (config values such as batch_size and
    epochs: a run whose recipe differs from the one the law is fitted to adds nothing to
    it; empty: any)."""

    method: str
    params: float
    images: float | None = None
    seeds: int = 1
    recipe: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Estimate:
    question: Question
    value: float
    lo: float
    hi: float
    level: float
    unit: str
    reliable: bool
    why: str = ""  # why there is no (reliable) interval
    fitted: bool = True
    # where a failed back-test is why there is no interval: each such method's law, the
    # sizes its back-test held out (more seeds of them tell noise from a law that fails)
    failed: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.hi - self.lo


def answer(
    table: Any,
    question: Question,
    *,
    hypothetical: Sequence[Run] = (),
    dataset: str | None = None,
    level: float = 0.9,
    n_boot: int = 400,
    seed: int = 0,
) -> Estimate:
    """The answer to `question` from the finished runs of `table` (one data set: the
    only one, or `dataset`), measured with every label (the full-label study's laws)."""
    df = every_label(table)
    df = df[(df["state"] == "finished") & df["top1"].notna()]
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    methods = sorted(df["method"].unique())
    other = next((m for m in methods if m != REFERENCE), None)
    if REFERENCE not in methods or other is None:
        raise ValueError(f"needs finished {REFERENCE} runs and another method's: {methods}")
    extra = {m: [r for r in hypothetical if r.method == m] for m in methods}
    if isinstance(question, ComputeOptimal):
        laws = {
            m: _joint(df[df["method"] == m], m, extra[m], level, n_boot, seed)
            for m in (REFERENCE, other)
        }
        est = _compute(question, laws[REFERENCE], laws[other], level)
        used = {m: law for m, law in laws.items() if question.method in (None, m)}
        if est.reliable or _why(*used.values()):
            return est
        return replace(est, failed=_failed(used))
    fits = {
        m: _law(df[df["method"] == m], m, extra[m], level, n_boot, seed) for m in (REFERENCE, other)
    }
    ref, con = fits[REFERENCE], fits[other]
    if isinstance(question, GapAt):
        gap, lo, hi = gap_band(ref, con, [question.params])
        reach, withheld = gap_reach(ref, con)
        far = question.params > max(ref.x_max, con.x_max) * reach
        why, failed = _why(ref, con), {}
        if not why and far:
            why = f"{question.params:.3g} parameters is " + (
                f"past the largest model trained, and no law is extrapolated: {withheld}"
                if withheld
                else f"beyond {REACH:g}x the largest model trained: no interval is calibrated there"
            )
            failed = _failed(fits)
        est = _estimate(question, gap[0], lo[0], hi[0], level, "points", why)
        return replace(est, failed=failed)
    curve = gap_curve(ref, con, threshold=question.threshold)
    if curve is None:
        why = ref.message or con.message
        return Estimate(question, math.nan, math.nan, math.nan, level, "parameters", False, why)
    lo, hi = curve.closes_interval
    est = _estimate(question, curve.closes_at, lo, hi, level, "parameters", _why(ref, con))
    if est.reliable or not curve.withheld or _why(ref, con):
        return est
    return replace(est, why=f"{est.why}; {curve.withheld}", failed=_failed(fits))


def _failed(laws: dict[str, Any]) -> dict[str, tuple[float, ...]]:
    """The methods whose law (LawFit or JointLaw) failed its back-test (its extrapolation
    withheld), each with the sizes that back-test held out."""
    out = {}
    for method, law in laws.items():
        if law.withheld and law.backtest is not None:
            held = np.asarray(law.backtest.held, float)
            out[method] = tuple(sorted({float(n) for n in held.reshape(len(held), -1)[:, 0]}))
    return out


def _why(*laws: LawFit | JointLaw) -> str:
    for law in laws:
        if not law.ok:
            return law.message
        if not law.has_interval:
            return f"{law.label}: " + ("; ".join(law.notes) or "no interval")
    return ""


def _estimate(
    q: Question, value: float, lo: float, hi: float, level: float, unit: str, why: str
) -> Estimate:
    if why or not (math.isfinite(lo) and math.isfinite(hi)):
        why = why or "the interval is unbounded within the range the law was checked in"
        return Estimate(q, float(value), math.nan, math.nan, level, unit, False, why)
    return Estimate(q, float(value), float(lo), float(hi), level, unit, True)


def law_runs(runs: pd.DataFrame, *, joint: bool = False) -> pd.DataFrame:
    """The runs of one method (finished, every label) its law is fitted to: one recipe
    (the most sizes, then the best validation) for a law in size, for a joint law the
    group of the other recipe axes with the most (size, length) cells (all: no such group)."""
    if joint:
        group = joint_group(runs, recipe_columns(runs))
        return runs if group is None else group[1]
    groups = list(by_values(runs, recipe_columns(runs)))
    return groups[top_group(groups)][1]


def same_recipe(run: Run, law: pd.DataFrame) -> bool:
    """Whether `run` belongs to the law fitted to the runs `law`: each of its config
    values that all of those runs share (a column of the table) is the same."""
    for key, value in run.recipe:
        if key not in law or law[key].nunique(dropna=False) != 1:
            continue
        have = law[key].iloc[0]
        if isinstance(value, int | float) and not isinstance(value, bool):
            if have is None or not math.isclose(float(have), float(value)):
                return False
        elif str(have) != str(value):
            return False
    return True


def _law(
    runs: pd.DataFrame, method: str, extra: list[Run], level: float, n_boot: int, seed: int
) -> LawFit:
    sub = law_runs(runs)
    extra = [r for r in extra if same_recipe(r, sub)]
    more = np.repeat([r.params for r in extra], [r.seeds for r in extra]) if extra else None
    return fit_power_law(
        sub["encoder_params"],
        1 - sub["top1"],
        label=method,
        x_name="encoder parameters",
        level=level,
        n_boot=n_boot,
        seed=seed,
        extra=more,
    )


def _joint(
    runs: pd.DataFrame, method: str, extra: list[Run], level: float, n_boot: int, seed: int
) -> JointLaw:
    sub = law_runs(runs, joint=True)
    extra = [r for r in extra if same_recipe(r, sub)]
    rows = [(r.params, r.images) for r in extra for _ in range(r.seeds) if r.images]
    more = np.array(rows, float) if rows else None
    return fit_joint(
        sub, method=method, label=method, level=level, n_boot=n_boot, seed=seed, extra=more
    )


def _compute(q: ComputeOptimal, ref: JointLaw, con: JointLaw, level: float) -> Estimate:
    laws = (ref, con) if q.method is None else ((ref if q.method == REFERENCE else con),)
    why = _why(*laws) or next((f"{law.label}: {law.withheld}" for law in laws if law.withheld), "")
    if any(not law.ok or law.cost is None for law in laws):
        return Estimate(q, math.nan, math.nan, math.nan, level, "", False, why or "no costs")
    points = [law.optimum(q.flops) for law in laws]
    if any(p["out_of_range"] for p in points):
        why = "the budget buys sizes or lengths outside what the laws rest on"
        return Estimate(q, math.nan, math.nan, math.nan, level, "", False, why)
    if q.method is not None:
        (p,) = points
        lo, hi = p.get("N_interval", (math.nan, math.nan))
        return _estimate(q, p["N"], lo, hi, level, "parameters", why)
    gap = 100 * (points[1]["err"] - points[0]["err"])
    if why:
        return _estimate(q, gap, math.nan, math.nan, level, "points", why)
    _, e_ref = ref.optimum_draws(q.flops)
    _, e_con = con.optimum_draws(q.flops)
    n = min(len(e_ref), len(e_con))
    lo, hi = interval(100 * (e_con[:n] - e_ref[:n]), level)
    return _estimate(q, gap, lo, hi, level, "points", "")
