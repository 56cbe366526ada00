"""Validity checks on a sweep's results: what limits what its numbers can say.

Each is one line that says what to change. The report shows them above the figures and
`scaling report` prints them; the plan's own checks (warmup, batch-norm batch; see
`scaling.plan.checks`) come through the results' `warnings` column.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa

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


def prediction_errors(table: pa.Table) -> dict[str, Any]:
    """How the plan's training time compared with what the finished runs took: the runs
    and the median of |predicted / measured - 1|, overall and per cost source."""
    wanted = ("run_id", "state", "predicted_train_s", "train_time_s", "cost_source")
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    errors: dict[str, list[float]] = {}
    seen: set[Any] = set()
    for r in rows:
        if r.get("run_id") is not None and r["run_id"] in seen:
            continue  # a run's other evaluations: trained once
        seen.add(r.get("run_id"))
        predicted, measured = r.get("predicted_train_s"), r.get("train_time_s")
        if r.get("state") == "finished" and predicted and measured and not math.isnan(predicted):
            errors.setdefault(str(r.get("cost_source")), []).append(abs(predicted / measured - 1))
    every = [e for v in errors.values() for e in v]
    return {
        "runs": len(every),
        "median_error": statistics.median(every) if every else None,
        "by_source": {
            k: {"runs": len(v), "median_error": statistics.median(v)}
            for k, v in sorted(errors.items())
        },
    }
