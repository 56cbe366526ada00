"""Paper-style figures of a sweep, as PNG and SVG (matplotlib, Agg backend).

- fig7: top-1 vs encoder parameters, both methods, fitted curves with bootstrap bands
  (the paper's Fig. 7). On an ImageFolder data set the paper's ImageNet points
  (Table 6 / B.3) are overlaid as a reference, labelled as the paper's.
- fig9: SimCLR top-1 vs epochs, one line per batch size (the paper's Fig. 9 / B.1).
- gap: measured gap per architecture and the fitted gap curve, with where it closes.
- heatmap: SimCLR top-1 over batch size x epochs.
- compute: top-1 vs training FLOPs with the compute-frontier fits.

Points are means over seeds with +-1 standard deviation bars. Every function takes the
results DataFrame (gaps.frame) and returns the files it wrote. A figure (or a panel of
one) is drawn only where the data fill it: at least two values on each of its axes
(MIN_VALUES); otherwise it is left out and `make_all` says in one line why (the report
shows the line where the figure would be).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.report.coverage import MIN_VALUES, filled, judged_sizes, sizes, why_omitted
from scaling.report.gapcurve import human
from scaling.report.gaps import REFERENCE, select
from scaling.report.laws import FitSet, SweepFit
from scaling.report.results import arch_label, protocol_label, recipe_label

SUP_STYLE = {"color": "tab:green", "marker": "x"}
HEADLINE_STYLE = {"color": "tab:red", "marker": "*"}
OTHER_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
MAX_PANELS = 4
#: The paper's ImageNet points (Chen et al. 2020, Table 6 and Table B.3; parameter counts
#: of ResNet-50 1x/2x/4x without classifier): (params, top-1, label).
PAPER_FIG7 = (
    (23_508_032, 69.3, "SimCLR 1000 ep."),
    (93_907_072, 74.2, "SimCLR 1000 ep."),
    (375_378_176, 76.5, "SimCLR 1000 ep."),
    (23_508_032, 76.5, "supervised 90 ep."),
    (375_378_176, 78.4, "supervised 90 ep."),
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    with _plt().rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, editable
        fig.savefig(paths[1], bbox_inches="tight")
    _plt().close(fig)
    return paths


def legend_below(ax: Any) -> None:
    """The legend under the axes, so that it never hides a point (saved with a tight
    bounding box, the figure grows to hold it)."""
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(
        fontsize=7.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2 if n > 3 else 1,
        frameon=False,
    )


def _means(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Finished runs' top-1 (points) per group: mean, std, n."""
    done = runs[(runs["state"] == "finished") & runs["top1"].notna()].copy()
    done["pct"] = 100 * done["top1"].astype(float)
    return done.groupby(keys, dropna=False)["pct"].agg(["mean", "std", "count"]).reset_index()


def _domain_title(domain: dict[str, Any]) -> str:
    return f"{domain['dataset']} {domain['image_size']}px, {domain['stem']} stem"


def _style(f: SweepFit, i: int) -> dict[str, Any]:
    if f.method == REFERENCE:
        return SUP_STYLE
    if f.role == "headline":
        return HEADLINE_STYLE
    return {"color": OTHER_COLORS[i % len(OTHER_COLORS)], "marker": "o"}


def _curve(ax: Any, f: SweepFit, style: dict[str, Any], to_pct: bool = True) -> None:
    fit = f.fit
    x = np.geomspace(fit.x_min, fit.x_max, 120)
    scale = (lambda e: 100 * (1 - e)) if to_pct else (lambda e: e)  # noqa: E731
    ax.plot(x, scale(fit.predict(x)), color=style["color"], lw=1.6)
    lo, hi = fit.band(x)
    if np.isfinite(lo).all():
        ax.fill_between(x, scale(lo), scale(hi), color=style["color"], alpha=0.15, lw=0)


