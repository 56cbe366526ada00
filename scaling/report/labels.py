"""Label efficiency: the gap to supervised training at each label fraction, against size.

At a fraction f < 1 the reference is the supervised baseline trained on that class-
balanced share of the labels, and the other side each evaluation of a pretraining at f
(a probe or fine-tuning: `results.protocol_label`); both come from `gaps.gap_table`, with
Welch intervals over seeds. `answers` says, measured first, whether SimCLR's advantage at
each low fraction grows with size (the difference between the largest and the smallest
architecture and its interval; "cannot tell" when the interval holds 0 or a side has one
seed). `figure` draws SimCLRv2's Fig. 1 from the sweep (improvement over supervised, in
points, against encoder parameters, one line per fraction), and overlays the paper's
Table 7 and SimCLRv2's points only where the sweep measures their setting (ImageNet in
an image folder at 224 px, ResNet-50). `fraction_fits` fits the laws (`laws.fit_sweep`)
of each fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.report.gaps import LEVEL, REFERENCE, display_table, labelled
from scaling.report.intervals import welch_satterthwaite
from scaling.report.laws import FitSet, fit_sweep
from scaling.report.results import arch_label

#: SimCLR Table 7 (fine-tuned top-1, ResNet-50 widths 1x, 2x, 4x; supervised R50 on the
#: same subset) and SimCLRv2 Fig. 1 (R50 1x), by label fraction (/work/shared/PAPER.md):
#: (label, encoder parameters, improvement over supervised R50 in points)
PAPER_POINTS: dict[float, list[tuple[str, float, float]]] = {
    0.01: [
        ("SimCLR R50", 24e6, 48.3 - 25.4),
        ("SimCLR R50 2x", 94e6, 58.5 - 25.4),
        ("SimCLR R50 4x", 375e6, 63.0 - 25.4),
        ("SimCLRv2 R50", 24e6, 57.9 - 25.4),
    ],
    0.1: [
        ("SimCLR R50", 24e6, 65.6 - 56.4),
        ("SimCLR R50 2x", 94e6, 71.7 - 56.4),
        ("SimCLR R50 4x", 375e6, 74.4 - 56.4),
        ("SimCLRv2 R50", 24e6, 68.4 - 56.4),
    ],
}


@dataclass(frozen=True)
class Trend:
    """SimCLR's advantage (supervised minus SimCLR's gap, negated: points, > 0 where
    SimCLR wins) at one label fraction, from the smallest to the largest architecture."""

    fraction: float
    method: str
    small: str
    large: str
    advantage_small: float
    advantage_large: float
    change: float
    lo: float  # the change's interval at LEVEL (NaN: one seed somewhere)
    hi: float

    @property
    def verdict(self) -> str:
        if math.isnan(self.lo):
            return "cannot tell (one seed: no interval)"
        if self.lo > 0:
            return "grows with size"
        if self.hi < 0:
            return "shrinks with size"
        return "cannot tell (the interval holds 0)"

    def sentence(self) -> str:
        interval = (
            ""
            if math.isnan(self.lo)
            else f" ({LEVEL:.0%} interval {self.lo:+.1f} to {self.hi:+.1f})"
        )
        return (
            f"At {self.fraction:.0%} of the labels, measured: {self.method}'s advantage over "
            f"{REFERENCE} training on the same labels is {self.advantage_small:+.1f} points at "
            f"{self.small} and {self.advantage_large:+.1f} at {self.large}, a change of "
            f"{self.change:+.1f}{interval}: it {self.verdict}."
        )


def best_rows(gap_df: pd.DataFrame) -> pd.DataFrame:
    """The best recipe's row per (fraction, architecture, method) with a measured gap."""
    best = gap_df[(gap_df["kind"] == "best") & gap_df["gap"].notna()]
    return best.sort_values(["label_fraction", "method", "encoder_params"])


def trends(gap_df: pd.DataFrame) -> list[Trend]:
    """The advantage's change from the smallest to the largest architecture (by encoder
    parameters) at each label fraction below 1, per method (lowest fraction first)."""
    out = []
    best = best_rows(gap_df)
    for (fraction, method), rows in best.groupby(["label_fraction", "method"], sort=True):
        if fraction >= 1.0 or rows["encoder_params"].nunique() < 2:
            continue
        small, large = rows.iloc[0], rows.iloc[-1]
        change = float(small["gap"] - large["gap"])  # advantage = -gap
        lo = hi = math.nan
        parts = [_variance(small), _variance(large)]
        if all(p is not None for p in parts):
            pieces = [q for p in parts for q in p]  # type: ignore[union-attr]
            _, lo, hi, _ = welch_satterthwaite(change, pieces, LEVEL)
        out.append(
            Trend(
                float(fraction),
                str(method),
                _arch(small),
                _arch(large),
                -float(small["gap"]),
                -float(large["gap"]),
                change,
                lo,
                hi,
            )
        )
    return out


