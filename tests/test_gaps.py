from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scaling.report import gaps, laws
from scaling.report.results import to_table

ARCH = {"dataset": "cifar10", "image_size": 32, "stem": "cifar", "depth_multiplier": 1.0}


def run(
    i: int,
    method: str,
    depth: int,
    width: float,
    top1: float | None,
    state: str = "finished",
    batch: int = 256,
    epochs: int = 100,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "run_id": f"r{i}",
        "sweep": "t",
        "method": method,
        **ARCH,
        "depth": depth,
        "width": width,
        "seed": seed,
        "batch_size": batch,
        "epochs": epochs,
        "encoder_params": int(1e6 * width * depth),
        "state": state,
        "top1": top1,
        **extra,
    }


def hand_table() -> Any:
    """R18 1x: supervised 0.90/0.92; SimCLR b256: 0.80/0.84, b512: 0.85 + one OOM.
    R18 2x: SimCLR only. R34 1x: supervised pending (2), SimCLR 0.7."""
    rows = [
        run(1, "supervised", 18, 1.0, 0.90, batch=1024, epochs=90, seed=0),
        run(2, "supervised", 18, 1.0, 0.92, batch=1024, epochs=90, seed=1),
        run(3, "simclr", 18, 1.0, 0.80, seed=0),
        run(4, "simclr", 18, 1.0, 0.84, seed=1),
        run(5, "simclr", 18, 1.0, 0.85, batch=512, seed=0),
        run(6, "simclr", 18, 1.0, None, "failed", batch=512, seed=1, error_kind="oom"),
        run(7, "simclr", 18, 2.0, 0.88),
        run(8, "supervised", 34, 1.0, None, "pending", batch=1024, epochs=90, seed=0),
        run(9, "supervised", 34, 1.0, None, "pending", batch=1024, epochs=90, seed=1),
        run(10, "simclr", 34, 1.0, 0.70),
    ]
    return to_table(rows)


def test_gap_table_against_hand_computed_values() -> None:
    g = gaps.gap_table(hand_table())
    r18 = g[(g["depth"] == 18) & (g["width"] == 1.0)].set_index("recipe")
    # batch and epochs always label a recipe (like the paper's), varying or not
    assert list(r18.index) == [
        "batch 256, 100 epochs",
        "batch 512, 100 epochs",
        "best: batch 512, 100 epochs",
    ]
    a = r18.loc["batch 256, 100 epochs"]
    assert a["sup_recipe"] == "batch 1024, 90 epochs"
    assert a["sup_top1"] == pytest.approx(91.0) and a["sup_std"] == pytest.approx(math.sqrt(2))
    assert a["top1"] == pytest.approx(82.0) and a["std"] == pytest.approx(math.sqrt(8))
    assert a["gap"] == pytest.approx(9.0)
    assert a["gap_se"] == pytest.approx(math.sqrt(2 / 2 + 8 / 2))  # sqrt(5)
    b = r18.loc["batch 512, 100 epochs"]
    assert b["top1"] == pytest.approx(85.0) and b["n"] == 1 and b["missing"] == 1
    assert b["gap"] == pytest.approx(6.0) and math.isnan(b["gap_se"]) and math.isnan(b["std"])
    assert "simclr: 1 failed (oom)" in b["note"]
    best = r18.loc["best: batch 512, 100 epochs"]
    assert best["kind"] == "best" and best["gap"] == pytest.approx(6.0)


def test_runs_missing_on_either_side_are_listed_not_dropped() -> None:
    g = gaps.gap_table(hand_table())
    only_simclr = g[(g["depth"] == 18) & (g["width"] == 2.0)]
    assert len(only_simclr) == 2 and only_simclr["gap"].isna().all()
    assert "no supervised runs for this architecture" in only_simclr["note"].iloc[0]
    pending = g[g["depth"] == 34]
    assert pending["sup_n"].eq(0).all() and pending["sup_missing"].eq(2).all()
    assert "no finished supervised run (2 pending)" in pending["note"].iloc[0]
    assert pending["top1"].iloc[0] == pytest.approx(70.0)
    missing = gaps.missing_runs(hand_table())
    assert list(missing["run_id"]) == ["r6", "r8", "r9"]  # failed first, then pending
    assert list(missing["state"]) == ["failed", "pending", "pending"]


def test_architecture_without_simclr_runs_gets_a_row() -> None:
    g = gaps.gap_table(
        to_table([run(1, "supervised", 50, 1.0, 0.9), run(2, "simclr", 18, 1.0, 0.8)])
    )
    r50 = g[g["depth"] == 50]
    assert len(r50) == 1 and r50["sup_top1"].iloc[0] == pytest.approx(90.0)
    assert "no SimCLR runs" in r50["note"].iloc[0]