def fig7(df: pd.DataFrame, fits: FitSet, out_dir: Path, paper: bool | None = None) -> list[Path]:
    """Top-1 vs encoder parameters per domain: points, fitted curves, bands."""
    plt, paths = _plt(), []
    domains = {tuple(f.domain.items()): f.domain for f in fits.params}
    domains = {k: d for k, d in domains.items() if sizes(df, d) >= MIN_VALUES}
    for n, domain in enumerate(domains.values()):
        fig, ax = plt.subplots(figsize=(7, 4.8))
        mine = [f for f in fits.params if f.domain == domain]
        others = [f for f in mine if f.method != REFERENCE and f.role != "headline"]
        shown = [f for f in mine if f.role == "reference"] + [
            f for f in mine if f.role == "headline"
        ]
        shown += [f for f in mine if f.method == REFERENCE and f.role != "reference"]
        shown += sorted(
            others, key=lambda f: -select(df, f.domain, f.method, f.recipe)["top1"].mean()
        )[:5]
        for i, f in enumerate(shown):
            style = _style(f, i)
            runs = select(df, f.domain, f.method, f.recipe)
            cells = _means(runs, ["encoder_params"])
            label = f.fit.label + ("" if f.fit.ok else " (too few sizes for a curve)")
            scored = _scored(runs)  # how its top-1 was measured
            label += f"; {scored}" if scored else ""
            ax.errorbar(
                cells["encoder_params"],
                cells["mean"],
                yerr=cells["std"].fillna(0),
                ls="none",
                capsize=2,
                label=label,
                ms=8 if style["marker"] == "*" else 6,
                **style,
            )
            if f.fit.ok:
                _curve(ax, f, style)
        if paper or (paper is None and domain.get("dataset") == "imagefolder"):
            for marker, what in (("P", "SimCLR 1000 ep."), ("D", "supervised 90 ep.")):
                pts = [(p, t) for p, t, lab in PAPER_FIG7 if lab == what]
                ax.scatter(
                    *zip(*pts, strict=True),
                    marker=marker,
                    facecolors="none",
                    edgecolors="black",
                    label=f"Chen et al. 2020, ImageNet, {what} (reference)",
                )
        if len(others) + 2 > len(shown):
            ax.plot(
                [], [], " ", label=f"({len(others) + 2 - len(shown)} other recipes in fits.json)"
            )
        ax.set(
            xscale="log",
            xlabel="encoder parameters",
            ylabel="top-1 accuracy (%)",
            title=f"Top-1 vs parameters (Fig. 7) - {_domain_title(domain)}",
        )
        ax.grid(alpha=0.3, which="both")
        legend_below(ax)
        paths += save(fig, out_dir, "fig7_params" + (f"_{n}" if n else ""))
    return paths


def _panels(
    df: pd.DataFrame, axes: tuple[str, ...] = ("epochs",)
) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Up to MAX_PANELS SimCLR architectures with the most (batch, epochs) cells, each
    with at least MIN_VALUES values on every one of `axes`."""
    sim = df[(df["method"] != REFERENCE) & (df["state"] == "finished")]
    if sim.empty:
        return []
    keys = ["dataset", "image_size", "stem", "depth", "width", "depth_multiplier"]
    ranked = sim.groupby(keys, dropna=False).agg(
        cells=("epochs", lambda s: len(set(zip(sim.loc[s.index, "batch_size"], s, strict=True)))),
        params=("encoder_params", "max"),
    )
    ranked = ranked.sort_values(["cells", "params"], ascending=False)
    out = []
    for key in ranked.index:
        arch = dict(zip(keys, key, strict=True))
        mask = np.logical_and.reduce([df[k] == v for k, v in arch.items()])
        if filled(df[mask], axes):
            out.append((arch, df[mask]))
    return out[:MAX_PANELS]


def _panel_grid(plt: Any, n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """n panels, two to a row: a row of four would be shrunk to illegible text on a page."""
    cols = min(2, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def _arch_title(arch: dict[str, Any]) -> str:
    label = arch_label(arch["depth"], arch["width"], arch["depth_multiplier"])
    return f"{label} ({arch['dataset']})"


def fig9(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """SimCLR top-1 vs epochs, one line per batch size (best over other recipe axes)."""
    panels = _panels(df)
    if not panels:
        return []
    plt = _plt()
    fig, axes = _panel_grid(plt, len(panels), 4.8, 3.8)
    for ax, (arch, runs) in zip(axes, panels, strict=True):
        sim = runs[runs["method"] != REFERENCE]
        cells = _means(sim, ["batch_size", "epochs", *_other_axes(sim)])
        cells = cells.sort_values("mean").groupby(["batch_size", "epochs"]).tail(1)
        for i, (batch, line) in enumerate(cells.sort_values("epochs").groupby("batch_size")):
            ax.errorbar(
                line["epochs"],
                line["mean"],
                yerr=line["std"].fillna(0),
                marker="o",
                capsize=2,
                color=plt.cm.viridis(i / max(1, cells["batch_size"].nunique() - 1)),
                label=f"batch {int(batch)}",
            )
        sup = _means(runs[runs["method"] == REFERENCE], ["epochs"])
        if len(sup):
            ax.axhline(
                sup["mean"].max(), color="tab:green", ls="--", lw=1, label="supervised (best)"
            )
        epochs = sorted(cells["epochs"].unique())
        ax.set(
            xscale="log",
            xlabel="training epochs",
            ylabel="top-1 accuracy (%)",
            title=_arch_title(arch),
        )
        ax.set_xticks(epochs, [str(int(e)) for e in epochs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    other = _other_axes(df[df["method"] != REFERENCE])
    scored = _scored(df[df["method"] != REFERENCE])
    fig.suptitle(
        "SimCLR linear evaluation vs epochs and batch size (Fig. 9)"
        + (f"; best over {', '.join(other)}" if other else "")
        + (f"\n{scored}" if scored else "")
    )
    return save(fig, out_dir, "fig9_epochs")


def _scored(runs: pd.DataFrame) -> str:
    """How the runs' top-1 was measured (`results.protocol_label`), when they agree."""
    labels = {protocol_label(r) for r in runs.to_dict("records")} - {""}
    return labels.pop() if len(labels) == 1 else ""