def _variance(row: Any) -> list[tuple[float, int]] | None:
    """The (variance of the mean, dof) terms of a gap: its two sides' seeds."""
    if row["n"] < 2 or row["sup_n"] < 2:
        return None
    return [
        (float(row["std"]) ** 2 / row["n"], int(row["n"]) - 1),
        (float(row["sup_std"]) ** 2 / row["sup_n"], int(row["sup_n"]) - 1),
    ]


def _arch(row: Any) -> str:
    return arch_label(row["depth"], row["width"], row["depth_multiplier"])


def answers(gap_df: pd.DataFrame) -> list[str]:
    """The headline of the label-efficiency question, measured first; [] without a
    fraction below 1."""
    said = [t.sentence() for t in trends(gap_df)]
    low = sorted(f for f in gap_df["label_fraction"].unique() if f < 1.0)
    if low and not said:
        said.append(
            f"At {', '.join(f'{f:.0%}' for f in low)} of the labels: no trend with size can be "
            "measured (fewer than two architectures with a gap on both sides)."
        )
    return said


def fraction_fits(table: Any, **options: Any) -> dict[float, FitSet]:
    """The laws (`laws.fit_sweep`) of each label fraction below 1, fitted on its rows."""
    df = labelled(table if isinstance(table, pd.DataFrame) else table.to_pandas())
    return {
        float(f): fit_sweep(df[df["label_fraction"] == f], **options)
        for f in sorted(df["label_fraction"].unique())
        if f < 1.0
    }


def reproduces_paper(df: pd.DataFrame) -> bool:
    """Whether the sweep measures the setting of Table 7: ImageNet (an image folder) at
    224 px with a ResNet-50, fine-tuned."""
    needed = {"dataset", "image_size", "depth"}
    if not needed <= set(df.columns):
        return False
    rows = df[(df["dataset"] == "imagefolder") & (df["image_size"] == 224) & (df["depth"] == 50)]
    return len(rows) > 0 and (rows.get("eval_protocol") == "finetune").any()


def figure(df: pd.DataFrame, gap_df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Improvement over supervised (points) vs encoder parameters, one line per label
    fraction with its intervals; [] unless some fraction below 1 has two sizes."""
    from scaling.report.figures import _plt, legend_below, save

    best = best_rows(gap_df)
    if not any(f < 1.0 for f in best["label_fraction"].unique()):
        return []
    if best.groupby("label_fraction")["encoder_params"].nunique().max() < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for fraction, rows in best.groupby("label_fraction", sort=True):
        for method, line in rows.groupby("method"):
            x = line["encoder_params"].astype(float)
            y = -line["gap"].astype(float)
            err = [(line["gap"] - line["gap_lo"]).abs(), (line["gap_hi"] - line["gap"]).abs()]
            ax.errorbar(
                x, y, yerr=err, marker="o", capsize=3, label=f"{method}, {fraction:.0%} labels"
            )
    if reproduces_paper(df):
        for fraction, points in PAPER_POINTS.items():
            ax.scatter(
                [p[1] for p in points],
                [p[2] for p in points],
                marker="*",
                s=60,
                label=f"paper, {fraction:.0%} labels (Table 7, SimCLRv2)",
            )
    ax.axhline(0.0, color="#888", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters")
    ax.set_ylabel(f"improvement over {REFERENCE} on the same labels (points)")
    ax.set_title(f"Label efficiency ({LEVEL:.0%} Welch intervals over seeds)")
    legend_below(ax)
    return save(fig, out_dir, "label_efficiency")


def section(gap_df: pd.DataFrame, said: list[str]) -> str:
    """The report's label-efficiency section (HTML): the answer, then the gap per fraction."""
    from scaling.report.html import _e, html_table

    low = gap_df[gap_df["label_fraction"] < 1.0]
    if low.empty:
        return ""
    shown = display_table(gap_df)
    parts = [
        "<h2>Label efficiency</h2>",
        "".join(f"<p class='answer'>{_e(s)}</p>" for s in said),
        "<p>Gap = supervised top-1 minus SimCLR's, in points, at each share of the labels "
        "(negative where SimCLR wins); the supervised baseline trained on that share, "
        "SimCLR's pretraining evaluated on it.</p>",
        html_table(shown, list(shown.columns), ("labels", "architecture", "best recipe", "note")),
    ]
    return "\n".join(parts)
