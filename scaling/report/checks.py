"""Validity checks on a sweep's results: what limits what its numbers can say.

Each is one line that says what to change. The report shows them above the figures and
`scaling report` prints them; the plan's own checks (warmup, batch-norm batch; see
`scaling.plan.checks`) come through the results' `warnings` column.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from scaling.plan.checks import binomial_half_width
from scaling.plan.layout import test_size
from scaling.report.gaps import REFERENCE


def validity_warnings(results: pd.DataFrame, gap_df: pd.DataFrame) -> list[str]:
    done = results[results["state"] == "finished"]
    out: list[str] = []
    out += _plan_warnings(results)
    out += _seeds(done)
    out += _not_converged(done)
    out += _test_set(done, gap_df)
    if (gap_df["selected_by"] == "test").any():
        out.append(
            "SimCLR recipes were chosen on the test set (runs without validation "
            "scores): the gaps are optimistic; rerun with this version to select on validation"
        )
    return out


def _plan_warnings(results: pd.DataFrame) -> list[str]:
    if "warnings" not in results:
        return []
    counts: Counter[str] = Counter()
    for text in results["warnings"].dropna():
        counts.update(w for w in str(text).split("; ") if w)
    return [f"{n} run{'s' * (n != 1)}: {w}" for w, n in counts.items()]


def _seeds(done: pd.DataFrame) -> list[str]:
    if done.empty or done["seed"].nunique() > 1:
        return []
    return [
        "one seed: no gap has an interval and no trend can be told from run-to-run "
        "noise; give the sweep `seeds: [0, 1, 2]` (trade a recipe axis for seeds)"
    ]


def _not_converged(done: pd.DataFrame) -> list[str]:
    """Finished runs whose training curve had not levelled off (scaling.train.convergence,
    the results' `converged` column), the baseline's first: its gaps are not judged."""
    if "converged" not in done:
        return []
    out = []
    for method in sorted(done["method"].unique(), key=lambda m: (m != REFERENCE, m)):
        runs = done[(done["method"] == method) & done["converged"].notna()]
        bad = runs[runs["converged"] == False]  # noqa: E712 - a pandas mask
        if bad.empty:
            continue
        widths = ", ".join(f"{w:g}x" for w in sorted(bad["width"].unique()))
        why = str(bad["convergence"].iloc[0]) if "convergence" in bad else "not converged"
        consequence = (
            "their gaps cannot be judged; train it longer (methods.{m}.epochs)"
            if method == REFERENCE
            else "their gaps measure the training budget as much as the method"
        ).format(m=method)
        out.append(
            f"the {method} runs have not converged in {len(bad)} of {len(runs)} "
            f"(widths {widths}; e.g. {why}), judged from each training curve: {consequence}"
        )
    return out


def _test_set(done: pd.DataFrame, gap_df: pd.DataFrame) -> list[str]:
    if done.empty:
        return []
    n = test_size({"name": str(done["dataset"].iloc[0])})
    best = gap_df[(gap_df["kind"] == "best") & gap_df["gap"].notna()]
    if not n or best.empty:
        return []
    p = float(done["top1"].mean())
    half = binomial_half_width(p, n)
    smallest = float(best["gap"].abs().min())
    if half <= smallest:
        return []
    return [
        f"the test set has {n} images: one image is {100 / n:.2f} points and one run's "
        f"top-1 has a 90% binomial interval of +-{half:.2f} points, more than the smallest "
        f"gap reported ({smallest:.2f}); read gaps that small as ties"
    ]
