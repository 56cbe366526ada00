"""Scaling laws fitted across a sweep's sizes, and what they say about the gap.

`fit_sweep` gives every law the report shows:

- error vs encoder parameters per (method, recipe), each with its form chosen by
  back-test (scaling.report.fit), and the gap curve of each SimCLR recipe against the
  supervised reference (scaling.report.gapcurve);
- error vs training FLOPs per method, on the compute frontier;
- where a method's runs vary both size and training length, its joint law err = E +
  A N^-alpha + B D^-beta (scaling.report.joint), and from the reference's and each other
  method's joint laws the compute-optimal points and the gap at equal compute beside the
  gap at equal size (scaling.report.frontier).

The measured gaps they sit beside are `scaling.report.gaps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.report.fit import LawFit, fit_power_law
from scaling.report.frontier import Frontier, compare
from scaling.report.gapcurve import GapCurve, gap_curve
from scaling.report.gaps import DOMAIN_COLUMNS, REFERENCE, by_values, frame
from scaling.report.joint import JointLaw, fit_joint
from scaling.report.results import ARCH_COLUMNS, recipe_columns, recipe_label

#: the recipe axis a joint law turns into its second variable
LENGTH_AXIS = "epochs"


@dataclass(frozen=True)
class SweepFit:
    """A law with what it was fitted to: domain (dataset, image size, stem), method,
    recipe values, and the x column (encoder_params or train_flops)."""

    domain: dict[str, Any]
    method: str
    recipe: dict[str, Any]
    x: str
    fit: LawFit
    role: str = ""  # "reference" (supervised), "headline" (best-covered SimCLR recipe)


@dataclass(frozen=True)
class SweepGap:
    domain: dict[str, Any]
    recipe: dict[str, Any]
    curve: GapCurve | None
    statement: str
    headline: bool


@dataclass(frozen=True)
class SweepJoint:
    domain: dict[str, Any]
    method: str
    recipe: dict[str, Any]  # the other recipe axes, held fixed
    law: JointLaw


@dataclass(frozen=True)
class SweepFrontier:
    domain: dict[str, Any]
    method: str
    frontier: Frontier


@dataclass(frozen=True)
class FitSet:
    params: list[SweepFit] = field(default_factory=list)
    compute: list[SweepFit] = field(default_factory=list)
    gaps: list[SweepGap] = field(default_factory=list)
    joint: list[SweepJoint] = field(default_factory=list)
    frontiers: list[SweepFrontier] = field(default_factory=list)

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
            "model": "err = 1 - top1; forms: saturating E + A x^-alpha, pure A x^-alpha, broken "
            "power law, chosen by back-test; Huber loss on log residuals; parametric "
            "bootstrap (Gaussian noise, its sd drawn from its chi-square distribution)",
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
            "joint": [
                {"domain": j.domain, "recipe": j.recipe, **j.law.to_dict()} for j in self.joint
            ],
            "equal_compute": [
                {"domain": f.domain, "method": f.method, **f.frontier.to_dict()}
                for f in self.frontiers
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
    """Every law the report shows. The supervised reference and the headline SimCLR
    recipe of each domain (`top_group`: most model sizes, ties broken by the highest mean
    validation top-1, never the test set's unless no run has a validation score) get
    `n_boot` replicates, their forms chosen by back-test; the other recipes `n_boot_other`
    in the default form, untested (they are drawn, not quoted)."""
    df = frame(table)
    df = df[(df["state"] == "finished") & df["top1"].notna()]
    out = FitSet()
    recipes = {m: recipe_columns(df[df["method"] == m]) for m in df["method"].unique()}
    for domain, runs in by_values(df, list(DOMAIN_COLUMNS)):
        fits: list[SweepFit] = []
        joints: dict[str, SweepJoint] = {}
        for method in sorted(runs["method"].unique()):
            mine = runs[runs["method"] == method]
            groups = list(by_values(mine, recipes[method]))
            top = top_group(groups)
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
                    backtest=bool(role),
                )
                fits.append(SweepFit(domain, method, values, "encoder_params", fit, role))
            out.compute.append(
                _compute_fit(domain, method, mine, recipes[method], n_boot, level, seed)
            )
            joint = _joint(domain, method, mine, recipes[method], n_boot, level, seed)
            if joint is not None:
                joints[method] = joint
                out.joint.append(joint)
        out.params.extend(fits)
        out.gaps.extend(_gaps(domain, fits, threshold))
        out.frontiers.extend(_frontiers(domain, runs, joints))
    return out


def top_group(groups: list[tuple[dict[str, Any], pd.DataFrame]]) -> int:
    """The recipe a method is judged by (the reference for supervised, the headline for
    SimCLR): the most model sizes, then the best `selection_column`."""
    frames = [g for _, g in groups]
    column = selection_column(frames)
    return max(
        range(len(frames)),
        key=lambda i: (frames[i]["encoder_params"].nunique(), frames[i][column].mean()),
    )


def selection_column(frames: list[pd.DataFrame]) -> str:
    """What breaks ties among recipes: val_top1 when every recipe has one, else (runs
    without validation scores) top1 - never the test set's when validation exists."""
    by_val = all("val_top1" in g and g["val_top1"].notna().any() for g in frames)
    return "val_top1" if by_val else "top1"


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


def _joint(
    domain: dict[str, Any],
    method: str,
    runs: pd.DataFrame,
    cols: list[str],
    n_boot: int,
    level: float,
    seed: int,
) -> SweepJoint | None:
    group = joint_group(runs, cols)
    if group is None:
        return None
    values, sub = group
    label = f"{method} ({recipe_label(values)})" if values else method
    law = fit_joint(sub, method=method, label=label, n_boot=n_boot, level=level, seed=seed)
    return SweepJoint(domain, method, values, law)


def joint_group(runs: pd.DataFrame, cols: list[str]) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """One method's runs a joint law is fitted to: the group of the other recipe axes
    with the most (size, length) cells, then the best `selection_column`; None when its
    training length does not vary."""
    if LENGTH_AXIS not in cols or "images_seen" not in runs or runs[LENGTH_AXIS].nunique() < 2:
        return None
    groups = list(by_values(runs, [c for c in cols if c != LENGTH_AXIS]))
    column = selection_column([g for _, g in groups])
    return max(
        groups,
        key=lambda g: (
            len(g[1][["encoder_params", "images_seen"]].drop_duplicates()),
            g[1][column].mean(),
        ),
    )


def _frontiers(
    domain: dict[str, Any], runs: pd.DataFrame, joints: dict[str, SweepJoint]
) -> list[SweepFrontier]:
    ref = joints.get(REFERENCE)
    if ref is None:
        return []
    flops = runs.groupby("method")["train_flops"].max().to_dict()
    out = []
    for method, j in joints.items():
        if method == REFERENCE or method not in flops:
            continue
        f = compare(ref.law, j.law, flops, label=j.law.label)
        if f is not None:
            out.append(SweepFrontier(domain, method, f))
    return out


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
