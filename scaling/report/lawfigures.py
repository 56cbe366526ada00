"""Figures of the joint law and of the compute-optimal frontier (PNG and SVG).

- joint: per method, top-1 against images seen, one colour per model size: the measured
  means over seeds and the fitted joint law's curves (a held-out size dashed where the
  back-test left it out).
- frontier: per method, the fitted top-1 of the compute-optimal run against the FLOP
  budget with its band, and the gap at equal compute with its band; beyond the largest
  run the curves are dashed (extrapolated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.report.figures import _plt, legend_below, save
from scaling.report.fit import REACH
from scaling.report.gaps import REFERENCE, select
from scaling.report.joint import JointLaw
from scaling.report.laws import FitSet
from scaling.report.numbers import human

CAPTIONS = {
    "joint": "Top-1 vs images seen per model size: points are means over seeds (+-1 std), "
    "curves the fitted joint law err = E + A N^-alpha + B D^-beta (fitted, not measured).",
    "frontier": "Fitted compute-optimal top-1 per FLOP budget (left) and the gap at equal "
    "compute (right) with 90% bands; dashed past the largest run trained.",
}
BUDGETS = 30


def joint_figure(df: pd.DataFrame, fits: FitSet, out_dir: Path) -> list[Path]:
    laws = [j for j in fits.joint if j.law.ok]
    if not laws:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(laws), figsize=(5.6 * len(laws), 4.4), squeeze=False)
    for ax, j in zip(axes[0], laws, strict=True):
        runs = select(df, j.domain, j.method, j.recipe)
        runs = runs[(runs["state"] == "finished") & runs["top1"].notna()]
        cells = (
            runs.assign(pct=100 * runs["top1"])
            .groupby(["encoder_params", "images_seen"])["pct"]
            .agg(["mean", "std"])
            .reset_index()
        )
        sizes = sorted(cells["encoder_params"].unique())
        d = np.geomspace(j.law.d_range[0], j.law.d_range[1], 80)
        for i, n in enumerate(sizes):
            colour = plt.cm.viridis(i / max(1, len(sizes) - 1))
            mine = cells[cells["encoder_params"] == n]
            ax.errorbar(
                mine["images_seen"],
                mine["mean"],
                yerr=mine["std"].fillna(0),
                ls="none",
                marker="o",
                capsize=2,
                color=colour,
                label=f"{human(n)} parameters",
            )
            ax.plot(d, 100 * (1 - _predict(j.law, n, d)), color=colour, lw=1.3)
        ax.set(
            xscale="log",
            xlabel="images seen in training",
            ylabel="top-1 accuracy (%)",
            title=f"{j.law.label}: joint law (fitted)",
        )
        ax.grid(alpha=0.3, which="both")
        legend_below(ax)
    return save(fig, out_dir, "joint_law")


def _predict(law: JointLaw, n: float, d: np.ndarray) -> np.ndarray:
    return law.predict(np.full(len(d), n), d)


def frontier_figure(fits: FitSet, out_dir: Path) -> list[Path]:
    shown = [f for f in fits.frontiers if f.frontier.optima]
    if not shown:
        return []
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for sf in shown:
        laws = {j.method: j.law for j in fits.joint if j.domain == sf.domain}
        budgets_run = [o["budget"] for o in sf.frontier.optima]
        top = max(budgets_run)  # REACH x the largest run
        grid = np.geomspace(min(budgets_run) / REACH, top, BUDGETS)
        inside = grid <= top / REACH * (1 + 1e-9)
        beyond = grid >= grid[inside][-1]  # dashed from the last budget inside
        errs = {}
        for method in (REFERENCE, sf.method):
            law = laws[method]
            colour = "tab:green" if method == REFERENCE else "tab:red"
            pts = [law.optimum(float(c)) for c in grid]
            ok = np.array([not p["out_of_range"] for p in pts])
            err = np.array([p.get("err", np.nan) for p in pts])
            errs[method] = err
            for part, style in ((inside, "-"), (beyond, "--")):
                m = part & ok
                left.plot(grid[m], 100 * (1 - err[m]), style, color=colour, lw=1.5)
            if law.has_interval:
                band = np.array(
                    [
                        np.quantile(law.optimum_draws(float(c))[1], [0.05, 0.95])
                        if k
                        else (np.nan, np.nan)
                        for c, k in zip(grid, ok, strict=True)
                    ]
                )
                left.fill_between(
                    grid, 100 * (1 - band[:, 1]), 100 * (1 - band[:, 0]), color=colour, alpha=0.15
                )
            left.plot([], [], color=colour, label=f"{law.label}, compute-optimal (fitted)")
        gap = 100 * (errs[sf.method] - errs[REFERENCE])
        right.plot(grid[inside], gap[inside], color="tab:red", label="gap at equal compute")
        right.plot(grid[beyond], gap[beyond], "--", color="tab:red", label="extrapolated")
        rows = [r for r in sf.frontier.equal_compute if r.get("lo") is not None]
        if rows:
            right.errorbar(
                [r["budget"] for r in rows],
                [r["gap"] for r in rows],
                yerr=np.array(
                    [[r["gap"] - r["lo"] for r in rows], [r["hi"] - r["gap"] for r in rows]]
                ),
                ls="none",
                marker="o",
                color="black",
                capsize=3,
                label="90% interval at the budgets in the table",
            )
        right.axhline(0, color="black", lw=0.5)
    left.set(
        xscale="log",
        xlabel="training FLOPs",
        ylabel="top-1 accuracy (%)",
        title="Compute-optimal runs (fitted)",
    )
    right.set(
        xscale="log",
        xlabel="training FLOPs",
        ylabel="supervised - SimCLR top-1 (points)",
        title="Gap at equal compute (fitted)",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        legend_below(ax)
    return save(fig, out_dir, "frontier")


def make_all(df: pd.DataFrame, fits: FitSet, out_dir: Path) -> dict[str, list[Path]]:
    figs = {"joint": joint_figure(df, fits, out_dir), "frontier": frontier_figure(fits, out_dir)}
    return {k: v for k, v in figs.items() if v}
