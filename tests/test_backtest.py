"""The back-test: a law fitted without its largest size must predict it. A plain power
law fitted to data drawn from a broken one fails it, and the report then withholds its
extrapolation, saying why; the form is chosen by held-out error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scaling.report import backtest as bt
from scaling.report import fit as F
from scaling.report import forms
from scaling.report import html as report
from scaling.report.results import to_table

SIZES = 5e3 * 4.0 ** np.arange(6)


def broken(x: np.ndarray, a1: float = 0.05, a2: float = 0.8, xb: float = 2.5e6) -> np.ndarray:
    """Nearly flat, then steep after a break between the two largest sizes, scaled to 25%
    error at the smallest size (Caballero et al. 2022's form, one break)."""
    s = forms.SHARPNESS
    shape = lambda v: v**-a1 * (1 + (v / xb) ** (1 / s)) ** (-(a2 - a1) * s)  # noqa: E731
    return 0.25 * shape(x) / shape(SIZES[0])


def saturating(x: np.ndarray) -> np.ndarray:
    return 0.03 + 0.25 * (x / SIZES[0]) ** -0.3


def runs(law, seeds: int = 3, seed: int = 0, points: float = 0.5):
    rng = np.random.default_rng(seed)
    x = np.repeat(SIZES, seeds)
    return x, law(x) + rng.normal(0, points / 100, len(x))


def test_holdout_grows_with_the_number_of_sizes() -> None:
    assert [bt.holdout(n) for n in range(3, 9)] == [0, 0, 1, 1, 2, 2]


def test_a_plain_law_fitted_to_a_broken_one_fails_its_back_test() -> None:
    x, y = runs(broken)
    fit = F.fit_power_law(x, y, n_boot=200, forms=(forms.SATURATING,), x_name="parameters")
    test = fit.backtest
    assert test is not None and not test.passed and not test.covered[-1]
    assert test.measured[0] < test.lo[0]  # the break makes the largest size far better
    assert "failed its back-test" in fit.withheld and "NOT covered" in fit.withheld
    assert "5.12M parameters" in fit.withheld and fit.reach == 1.0
    # every form the report tries fails: none can see a break it has no size past
    default = F.fit_power_law(x, y, n_boot=200)
    assert default.withheld and all(not t.passed for t in default.backtests.values())


def test_a_correct_law_passes_and_the_form_is_chosen_by_held_out_error() -> None:
    x, y = runs(saturating)
    fit = F.fit_power_law(x, y, n_boot=200)
    assert fit.backtest is not None and fit.backtest.passed and not fit.withheld
    assert set(fit.backtests) == {forms.FormName.SATURATING, forms.FormName.PURE}
    errors = {k: t.error for k, t in fit.backtests.items() if t.passed}
    assert fit.form == min(errors, key=errors.get)
    assert "held-out error" in fit.choice and "saturating" in fit.choice
    d = fit.to_dict()
    assert d["backtests"]["saturating"]["passed"] and d["extrapolation_withheld"] is None


def test_every_form_that_passed_is_pooled_into_the_band() -> None:
    """A floor or none, 1.5 points of noise: both forms pass, the curve is the one that
    erred least, the band pools both (each form's prediction at 10x lies inside it), and
    the choice says when they predict differently."""
    x, y = runs(lambda v: 0.25 * (v / SIZES[0]) ** -0.2 + 0.005, points=1.5, seed=4)
    fit = F.fit_power_law(x, y, n_boot=300)
    passed = {k for k, t in fit.backtests.items() if t.passed}
    assert {m.form.name for m in fit.members} == passed and len(passed) >= 2
    far = np.array([10 * SIZES[-1]])
    lo, hi = fit.band(far)
    np.testing.assert_allclose((lo, hi), F.percentile_band(fit.draws(far), fit.level))
    for m in fit.members:
        assert lo[0] <= m.predict(far)[0] <= hi[0]
    assert "pools the replicates of every form that passed" in fit.choice


def table(sim_law) -> object:
    rng, rows = np.random.default_rng(1), []
    for i, n in enumerate(SIZES):
        for s in range(3):
            for method, law in (("supervised", saturating), ("simclr", sim_law)):
                err = float(law(np.array([n]))[0] + 0.3 + rng.normal(0, 0.005)) * 0.5
                rows.append(
                    {
                        "run_id": f"r{len(rows):03d}",
                        "sweep": "t",
                        "method": method,
                        "dataset": "digits",
                        "image_size": 8,
                        "stem": "cifar",
                        "depth": 10,
                        "width": 2.0**i / 32,
                        "depth_multiplier": 1.0,
                        "seed": s,
                        "batch_size": 128,
                        "epochs": 20,
                        "encoder_params": int(n),
                        "state": "finished",
                        "top1": 1 - err,
                        "train_flops": float(n) * 1e5,
                    }
                )
    return to_table(rows, {"scaling.sweep": "t"})


@pytest.mark.slow
def test_the_report_withholds_the_extrapolation_of_a_law_that_failed(tmp_path: Path) -> None:
    page = report.build_report(None, table(broken), tmp_path, n_boot=200).read_text()
    fits = json.loads((tmp_path / "fits.json").read_text())
    sim = next(f for f in fits["vs_params"] if f["method"] == "simclr")
    assert sim["extrapolation_withheld"] and "failed its back-test" in sim["extrapolation_withheld"]
    (gap,) = fits["gaps"]
    assert gap["reach"] == 1.0 and gap["extrapolation_withheld"]
    assert "not extrapolated" in gap["statement"] and "Extrapolated" not in gap["statement"]
    assert "Back-tests" in page and "FAILED" in page and "NOT covered" in page
    assert "extrapolation is withheld" in page
