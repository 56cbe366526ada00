"""Which figures the data can fill: a figure or panel needs at least MIN_VALUES values on
each of its axes, and a figure left out gets one line that says why.

`scaling.report.figures` draws only what passes these checks; `why_omitted` is the line
the report shows where the figure would be (and `scaling report` prints).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from scaling.report.gapcurve import human
from scaling.report.gaps import REFERENCE

MIN_VALUES = 2  # values an axis needs before a figure or panel is drawn on it


def sizes(df: pd.DataFrame, domain: dict[str, Any]) -> int:
    """Distinct model sizes with a finished run in a domain."""
    done = df[(df["state"] == "finished") & df["top1"].notna()]
    for k, v in domain.items():
        done = done[done[k] == v]
    return int(done["encoder_params"].nunique())


def judged_sizes(gap_df: pd.DataFrame, domain: dict[str, Any]) -> int:
    """Model sizes with a measured gap in a domain (a gap that cannot be judged, against
    a baseline that has not converged, is not one)."""
    rows = gap_df[(gap_df["kind"] == "best") & gap_df["gap"].notna()]
    for k, v in domain.items():
        rows = rows[rows[k] == v]
    return int(rows["encoder_params"].nunique())


def filled(runs: pd.DataFrame, axes: tuple[str, ...]) -> bool:
    """Whether finished SimCLR runs give every axis at least MIN_VALUES values."""
    sim = runs[(runs["method"] != REFERENCE) & (runs["state"] == "finished")]
    return all(sim[a].nunique() >= MIN_VALUES for a in axes)


#: what each figure puts on its axes, for the line that says why it was left out
FIGURE_AXES = {
    "fig7": ("Top-1 vs parameters (Fig. 7)", ("encoder_params",), "model sizes"),
    "gap": ("The gap vs parameters", ("encoder_params",), "model sizes"),
    "fig9": ("SimCLR top-1 vs epochs (Fig. 9)", ("epochs",), "epoch counts"),
    "heatmap": (
        "SimCLR top-1 over batch x epochs",
        ("batch_size", "epochs"),
        "batch sizes and epoch counts",
    ),
    "compute": ("Top-1 vs training compute", ("train_flops",), "training budgets"),
}


def why_omitted(name: str, df: pd.DataFrame, gap_df: pd.DataFrame | None = None) -> str:
    """One line: which figure is not drawn, and the values its axes would have had."""
    title, axes, what = FIGURE_AXES[name]
    unjudged = gap_df is not None and bool((gap_df["judgement"].fillna("") != "").any())
    if name == "gap" and unjudged and sizes(df, {}) >= MIN_VALUES:
        assert gap_df is not None
        judged = judged_sizes(gap_df, {})
        return (
            f"{title} is not drawn: it needs at least {MIN_VALUES} model sizes with a gap "
            f"that can be judged, and {judged} {'has' if judged == 1 else 'have'} one (the "
            f"others' {REFERENCE} baseline has not converged: see the gap table)."
        )
    runs = df[(df["state"] == "finished") & df["top1"].notna()]
    if name in ("fig9", "heatmap"):
        runs = runs[runs["method"] != REFERENCE]
    counts = []
    for axis in axes:
        values = sorted(runs[axis].dropna().unique()) if axis in runs else []
        label = {"encoder_params": "size", "batch_size": "batch size", "epochs": "epoch count"}
        shown = ", ".join(
            human(v) if axis in ("encoder_params", "train_flops") else f"{v:g}" for v in values[:4]
        )
        noun = label.get(axis, "value")
        counts.append(
            f"{len(values)} {noun}{'s' * (len(values) != 1)}" + (f" ({shown})" if values else "")
        )
    return (
        f"{title} is not drawn: it needs at least {MIN_VALUES} {what} with finished runs, "
        f"and this sweep has {' and '.join(counts)}."
    )
