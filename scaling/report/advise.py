"""Which runs to buy next: the candidates that narrow a question's interval most per
device-hour.

The candidates are the pool's (scaling.report.pool: the sweep's own grid extended by the
sizes and lengths between its own and two more seeds), each at the plan's cost.

Expected narrowing (`rank`): the interval the sweep would give with a candidate added is
scaling.report.questions.answer(..., hypothetical=[run]): every parametric replicate of
the current fit also simulates the candidate at the fit's noise (and counts its residual
degree of freedom) and is refitted; its error is drawn around the mean of the forms the
law keeps, so a run where they disagree is expected to pull them together, as a
measured one would. The replicates of every candidate share
their random numbers with the current answer's (common random numbers), so the
difference of two widths is the candidate's effect, not bootstrap noise; a narrowing
under NOISE of the width counts as none. tests/test_advise.py checks this expected width
against a brute-force Monte Carlo (outcomes drawn from the fit's predictive
distribution, added as if run, the law refitted each time). A run of another recipe
than the one a law is fitted to (another length, for a law in size) is not a point of
that law and narrows nothing.

Seeds of one (method, size, length) are exchangeable for the laws, so they are evaluated
and bought together: a dear run (one costing at least the median candidate) alone, as
it may narrow the interval by itself; a cheap one, or a dear one that alone narrows less
than NOISE, as a block of up to BLOCK seeds (its lowest unbought ones): one cheap run
among dozens narrows by less than NOISE, a few by more. When no block narrows it by NOISE
alone, the ones that narrowed it some are tried together (2, 4, ... of them, the best per
device-hour first) before the advice is that nothing narrows it. While a law has no interval at
all (too few sizes, or too few residual degrees of freedom to know its noise) nothing
can be narrowed: the sizes of a spread `first_design` from the sweep's own grid (all but
the costliest size, at the recipe the laws will be read at), then the cheapest runs of
that recipe, until it has one (scaling.report.design). With an interval missing for another
reason: where a law failed its back-test (no gap is read past the data then), more seeds
of the sizes it held out first (`_remeasure`: noise alone fails a sound law's back-test
at times, which more seeds tell from a law that does not hold); then, for the question
past the sizes' reach, the cheapest larger sizes. Only when none is left is the advice
that nothing helps, with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import SpecError
from scaling.plan.planner import PlannedRun
from scaling.report import design
from scaling.report.gaps import REFERENCE, every_label
from scaling.report.goal import QuestionKind
from scaling.report.pool import Pool, run_of
from scaling.report.questions import (
    ComputeOptimal,
    Estimate,
    GapAt,
    GapCloses,
    Question,
    Run,
    answer,
    law_runs,
    same_recipe,
)

#: A narrowing smaller than this fraction of the current width is none: what is left of
#: the bootstrap's noise once the replicates are coupled (candidates far from the question
#: moved 400-replicate widths by -1.3% to +1.5% on the quickstart's synthetic twin).
NOISE = 0.03
#: After each pick of a batch, this many of the next best are rescored with it bought.
RESCORE = 8
#: Seeds of one size evaluated (and bought) together: one run more among dozens narrows
#: an interval by less than the bootstrap's noise, a few of them by more.
BLOCK = 3
#: Why a run of another recipe than a law's narrows nothing.
OTHER_RECIPE = "another recipe than the law's: not a point of it"
#: The most blocks bought together when none narrows the interval alone (_together).
TOGETHER = 16


def make_question(
    kind: QuestionKind | None,
    *,
    params: float | None,
    threshold: float,
    flops: float | None,
    largest: float,
) -> Question:
    """The question asked (`largest`: the biggest encoder the sweep may train, the
    default question's size: the gap at the largest model)."""
    if kind is None or kind is QuestionKind.GAP_AT:
        n = largest if params is None else params
        if not n > 0:
            raise SpecError(f"--params must be a positive number of parameters, got {n}")
        return GapAt(params=float(n))
    if kind is QuestionKind.CLOSES:
        if not threshold > 0:
            raise SpecError(f"--threshold must be a positive number of points, got {threshold}")
        return GapCloses(threshold=threshold)
    if flops is None or not flops > 0:
        raise SpecError("--question frontier needs --flops C (training FLOPs, positive)")
    return ComputeOptimal(flops=float(flops))


def describe(q: Question) -> str:
    if isinstance(q, GapAt):
        return f"the gap at {q.params:.3g} parameters"
    if isinstance(q, GapCloses):
        return f"where the gap falls under {q.threshold:g} points"
    return f"the gap at equal compute, {q.flops:.3g} FLOPs"


# ----------------------------------------------------------------------------- ranking


@dataclass(frozen=True)
class Advice:
    planned: PlannedRun
    hours: float
    width: float  # expected interval width with it (NaN: not computed, see why)
    narrowing: float  # expected narrowing per device-hour (0: none)
    why: str
    block: tuple[PlannedRun, ...] = ()  # the runs evaluated together (planned first)

    @property
    def useful(self) -> bool:
        return self.narrowing > 0


@dataclass(frozen=True)
class Ranking:
    question: Question
    now: Estimate | None  # None: no law to ask yet (nothing finished, too few runs)
    rows: tuple[Advice, ...]  # best first
    batch: tuple[Advice, ...]  # what to buy now (greedy, as many as asked)
    note: str = ""

    @property
    def wanted(self) -> bool:
        """Whether some run is worth buying (if the budget allows): one that narrows the
        interval, or one that gives a law an interval at all."""
        return any(a.useful or math.isnan(a.width) for a in self.rows)


def rank(
    table: Any,
    candidates: Sequence[PlannedRun],
    question: Question,
    *,
    batch: int = 1,
    budget: float = math.inf,
    n_boot: int = 400,
    seed: int = 0,
    grid: frozenset[str] = frozenset(),
) -> Ranking:
    """Rank `candidates` (planned runs not run yet) for `question` given the finished runs
    of `table`; `batch`: how many to buy now, within `budget` device-hours; `grid`: the
    run_ids of the sweep as written (a first design is drawn from them)."""
    df = _finished(table)
    cands = [p for p in candidates if p.feasible and math.isfinite(p.gpu_hours)]
    methods = sorted({p.spec.method for p in cands} | set(df["method"] if len(df) else ()))
    if REFERENCE not in methods or len(methods) < 2:
        raise SpecError(
            f"a gap needs {REFERENCE} runs and another method's; the sweep has {methods}"
        )
    joint = isinstance(question, ComputeOptimal)
    lacking = design.lacking(df, methods, joint)
    if lacking:  # no law to ask yet: the cheapest runs that give each one
        rows = [
            Advice(p, p.gpu_hours, math.nan, 0.0, why)
            for p, why in design.unlock(df, cands, lacking, grid, joint)
        ]
        chosen = _take(rows, batch, budget)
        note = (
            "no finished runs: a cheap, well-spread first design"
            if not len(df)
            else "no interval yet: " + "; ".join(f"{m}: {n.why}" for m, n in lacking.items())
        )
        return Ranking(question, None, tuple(rows), tuple(chosen), note)
    now = answer(df, question, n_boot=n_boot, seed=seed)
    cands, other = _of_the_laws(df, cands, joint, now.width)
    if not now.reliable:  # no interval: re-measure a failed back-test; larger sizes
        rows = _remeasure(cands, now.failed) + _extend(df, cands, now.why)
        return Ranking(question, now, tuple(rows), tuple(_take(rows, batch, budget)), now.why)
    groups = _groups(cands)
    dear = float(np.median([g[0].gpu_hours for g in groups])) if groups else math.inf
    rows = _evaluate(df, groups, question, now.width, [], n_boot, seed, dear)
    if not any(a.useful for a in rows):  # each too little alone: a few of them together
        rows = _together(df, rows, question, now.width, n_boot, seed) + rows
    rows += other
    chosen: list[Advice] = []
    spent = 0.0
    pending = list(rows)
    while pending and len(chosen) < batch:
        best = next((a for a in pending if a.useful and spent + a.hours <= budget), None)
        if best is None:
            break
        for p in best.block:  # the block's runs, as many as the batch and budget take
            if len(chosen) < batch and spent + p.gpu_hours <= budget:
                chosen.append(Advice(p, p.gpu_hours, best.width, best.narrowing, best.why))
                spent += p.gpu_hours
        if len(chosen) >= batch:
            break
        # The blocks that narrowed alone, best first, are the ones worth rescoring.
        taken = {c.planned.spec.run_id for c in chosen}
        left = [
            [p for p in _group_of(a, groups) if p.spec.run_id not in taken]
            for a in pending
            if a is not best and a.useful
        ][:RESCORE]
        bought = [run_of(c.planned) for c in chosen]
        pending = _evaluate(
            df, [b for b in left if b], question, best.width, bought, n_boot, seed, dear
        )
    return Ranking(question, now, tuple(rows), tuple(chosen))


def _of_the_laws(
    df: pd.DataFrame, cands: Sequence[PlannedRun], joint: bool, width: float
) -> tuple[list[PlannedRun], list[Advice]]:
    """The candidates of the recipes the laws are fitted to, and the others as advice
    that does not narrow (a run of another recipe is not a point of the law)."""
    laws = {m: law_runs(df[df["method"] == m], joint=joint) for m in df["method"].unique()}
    mine, other = [], []
    for p in cands:
        law = laws.get(p.spec.method)
        if law is None or same_recipe(run_of(p), law):
            mine.append(p)
        else:
            other.append(Advice(p, p.gpu_hours, width, 0.0, OTHER_RECIPE))
    return mine, other


def _finished(table: Any) -> pd.DataFrame:
    df = every_label(table)  # the laws the questions are about: every label
    if not len(df):
        return df
    return df[(df["state"] == "finished") & df["top1"].notna()]


def _key(p: PlannedRun) -> tuple[Any, ...]:
    """What a law sees of a run: everything but its seed."""
    s = p.spec
    return (s.method, json.dumps(s.identity() | {"seed": None}, sort_keys=True, default=str))


def _groups(cands: Sequence[PlannedRun]) -> list[list[PlannedRun]]:
    """Exchangeable runs (one method, size, length and recipe; seeds differ), lowest
    seeds first."""
    groups: dict[tuple[Any, ...], list[PlannedRun]] = {}
    for p in sorted(cands, key=lambda p: p.spec.seed):
        groups.setdefault(_key(p), []).append(p)
    return list(groups.values())


def _group_of(a: Advice, groups: Sequence[Sequence[PlannedRun]]) -> Sequence[PlannedRun]:
    return next(g for g in groups if a.planned in g)


def _evaluate(
    df: pd.DataFrame,
    groups: Sequence[Sequence[PlannedRun]],
    question: Question,
    width: float,
    bought: list[Run],
    n_boot: int,
    seed: int,
    dear: float,
) -> list[Advice]:
    """Each group's block: one run where a run costs at least `dear` (it may narrow the
    interval alone), else, or when one narrows less than NOISE, up to BLOCK seeds."""
    rows = []
    for group in groups:
        for k in (1, BLOCK) if group[0].gpu_hours >= dear and len(group) > 1 else (BLOCK,):
            block = group[:k]
            runs = [run_of(p) for p in block]
            est = answer(df, question, hypothetical=[*bought, *runs], n_boot=n_boot, seed=seed)
            after = est.width if est.reliable else math.nan
            gain = width - after if math.isfinite(after) else 0.0
            if gain > NOISE * width:
                break
        hours = sum(p.gpu_hours for p in block)
        n = f"{len(block)} seeds: " if len(block) > 1 else ""
        if gain <= NOISE * width:
            why = n + "no narrowing beyond the bootstrap's noise"
            rows.append(Advice(block[0], hours, after, 0.0, why, tuple(block)))
            continue
        why = n + f"{100 * gain / width:.1f}% narrower"
        rows.append(Advice(block[0], hours, after, gain / hours, why, tuple(block)))
    return sorted(rows, key=lambda a: (-a.narrowing, a.hours))


def _together(
    df: pd.DataFrame,
    rows: Sequence[Advice],
    question: Question,
    width: float,
    n_boot: int,
    seed: int,
) -> list[Advice]:
    """When no block narrows the interval by NOISE alone: the blocks that narrowed it
    some (under the noise floor), best per device-hour first, 2, 4, 8, ... of them
    together, the first such union that narrows it by more than NOISE (none: [])."""
    some = sorted(
        (a for a in rows if math.isfinite(a.width) and a.width < width),
        key=lambda a: -(width - a.width) / a.hours,
    )
    m = 2
    while m <= TOGETHER and m // 2 < len(some):
        block = [p for a in some[:m] for p in a.block]
        est = answer(
            df, question, hypothetical=[run_of(p) for p in block], n_boot=n_boot, seed=seed
        )
        after = est.width if est.reliable else math.nan
        gain = width - after if math.isfinite(after) else 0.0
        if gain > NOISE * width:
            hours = sum(p.gpu_hours for p in block)
            why = f"{len(block)} runs together ({min(m, len(some))} blocks): {100 * gain / width:.1f}% narrower"
            return [Advice(block[0], hours, after, gain / hours, why, tuple(block))]
        m *= 2
    return []


def _remeasure(cands: Sequence[PlannedRun], failed: dict[str, tuple[float, ...]]) -> list[Advice]:
    """More seeds of the sizes a failed back-test held out (`failed`: method -> sizes): a
    sound law fails its back-test 1 - BACKTEST_LEVEL of the time by noise alone, which a
    mean of more seeds tells from a law that does not hold. One seed of each such size
    (and length) at a time, cheapest first."""
    ranked: list[tuple[int, float, Advice]] = []
    for method, sizes in failed.items():
        why = (
            f"{method}'s law failed its back-test at this size: more seeds tell noise "
            "from a law that does not hold"
        )
        held = [p for p in cands if p.spec.method == method and p.encoder_params in sizes]
        for group in _groups(held):
            ranked += [
                (i, p.gpu_hours, Advice(p, p.gpu_hours, math.nan, 0.0, why))
                for i, p in enumerate(group)
            ]
    return [a for *_, a in sorted(ranked, key=lambda r: r[:2])]


def _extend(df: pd.DataFrame, cands: Sequence[PlannedRun], why: str) -> list[Advice]:
    """With no interval although every law has its runs (the question past the reach of
    the sizes trained, an unmeasurable floor): the cheapest larger sizes, per method."""
    per = []
    for method in sorted({p.spec.method for p in cands}):
        top = df.loc[df["method"] == method, "encoder_params"].max()
        bigger = sorted(
            (p for p in cands if p.spec.method == method and p.encoder_params > top),
            key=lambda p: (p.gpu_hours, p.spec.seed),
        )
        per.append([Advice(p, p.gpu_hours, math.nan, 0.0, "a larger size: " + why) for p in bigger])
    rows = []
    for i in range(max((len(x) for x in per), default=0)):
        rows += sorted((x[i] for x in per if i < len(x)), key=lambda a: a.hours)
    return rows


def _take(rows: Sequence[Advice], batch: int, budget: float) -> list[Advice]:
    chosen, spent = [], 0.0
    for a in rows:
        if len(chosen) < batch and spent + a.hours <= budget:
            chosen.append(a)
            spent += a.hours
    return chosen


# ----------------------------------------------------------------------------- one call


def advise(
    pool: Pool,
    table: Any,
    question: Question,
    *,
    batch: int = 1,
    budget: float = math.inf,
    bought: Sequence[str] = (),
    n_boot: int = 400,
    seed: int = 0,
) -> Ranking:
    """Rank the pool's runs not finished, running or bought yet (plan-level run_ids in
    `bought`) for `question`; a first design comes from the sweep's own grid."""
    states = dict(
        zip(table.column("run_id").to_pylist(), table.column("state").to_pylist(), strict=True)
    )
    taken = set(bought)
    cands = [
        p
        for p in pool.plan.runs
        if states.get(p.spec.run_id, "pending") in ("pending", "resumable")
        and p.spec.run_id not in taken
    ]
    return rank(
        table,
        cands,
        question,
        batch=batch,
        budget=budget,
        n_boot=n_boot,
        seed=seed,
        grid=pool.grid,
    )
