"""The gap at equal compute beside the gap at equal size, from two methods' joint laws.

"SimCLR closes the gap with size" and "SimCLR closes the gap with compute" are different
claims: a SimCLR step costs more per image than a supervised one (two views, gradient
caching), so at equal FLOPs it sees fewer images or a smaller network. `compare(ref,
other)` states both, fitted (scaling.report.joint), for a few budgets: the FLOPs of the
largest supervised run, of the largest SimCLR run, and REACH x the largest run (an
extrapolation, labelled so). Each method at each budget gets its compute-optimal size and
training length; the gap at equal compute is the difference of the two optimal errors,
its interval from the two laws' replicates. The gap at equal size is at the largest size
both trained, each method at its longest training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scaling.report.fit import REACH
from scaling.report.joint import JointLaw
from scaling.report.numbers import human


@dataclass(frozen=True)
class Frontier:
    label: str
    level: float
    optima: list[dict[str, Any]] = field(default_factory=list)  # method, budget, N, D, err
    equal_compute: list[dict[str, Any]] = field(default_factory=list)  # budget, gap, lo, hi
    equal_size: dict[str, Any] = field(default_factory=dict)  # N, D per method, gap, lo, hi
    withheld: str = ""
    statement: str = ""
    summary: str = ""  # the two gaps in one sentence, for the report's answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "level": self.level,
            "fitted": True,
            "compute_optimal": self.optima,
            "gap_at_equal_compute": self.equal_compute,
            "gap_at_equal_size": self.equal_size,
            "withheld": self.withheld or None,
            "statement": self.statement,
            "summary": self.summary,
        }


def interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    q = ((1 - level) / 2, (1 + level) / 2)
    return float(np.quantile(draws, q[0])), float(np.quantile(draws, q[1]))


def budgets(ref: JointLaw, other: JointLaw, flops: dict[str, float]) -> list[float]:
    """The largest run's FLOPs of each method, and REACH x the largest of all."""
    values = sorted({flops[ref.method], flops[other.method]})
    return [*values, REACH * values[-1]]


def compare(
    ref: JointLaw, other: JointLaw, flops: dict[str, float], label: str = ""
) -> Frontier | None:
    """Both gaps, or None when either method has no joint law or no cost model."""
    if not (ref.ok and other.ok and ref.cost and other.cost):
        return None
    level = ref.level
    withheld = "; ".join(f"{j.method}: {j.withheld}" for j in (ref, other) if j.withheld)
    out = Frontier(label, level, withheld=withheld)
    if withheld:
        return _with_statement(out, ref, other)
    optima, equal = [], []
    for budget in budgets(ref, other, flops):
        points = {j.method: j.optimum(budget) for j in (ref, other)}
        for j in (ref, other):
            optima.append({"method": j.method, **_epochs(j, points[j.method])})
        if any(p["out_of_range"] for p in points.values()):
            equal.append({"budget": budget, "gap": None, "lo": None, "hi": None})
            continue
        gap = 100 * (points[other.method]["err"] - points[ref.method]["err"])
        row: dict[str, Any] = {"budget": budget, "gap": gap, "lo": None, "hi": None}
        row["extrapolated"] = budget > max(flops.values())
        row["edge"] = any(p["edge"] for p in points.values())
        if ref.has_interval and other.has_interval:
            _, e_ref = ref.optimum_draws(budget)
            _, e_other = other.optimum_draws(budget)
            n = min(len(e_ref), len(e_other))
            row["lo"], row["hi"] = interval(100 * (e_other[:n] - e_ref[:n]), level)
        equal.append(row)
    return _with_statement(
        Frontier(label, level, optima, equal, _equal_size(ref, other)), ref, other
    )


def _epochs(law: JointLaw, point: dict[str, Any]) -> dict[str, Any]:
    """The optimum with its training length also in epochs of the method's data."""
    out = dict(point)
    if law.images_per_epoch and "D" in out:
        out["epochs"] = out["D"] / law.images_per_epoch
    return out


def _equal_size(ref: JointLaw, other: JointLaw) -> dict[str, Any]:
    n = min(ref.n_range[1], other.n_range[1])
    d_ref, d_other = ref.d_range[1], other.d_range[1]
    gap = 100 * float(other.predict(n, d_other)[0] - ref.predict(n, d_ref)[0])
    out: dict[str, Any] = {"N": n, "D": {ref.method: d_ref, other.method: d_other}, "gap": gap}
    out["lo"] = out["hi"] = None
    if ref.has_interval and other.has_interval:
        a, b = ref.draws(n, d_ref)[:, 0], other.draws(n, d_other)[:, 0]
        k = min(len(a), len(b))
        out["lo"], out["hi"] = interval(100 * (b[:k] - a[:k]), ref.level)
    return out


def _iv(lo: Any, hi: Any, level: float) -> str:
    return "" if lo is None else f" ({level:.0%} interval {lo:.2f} to {hi:.2f})"


def _with_statement(f: Frontier, ref: JointLaw, other: JointLaw) -> Frontier:
    from dataclasses import replace

    if f.withheld:
        text = f"No compute-optimal frontier or gap at equal compute: {f.withheld}."
        return replace(f, statement=text, summary=text)
    parts = []
    s = f.equal_size
    parts.append(
        f"Fitted (joint laws, not measured): at equal size ({human(s['N'])} parameters, each "
        f"method at its longest training) the gap is {s['gap']:.2f} points"
        + _iv(s["lo"], s["hi"], f.level)
    )
    for row in f.equal_compute:
        where = f"{human(row['budget'])} FLOPs"
        if row["gap"] is None:
            parts.append(
                f"at {where} the optimum lies outside the sizes and lengths the laws rest on"
            )
            continue
        mine = {o["method"]: o for o in f.optima if o["budget"] == row["budget"]}
        alloc = "; ".join(
            f"{m} N {human(o['N'])}, D {human(o['D'])} images"
            + (f" (~{o['epochs']:.3g} epochs)" if "epochs" in o else "")
            for m, o in mine.items()
        )
        extra = " (extrapolated past the largest run)" if row.get("extrapolated") else ""
        edge = " (an optimum on the edge of the searched range)" if row.get("edge") else ""
        parts.append(
            f"at {where}{extra} the gap at equal compute is {row['gap']:.2f} points"
            + _iv(row["lo"], row["hi"], f.level)
            + f", each method at its compute-optimal point ({alloc}){edge}"
        )
    text = "; ".join(parts) + "."
    largest = [r for r in f.equal_compute if not r.get("extrapolated") and r["gap"] is not None]
    summary = parts[0]
    if largest:
        r = largest[-1]
        summary += (
            f"; at equal compute ({human(r['budget'])} FLOPs, the largest run's, each method at "
            f"its compute-optimal size and length) it is {r['gap']:.2f} points"
            + _iv(r["lo"], r["hi"], f.level)
        )
    summary += ". Details under 'Compute-optimal frontier'."
    if not (ref.has_interval and other.has_interval):
        text += " No intervals: " + "; ".join(
            j.notes[-1] if j.notes else f"{j.method}: none"
            for j in (ref, other)
            if not j.has_interval
        )
    if not math.isfinite(s["gap"]):
        return f
    return replace(f, statement=text, summary=summary)