def test_other_recipe_axes_are_kept_apart_not_pooled() -> None:
    rows = [
        run(1, "supervised", 18, 1.0, 0.9),
        run(2, "simclr", 18, 1.0, 0.80, temperature=0.1),
        run(3, "simclr", 18, 1.0, 0.70, temperature=0.5),
    ]
    g = gaps.gap_table(to_table(rows))
    recipes = g[g["kind"] == "recipe"].set_index("recipe")["top1"]
    assert recipes.to_dict() == {
        "batch 256, 100 epochs, temperature=0.1": pytest.approx(80.0),
        "batch 256, 100 epochs, temperature=0.5": pytest.approx(70.0),
    }
    assert g[g["kind"] == "best"]["recipe"].item() == "best: batch 256, 100 epochs, temperature=0.1"


def test_display_table_has_one_row_per_architecture() -> None:
    shown = gaps.display_table(gaps.gap_table(hand_table()))
    text = shown.to_string()
    assert len(shown) == 3  # R18 1x, R18 2x, R34 1x
    assert "9.00" not in text and "6.00" in text  # the best recipe (batch 512) is shown
    assert "91.00 ± 1.41" in text


def synthetic(widths: list[float], seeds: int = 2, seed: int = 0) -> Any:
    rng, rows, i = np.random.default_rng(seed), [], 0
    for w in widths:
        n = 1e6 * w * w
        for s in range(seeds):
            for method, e, a, alpha, epochs in (
                ("supervised", 0.05, 3.0, 0.25, 90),
                ("simclr", 0.06, 40.0, 0.35, 100),
                ("simclr", 0.055, 30.0, 0.35, 400),
            ):
                i += 1
                err = (e + a * n**-alpha) * np.exp(rng.normal(0, 0.01))
                rows.append(
                    run(
                        i,
                        method,
                        18,
                        w,
                        1 - err,
                        epochs=epochs,
                        seed=s,
                        train_flops=n * epochs * 1e6,
                    )
                    | {"encoder_params": int(n)}
                )
    return to_table(rows)


def test_fit_sweep_roles_and_gap_curves() -> None:
    fits = laws.fit_sweep(synthetic([0.25, 0.5, 1, 2, 4, 8]), n_boot=100, n_boot_other=50)
    roles = {(f.method, f.recipe.get("epochs")): f.role for f in fits.params}
    assert roles[("supervised", 90)] == "reference"
    assert roles[("simclr", 400)] == "headline" and roles[("simclr", 100)] == ""
    assert all(f.fit.ok for f in fits.params)
    head = [g for g in fits.gaps if g.headline]
    assert (
        len(head) == 1
        and head[0].curve is not None
        and head[0].recipe == {"batch_size": 256, "epochs": 400}
    )
    assert {len(f.fit.chosen.boot) for f in fits.params if f.role} == {100}
    assert {len(f.fit.chosen.boot) for f in fits.params if not f.role} == {50}
    assert fits.to_dict()["gaps"][0]["statement"]


def test_fit_sweep_with_three_sizes_says_too_few() -> None:
    fits = laws.fit_sweep(synthetic([0.5, 1, 2]), n_boot=20)
    assert all(f.fit.status == "too_few_points" for f in fits.params)
    assert fits.gaps and all(g.curve is None for g in fits.gaps)
    assert all("needs at least 4" in g.statement for g in fits.gaps)


def test_compute_frontier_drops_dominated_settings() -> None:
    # cells (one run each): flops 1..5 (x1e15), errors .5 .4 .45 .3 .2 -> the third is dominated
    rows = [
        run(i, "simclr", 18, w, 1 - e, train_flops=f * 1e15)
        for i, (w, e, f) in enumerate(
            zip([1, 2, 3, 4, 5], [0.5, 0.4, 0.45, 0.3, 0.2], [1, 2, 3, 4, 5], strict=True)
        )
    ]
    df = gaps.frame(to_table(rows))
    out = laws._compute_fit(dict(ARCH), "simclr", df, [], n_boot=20, level=0.9, seed=0)
    assert out.fit.n_runs == 4 and out.fit.x_min == 1e15 and out.fit.ok


def test_select_matches_null_recipe_values() -> None:
    df = pd.DataFrame({"method": ["a", "a"], "dataset": ["d", "d"], "t": [None, 0.5]})
    assert len(gaps.select(df, {"dataset": "d"}, "a", {"t": None})) == 1
