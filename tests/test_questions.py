"""The questions API an advisor builds on: fit these runs, answer one question with a
calibrated interval, and say how much hypothetical added runs would narrow it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.report import questions as Q
from scaling.report.joint import fit_joint
from tests.test_report_laws import IMAGES_PER_EPOCH, widths_by_epochs


@pytest.fixture(scope="module")
def table():
    return widths_by_epochs()


def truth_gap(n: float, d_sup: float, d_sim: float) -> float:
    """The laws widths_by_epochs draws from (supervised, SimCLR), in points."""
    sup = 0.015 + 2.0 * n**-0.35 + 6.0 * d_sup**-0.45
    sim = 0.03 + 3.0 * n**-0.35 + 5.0 * d_sim**-0.45
    return 100 * (sim - sup)


def test_gap_at_a_size_inside_the_data_covers_the_truth(table) -> None:
    n = 3e5
    est = Q.answer(table, Q.GapAt(params=n), n_boot=300)
    assert est.reliable and est.unit == "points" and est.fitted and est.lo < est.value < est.hi
    truth = truth_gap(n, IMAGES_PER_EPOCH * 60, IMAGES_PER_EPOCH * 20)
    assert est.lo <= truth <= est.hi


def test_beyond_the_checked_reach_there_is_no_interval(table) -> None:
    est = Q.answer(table, Q.GapAt(params=1e9), n_boot=100)
    assert not est.reliable and math.isnan(est.lo) and "beyond" in est.why


def test_hypothetical_runs_narrow_the_interval_and_keep_the_value(table) -> None:
    q = Q.GapAt(params=4e6)  # past the largest width (1.2M): an extrapolation
    now = Q.answer(table, q, n_boot=300)
    more = [Q.Run("simclr", 4.9e6, seeds=3), Q.Run("supervised", 4.9e6, seeds=3)]
    then = Q.answer(table, q, hypothetical=more, n_boot=300)
    # Coupled replicates (common random numbers): 0.82-0.85 of the width over seeds 0-3.
    assert then.value == now.value and then.width < 0.9 * now.width


def test_compute_optimal_size_is_the_joint_laws(table) -> None:
    df = table.to_pandas()
    est = Q.answer(table, Q.ComputeOptimal(flops=5e11, method="simclr"), n_boot=200)
    sim = df[df["method"] == "simclr"]
    law = fit_joint(sim, method="simclr", label="simclr", n_boot=200)
    assert est.value == pytest.approx(law.optimum(5e11)["N"], rel=1e-6)
    assert est.unit == "parameters" and est.lo < est.value < est.hi
    gap = Q.answer(table, Q.ComputeOptimal(flops=5e11), n_boot=200)
    assert gap.unit == "points" and gap.lo <= gap.value <= gap.hi


def test_where_the_gap_closes_says_when_it_does_not_within_reach(table) -> None:
    est = Q.answer(table, Q.GapCloses(threshold=1.0), n_boot=100)
    assert est.unit == "parameters"
    if math.isinf(est.value):
        assert not est.reliable and est.why


def test_a_table_without_both_methods_is_refused(table) -> None:
    df = table.to_pandas()
    with pytest.raises(ValueError, match="needs finished supervised"):
        Q.answer(df[df["method"] == "simclr"], Q.GapAt(1e5))
    assert np.isfinite(Q.answer(df, Q.GapAt(1e5), n_boot=50).value)


def test_a_hypothetical_run_of_another_recipe_adds_nothing_to_the_law(table) -> None:
    """The 1-D laws are fitted to one recipe per method (the most sizes, then the best
    validation): a run of another training length is not one of its points."""
    q = Q.GapAt(params=4e6)
    now = Q.answer(table, q, n_boot=200)
    df = table.to_pandas()
    widths = {}
    for epochs in sorted(df.loc[df["method"] == "simclr", "epochs"].unique()):
        run = Q.Run("simclr", 4.9e6, seeds=3, recipe=(("epochs", int(epochs)),))
        widths[int(epochs)] = Q.answer(table, q, hypothetical=[run], n_boot=200).width
    narrower = [e for e, w in widths.items() if w < now.width]
    assert len(widths) > 1 and len(narrower) == 1, widths
    assert all(w == now.width for e, w in widths.items() if e not in narrower)
