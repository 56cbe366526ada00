"""Scaling laws fitted across a sweep's sizes, and the gap curves between them.

`fit_sweep`: error vs encoder parameters per (method, recipe), error vs training compute
per method (on the compute frontier), and the gap curve of each SimCLR recipe against the
supervised reference, with bootstrap intervals (scaling.report.fit). The measured gaps
they sit beside are `scaling.report.gaps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.report.fit import PowerLawFit, fit_power_law
from scaling.report.gapcurve import GapCurve, gap_curve
from scaling.report.gaps import DOMAIN_COLUMNS, REFERENCE, by_values, frame
from scaling.report.results import ARCH_COLUMNS, recipe_columns, recipe_label


@dataclass(frozen=True)
class SweepFit:
    """A fit with what it was fitted to: domain (dataset, image size, stem), method,
    recipe values, and the x column (encoder_params or train_flops)."""

    domain: dict[str, Any]
    method: str
    recipe: dict[str, Any]
    x: str
    fit: PowerLawFit
    role: str = ""  # "reference" (supervised), "headline" (best-covered SimCLR recipe)


@dataclass(frozen=True)
class SweepGap:
    domain: dict[str, Any]
    recipe: dict[str, Any]
    curve: GapCurve | None
    statement: str
    headline: bool


@dataclass(frozen=True)
class FitSet:
    params: list[SweepFit] = field(default_factory=list)
    compute: list[SweepFit] = field(default_factory=list)
    gaps: list[SweepGap] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What fits.json holds (JSON types only)."""

        def fit_dict(f: SweepFit) -> dict[str, Any]:
            return {
                "domain": f.domain,
                "method": f.method,
                "recipe": f.recipe,
                "role": f.role,
                **f.fit.to_dict(),
            }

        return {
            "model": "err = E + A * x^(-alpha), err = 1 - top1; Huber loss on log residuals; "
            "percentile bootstrap over runs",
            "vs_params": [fit_dict(f) for f in self.params],
            "vs_compute": [fit_dict(f) for f in self.compute],
            "gaps": [
                {
                    "domain": g.domain,
                    "recipe": g.recipe,
                    "headline": g.headline,
                    "statement": g.statement,
                    **(g.curve.to_dict() if g.curve else {}),
                }
                for g in self.gaps
            ],
        }


def fit_sweep(
    table: Any,
    *,
    n_boot: int = 1000,
    n_boot_other: int = 200,
    level: float = 0.9,
    seed: int = 0,
    threshold: float = 1.0,
) -> FitSet:
    """Every fit the report shows. The supervised reference and the headline SimCLR
    recipe of each domain (most model sizes, ties broken by the highest mean validation
    top-1, never the test set's unless no run has a validation score) get `n_boot`
    replicates; the other recipes `n_boot_other` (they are drawn, not quoted)."""
    df = frame(table)
    df = df[(df["state"] == "finished") & df["top1"].notna()]
    out = FitSet()
    recipes = {m: recipe_columns(df[df["method"] == m]) for m in df["method"].unique()}
    for domain, runs in by_values(df, list(DOMAIN_COLUMNS)):
        fits: list[SweepFit] = []
        for method in sorted(runs["method"].unique()):
            groups = list(by_values(runs[runs["method"] == method], recipes[method]))
            score = _selection_score(g for _, g in groups)
            top = max(
                range(len(groups)),
                key=lambda i: (groups[i][1]["encoder_params"].nunique(), score(groups[i][1])),
            )
            for i, (values, sub) in enumerate(groups):
                role = "" if i != top else ("reference" if method == REFERENCE else "headline")
                label = f"{method} ({recipe_label(values)})" if values else method
                fit = fit_power_law(
                    sub["encoder_params"],
                    1 - sub["top1"],
                    label=label,
                    x_name="encoder parameters",
                    level=level,
                    seed=seed,
                    n_boot=n_boot if role else n_boot_other,
                )
                fits.append(SweepFit(domain, method, values, "encoder_params", fit, role))
            out.compute.append(
                _compute_fit(
                    domain,
                    method,
                    runs[runs["method"] == method],
                    recipes[method],
                    n_boot,
                    level,
                    seed,
                )
            )
        out.params.extend(fits)
        out.gaps.extend(_gaps(domain, fits, threshold))
    return out


def _selection_score(groups: Any) -> Any:
    """What ranks a method's recipes: mean val_top1 when every recipe has one, else (runs
    without validation scores) mean top-1."""
    groups = list(groups)
    by_val = all("val_top1" in g and g["val_top1"].notna().any() for g in groups)
    column = "val_top1" if by_val else "top1"
    return lambda g: g[column].mean()


def _gaps(domain: dict[str, Any], fits: list[SweepFit], threshold: float) -> list[SweepGap]:
    ref = next((f for f in fits if f.role == "reference"), None)
    gaps = []
    for f in fits:
        if f.method == REFERENCE:
            continue
        curve = gap_curve(ref.fit, f.fit, threshold=threshold, label=f.fit.label) if ref else None
        if curve is not None:
            statement = curve.statement
        elif ref is None:
            statement = "No gap curve: the sweep has no finished supervised runs in this domain."
        else:
            # Name each failed fit; the same message for both is said once.
            failed = [(x.method, x.fit.message) for x in (ref, f) if not x.fit.ok]
            if len(failed) == 2 and failed[0][1] == failed[1][1]:
                why = f"{failed[0][1]} (both fits)"
            else:
                why = "; ".join(f"{method}: {message}" for method, message in failed)
            statement = f"No gap curve: {why}."
        gaps.append(SweepGap(domain, f.recipe, curve, statement, f.role == "headline"))
    return gaps


def _compute_fit(
    domain: dict[str, Any],
    method: str,
    runs: pd.DataFrame,
    cols: list[str],
    n_boot: int,
    level: float,
    seed: int,
) -> SweepFit:
    """Error vs training FLOPs on the compute frontier: the (architecture, recipe) cells
    whose mean error beats every cell that used less compute, the error on validation
    (the test set's only when runs have no validation score); the fit is of their test
    error. The frontier is chosen once on all runs; its selection is not redone per
    bootstrap replicate."""
    runs = runs[runs["train_flops"].notna() & (runs["train_flops"] > 0)]
    keys = [c for c in (*ARCH_COLUMNS, *cols) if c in runs.columns]
    by_val = "val_top1" in runs and bool(runs["val_top1"].notna().all()) and len(runs) > 0
    cells = runs.groupby(keys, dropna=False).agg(
        flops=("train_flops", "median"), err=("val_top1" if by_val else "top1", "mean")
    )
    cells["err"] = 1 - cells["err"]
    cells = cells.sort_values("flops")
    frontier = cells[cells["err"] < cells["err"].cummin().shift(fill_value=np.inf)]
    keep = runs.set_index(keys).index.isin(frontier.index)
    sub = runs[keep]
    fit = fit_power_law(
        sub["train_flops"],
        1 - sub["top1"],
        label=f"{method} (compute frontier)",
        x_name="training FLOPs",
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
    return SweepFit(domain, method, {}, "train_flops", fit, "frontier")
