"""The report's answer, led by what was measured.

For each data set and contrastive method: the gap (supervised top-1 minus the best
SimCLR recipe's, chosen on validation) at the smallest and at the largest model trained,
each with its Welch interval over seeds, and whether it shrinks: the difference of the
two gaps with its interval. The fitted curve's extrapolation comes second, labelled as
such, and is left out when it contradicts the measured points (it would say the gap does
not close while the largest model's gap is already under the threshold, or the reverse).
A size whose supervised baseline has not converged is never part of the answer: it is
named with why ("cannot judge"), and the fitted curve, which rests on it, is not stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from scaling.report.gapcurve import human
from scaling.report.gaps import LEVEL, REFERENCE, unjudged
from scaling.report.intervals import welch_satterthwaite
from scaling.report.laws import FitSet
from scaling.report.results import arch_label

THRESHOLD = 1.0  # points: "the gap has closed"


@dataclass(frozen=True)
class Answer:
    dataset: str
    method: str
    measured: str  # what the runs show, with intervals where seeds allow
    extrapolation: str  # the fitted curve's statement, or why it is not stated
    compute: str = ""  # the joint laws' gap at equal compute and at equal size (fitted)

    def to_dict(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "method": self.method,
            "measured": self.measured,
            "extrapolation": self.extrapolation,
            "compute": self.compute,
        }


def answers(gap_df: pd.DataFrame, fits: FitSet, threshold: float = THRESHOLD) -> list[Answer]:
    best = gap_df[(gap_df["kind"] == "best") & (gap_df["method"] != REFERENCE)]
    best = best[best["encoder_params"].notna()]
    cannot = best.apply(unjudged, axis=1) if len(best) else best["gap"].isna()
    best = best[best["gap"].notna() | cannot]
    out = []
    for (dataset, method), both in best.groupby(["dataset", "method"], sort=True):
        both = both.sort_values("encoder_params")
        rows, skipped = both[both["gap"].notna()], both[cannot[both.index]]
        recipes = gap_df[(gap_df["kind"] == "recipe") & (gap_df["method"] == method)]
        if rows.empty:
            measured, closed = f"Cannot judge: {_not_converged(skipped)}", False
        else:
            measured, closed = _measured(rows, threshold, recipes["recipe"].nunique())
            if len(skipped):
                measured += f" Not judged: {_not_converged(skipped)}"
        compute = next(
            (
                f.frontier.summary
                for f in fits.frontiers
                if f.method == method and f.domain.get("dataset") == dataset
            ),
            "",
        )
        extrapolation = _extrapolation(fits, str(dataset), closed)
        if len(skipped):  # the fits include the unconverged baseline's runs
            extrapolation = (
                f"No fitted curve is stated: it rests on a {REFERENCE} baseline that has not "
                "converged."
            )
            compute = ""  # the gap at equal compute rests on the same fits
        out.append(Answer(str(dataset), str(method), measured, extrapolation, compute))
    return out


def _not_converged(rows: pd.DataFrame) -> str:
    """ "the supervised baseline has not converged at R10 0.5x (train top-1 0.35, ...)." """
    sizes = "; ".join(
        f"{_size(r)}: {r.judgement.split('(', 1)[-1].rstrip(')')}"
        for r in rows.itertuples(index=False)
    )
    return (
        f"the {REFERENCE} baseline has not converged at {sizes}; its gap says more about the "
        f"baseline's training schedule than about the method (train it longer: "
        f"methods.{REFERENCE}.epochs)."
    )


def _gap_text(row: Any) -> str:
    lvl = f"{LEVEL:.0%}"
    if math.isnan(row.gap_lo):
        return f"{row.gap:.2f} points (one seed: no interval)"
    return f"{row.gap:.2f} points ({lvl} interval {row.gap_lo:.2f} to {row.gap_hi:.2f})"


def _size(row: Any) -> str:
    label = arch_label(row.depth, row.width, row.depth_multiplier)
    return f"{label} ({human(row.encoder_params)} parameters)"


def _measured(rows: pd.DataFrame, threshold: float, n_recipes: int) -> tuple[str, bool]:
    """The measured sentence, and whether the gap at the largest model is under threshold."""
    first, last = rows.iloc[0], rows.iloc[-1]
    if n_recipes == 1:
        which = f"one SimCLR recipe, {rows['recipe'].iloc[0].removeprefix('best: ')}"
    elif (rows["selected_by"] == "validation").all():
        which = "best SimCLR recipe per size, chosen on a held-out validation split"
    else:
        which = "best SimCLR recipe per size, chosen on the test set: optimistic"
    if "sup_selected_by" in rows and (rows["sup_selected_by"] == "test").any():
        which += f"; {REFERENCE} recipe chosen on the test set: optimistic"
    scored = [
        f"{who} top-1 by {', '.join(sorted(set(rows[col]) - {''}))}"
        for who, col in (("SimCLR", "protocol"), (REFERENCE, "sup_protocol"))
        if col in rows and set(rows[col]) - {""}
    ]
    if scored:
        which += "; " + ", ".join(scored)
    head = f"Measured ({which}): the gap to supervised is "
    if len(rows) == 1:
        text = head + f"{_gap_text(first)} at {_size(first)}, the only size trained: no trend."
        return text, bool(first.gap < threshold)
    text = head + f"{_gap_text(first)} at {_size(first)} and {_gap_text(last)} at {_size(last)}. "
    change = first.gap - last.gap
    se_a, se_b = first.gap_se, last.gap_se
    if math.isnan(se_a) or math.isnan(se_b):
        text += (
            f"It changes by {change:+.2f} points from the smallest to the largest model; "
            "with one seed, whether that is more than run-to-run noise cannot be told."
        )
    else:
        lo, hi = _difference_interval(first, last)
        iv = f"{change:.2f} points ({LEVEL:.0%} interval {lo:.2f} to {hi:.2f})"
        if lo > 0:
            text += f"It shrinks by {iv} from the smallest to the largest model."
        elif hi < 0:
            text += (
                f"It grows by {-change:.2f} points ({LEVEL:.0%} interval {-hi:.2f} to "
                f"{-lo:.2f}) from the smallest to the largest model."
            )
        else:
            text += (
                f"Its change from the smallest to the largest model, {iv}, is within noise: "
                "no measurable trend."
            )
    if not math.isnan(last.gap_hi) and last.gap_hi < threshold:
        text += f" At the largest model the gap is under {threshold:g} point (interval included)."
    elif last.gap < threshold:
        text += f" At the largest model the measured gap is under {threshold:g} point."
    return text, bool(last.gap < threshold)


def _difference_interval(a: Any, b: Any) -> tuple[float, float]:
    """Interval of gap(a) - gap(b), two independent Welch estimates (Satterthwaite)."""
    parts = [(a.gap_se**2, a.gap_dof), (b.gap_se**2, b.gap_dof)]
    _, lo, hi, _ = welch_satterthwaite(a.gap - b.gap, parts, LEVEL)
    return lo, hi


def _extrapolation(fits: FitSet, dataset: str, measured_closed: bool) -> str:
    heads = [g for g in fits.gaps if g.headline and g.domain.get("dataset") == dataset]
    if not heads:
        return "No fitted curve: it needs finished runs of both methods at four or more sizes."
    g = heads[0]
    if g.curve is None:
        return g.statement
    fitted_closed = g.curve.closes_at <= g.curve.data_max
    if fitted_closed != measured_closed:
        return (
            "The fitted curve is not stated: it disagrees with the measured gap at the "
            "largest model ("
            + ("closed" if measured_closed else "not closed")
            + f" under {g.curve.threshold:g} point), so it does not describe these data."
        )
    return "Fitted curve, second to the measurements: " + g.statement