def _other_axes(sim: pd.DataFrame) -> list[str]:
    from scaling.report.results import recipe_columns

    return [c for c in recipe_columns(sim) if c not in ("batch_size", "epochs")]


def heatmap(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Mean SimCLR top-1 over batch size x epochs (best over other recipe axes)."""
    panels = _panels(df, ("batch_size", "epochs"))
    if not panels:
        return []
    plt = _plt()
    fig, axes = _panel_grid(plt, len(panels), 5.2, 3.8)
    for ax, (arch, runs) in zip(axes, panels, strict=True):
        sim = runs[runs["method"] != REFERENCE]
        cells = _means(sim, ["batch_size", "epochs", *_other_axes(sim)])
        grid = cells.pivot_table(index="batch_size", columns="epochs", values="mean", aggfunc="max")
        grid = grid.reindex(
            index=sorted(sim["batch_size"].unique()), columns=sorted(sim["epochs"].unique())
        )
        # a cell without a finished run: grey, not the page's white
        cmap = plt.get_cmap("viridis").with_extremes(bad="#e4e4e4")
        values = grid.to_numpy(float)
        im = ax.imshow(values, cmap=cmap, aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(values):
            colour = "#555" if math.isnan(v) else "white" if v < np.nanmean(values) else "black"
            ax.text(
                j,
                i,
                "n/a" if math.isnan(v) else f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
        ax.set_xticks(range(grid.shape[1]), [str(int(e)) for e in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(int(b)) for b in grid.index])
        ax.set(xlabel="epochs", ylabel="batch size", title=_arch_title(arch))
        fig.colorbar(im, ax=ax, label="top-1 (%)")
    other = _other_axes(df[df["method"] != REFERENCE])
    scored = _scored(df[df["method"] != REFERENCE])
    fig.suptitle(
        "SimCLR top-1 over batch size x epochs (n/a: no finished run)"
        + (f"; best over {', '.join(other)}" if other else "")
        + (f"\n{scored}" if scored else "")
    )
    return save(fig, out_dir, "heatmap_batch_epochs")


def gap_figure(df: pd.DataFrame, gap_df: pd.DataFrame, fits: FitSet, out_dir: Path) -> list[Path]:
    """Measured gaps (headline recipe, and the best recipe per architecture) and the
    fitted gap curve: solid over the data, dashed beyond it (an extrapolation)."""
    plt, paths = _plt(), []
    heads = [g for g in fits.gaps if g.headline and judged_sizes(gap_df, g.domain) >= MIN_VALUES]
    for n, g in enumerate(heads):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows = gap_df[np.logical_and.reduce([gap_df[k] == v for k, v in g.domain.items()])]
        label = recipe_label(g.recipe)
        mine = rows[(rows["kind"] == "recipe") & (rows["recipe"] == label)]
        best = rows[rows["kind"] == "best"]
        ax.errorbar(
            mine["encoder_params"],
            mine["gap"],
            yerr=mine["gap_se"].fillna(0),
            ls="none",
            capsize=2,
            label=f"measured, SimCLR {label}",
            **HEADLINE_STYLE,
        )
        ax.scatter(
            best["encoder_params"],
            best["gap"],
            facecolors="none",
            edgecolors="tab:blue",
            label="measured, best SimCLR recipe per architecture",
        )
        c = g.curve
        if c is not None:
            inside = c.x <= c.data_max
            ax.plot(c.x[inside], c.gap[inside], color="tab:red", label="fitted gap")
            ax.plot(
                c.x[~inside],
                c.gap[~inside],
                color="tab:red",
                ls="--",
                label="extrapolated (beyond the data)",
            )
            ax.fill_between(
                c.x, c.lo, c.hi, color="tab:red", alpha=0.12, lw=0, label=f"{c.level:.0%} band"
            )
            if c.withheld:  # a law failed its back-test: the curve stops at the data
                ax.plot([], [], " ", label="no extrapolation: a law failed its back-test")
            if math.isfinite(c.closes_at):
                where = "" if c.closes_at <= c.data_max else " (extrapolated)"
                ax.axvline(
                    c.closes_at,
                    color="gray",
                    ls=":",
                    label=f"gap < {c.threshold:g} point from {human(c.closes_at)}{where}",
                )
            ax.axvspan(
                c.data_min,
                c.data_max,
                color="gray",
                alpha=0.06,
                lw=0,
                label="range of models trained",
            )
        else:
            why = f"no fitted gap curve: {g.statement.removeprefix('No gap curve: ')}"
            ax.plot([], [], " ", label=textwrap.fill(why, 70))  # in the legend: never over a point
        threshold = c.threshold if c else 1.0
        ax.axhline(threshold, color="black", lw=0.8, ls="-.", label=f"{threshold:g}-point gap")
        ax.axhline(0, color="black", lw=0.5)
        ax.set(
            xscale="log",
            xlabel="encoder parameters",
            ylabel="supervised - SimCLR top-1 (points)",
            title=f"Gap to supervised - {_domain_title(g.domain)}",
        )
        ax.grid(alpha=0.3, which="both")
        legend_below(ax)
        paths += save(fig, out_dir, "gap_params" + (f"_{n}" if n else ""))
    return paths


def compute_figure(df: pd.DataFrame, fits: FitSet, out_dir: Path) -> list[Path]:
    """Top-1 vs training FLOPs: every (architecture, recipe) cell, and the frontier fits."""
    done = (
        df[(df["state"] == "finished") & df["train_flops"].notna()]
        if "train_flops" in df
        else df[:0]
    )
    if not fits.compute or done["train_flops"].nunique() < MIN_VALUES:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, f in enumerate(fits.compute):
        style = (
            SUP_STYLE if f.method == REFERENCE else {"color": OTHER_COLORS[i % 6], "marker": "o"}
        )
        runs = select(df, f.domain, f.method, {})
        runs = runs[runs["train_flops"].notna() & (runs["state"] == "finished")]
        cells = (
            runs.assign(pct=100 * runs["top1"])
            .groupby(_cell_keys(runs), dropna=False)
            .agg(flops=("train_flops", "median"), pct=("pct", "mean"))
        )
        ax.scatter(
            cells["flops"],
            cells["pct"],
            s=12,
            alpha=0.5,
            label=f"{f.method} (mean per setting)",
            **style,
        )
        if f.fit.ok:
            _curve(ax, f, style)
            ax.plot([], [], color=style["color"], label=f.fit.label)
    ax.set(
        xscale="log",
        xlabel="training compute (FLOPs)",
        ylabel="top-1 accuracy (%)",
        title="Top-1 vs training compute (curves: fits to the compute frontier)",
    )
    ax.grid(alpha=0.3, which="both")
    legend_below(ax)
    return save(fig, out_dir, "compute")


def _cell_keys(runs: pd.DataFrame) -> list[str]:
    """A setting: the architecture and every recipe axis (seeds pooled)."""
    from scaling.report.results import ARCH_COLUMNS, recipe_columns

    return [*ARCH_COLUMNS, *recipe_columns(runs)]


def make_all(
    df: pd.DataFrame,
    gap_df: pd.DataFrame,
    fits: FitSet,
    out_dir: Path,
    omitted: dict[str, str] | None = None,
) -> dict[str, list[Path]]:
    """Every figure the data fill; name -> [png, svg]. A figure left out gets one line in
    `omitted` (name -> why), for the report to show where it would be."""
    figs = {
        "fig7": fig7(df, fits, out_dir),
        "fig9": fig9(df, out_dir),
        "gap": gap_figure(df, gap_df, fits, out_dir),
        "heatmap": heatmap(df, out_dir),
        "compute": compute_figure(df, fits, out_dir),
    }
    if omitted is not None:
        omitted.update({k: why_omitted(k, df, gap_df) for k, v in figs.items() if not v})
    return {k: v for k, v in figs.items() if v}
