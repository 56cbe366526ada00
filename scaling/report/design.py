"""What a law lacks before it has an interval, and the runs that give it one: a cheap,
well-spread first design from the sweep's own grid, then the cheapest runs of the same
recipe (scaling.report.advise buys these while nothing can be narrowed yet)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.plan.planner import PlannedRun
from scaling.report.bootstrap import MIN_DOF
from scaling.report.fit import MIN_DISTINCT_X

#: Laws the questions fit: 3 parameters in size (gap at, where it closes), 5 joint.
PARAMS = {False: 3, True: 5}
#: Sizes in a first design, at most.
FIRST_SIZES = 5


@dataclass(frozen=True)
class Need:
    """What one method's law lacks for an interval."""

    sizes: bool  # too few distinct sizes: new sizes first
    runs: int  # runs still needed (sizes and residual degrees of freedom)
    why: str


def lacking(df: pd.DataFrame, methods: Sequence[str], joint: bool) -> dict[str, Need]:
    """What keeps each method's law from an interval: too few sizes, too few runs."""
    out = {}
    p = PARAMS[joint]
    for method in methods:
        sub = df[df["method"] == method] if len(df) else df
        sizes = sub["encoder_params"].nunique() if len(sub) else 0
        runs = max(MIN_DISTINCT_X - sizes, p + MIN_DOF - len(sub))
        if sizes < MIN_DISTINCT_X:
            out[method] = Need(True, runs, f"{sizes} size(s); a law needs {MIN_DISTINCT_X}")
        elif runs > 0:
            dof = len(sub) - p
            out[method] = Need(False, runs, f"{dof} residual dof; an interval needs {MIN_DOF}")
    return out


def unlock(
    df: pd.DataFrame,
    cands: Sequence[PlannedRun],
    lacking: dict[str, Need],
    grid: frozenset[str],
    joint: bool,
) -> list[tuple[PlannedRun, str]]:
    """Per method that lacks a law: the sizes of a spread first design it has not run
    (from the sweep's own grid) where it lacks sizes, then its cheapest runs (new sizes
    first while it lacks them), as many as it needs; interleaved between methods,
    cheapest first within a round."""
    per = []
    for method, need in lacking.items():
        mine = [p for p in cands if p.spec.method == method]
        have = set(df.loc[df["method"] == method, "encoder_params"]) if len(df) else set()
        own = [p for p in mine if p.spec.run_id in grid] or mine
        design = first_design(own, have, joint=joint)  # kept until it is run
        ids = {p.spec.run_id for p in design}
        recipes = design_recipes(own, joint=joint)
        rest = sorted(
            (p for p in mine if p.spec.run_id not in ids and _recipe(p) in recipes),
            key=lambda p: (need.sizes and p.encoder_params in have, p.gpu_hours),
        )
        order = (design + rest)[: max(need.runs, len(design))]
        first = not have and need.sizes
        why = "first design: cheap, spread" if first else f"the law lacks: {need.why}"
        per.append([(p, why) for p in order])
    rows = []
    for i in range(max((len(x) for x in per), default=0)):
        rows += sorted((x[i] for x in per if i < len(x)), key=lambda a: a[0].gpu_hours)
    return rows


def _recipe(p: PlannedRun) -> str:
    return json.dumps(dict(p.spec.config), sort_keys=True, default=str)


def design_recipes(cands: Sequence[PlannedRun], *, joint: bool = False) -> list[str]:
    """The recipes a first design is drawn from (see first_design)."""
    cost: dict[str, float] = {}
    for p in cands:
        cost[_recipe(p)] = cost.get(_recipe(p), 0.0) + p.gpu_hours
    by_cost = sorted(cost, key=cost.__getitem__)
    return [by_cost[-1], by_cost[0]] if joint and len(by_cost) > 1 else by_cost[-1:]


def first_design(
    cands: Sequence[PlannedRun], have: Collection[float] = frozenset(), *, joint: bool = False
) -> list[PlannedRun]:
    """A cheap, well-spread first design of one method: up to FIRST_SIZES sizes spread
    over the range (the smallest in, counting the sizes in `have`, already run), at the
    lowest seed, in the recipe the laws will be read at: the one that trains most (the
    longest, the report's headline recipe in a sweep over lengths), and for a joint law
    (`joint`) the one that trains least as well. The largest size is left out while
    enough sizes remain: it costs most, and whether it narrows the answer enough for its
    cost is the ranking's call, once a law exists. The runs not in `have`, cheapest first."""
    if not cands:
        return []
    seed = min(p.spec.seed for p in cands)
    keep = design_recipes(cands, joint=joint)
    out: list[PlannedRun] = []
    for recipe in keep:
        runs = [p for p in cands if p.spec.seed == seed and _recipe(p) == recipe]
        by_size = {p.encoder_params: p for p in sorted(runs, key=lambda p: -p.gpu_hours)}
        sizes = sorted(set(by_size) | set(have))
        if len(sizes) > MIN_DISTINCT_X and sizes[-1] not in have:
            sizes = sizes[:-1]
        pick = np.unique(np.round(np.linspace(0, len(sizes) - 1, min(FIRST_SIZES, len(sizes)))))
        out += [by_size[n] for n in (sizes[int(i)] for i in pick) if n in by_size and n not in have]
    return sorted(out, key=lambda p: p.gpu_hours)
