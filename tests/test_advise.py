"""The advisor: expected narrowing checked against a brute-force Monte Carlo, the
informative run preferred over a cheap useless one, a first design, a sweep to submit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from scaling.errors import SpecError
from scaling.plan.layout import train_size
from scaling.report import advise as A
from scaling.report import pool as P
from scaling.report import questions as Q
from scaling.report.fit import fit_power_law
from scaling.report.results import to_table
from scaling.sweep.cluster import load_profile
from scaling.sweep.spec import load_sweep

LAWS = {"supervised": (0.02, 2.0), "simclr": (0.03, 3.0)}  # err = E + A n^-0.35


def row(method: str, n: float, seed: int, err: float | None, **more: object) -> dict:
    return {
        "run_id": more.pop("run_id", f"{method}-{n:.0f}-{seed}"),
        "sweep": "quickstart",
        "method": method,
        "dataset": "digits",
        "image_size": 8,
        "stem": "cifar",
        "depth": 10,
        "width": more.pop("width", 0.0),
        "depth_multiplier": 1.0,
        "seed": seed,
        "batch_size": 128,
        "epochs": 20,
        "encoder_params": int(n),
        "state": "finished" if err is not None else "pending",
        "top1": None if err is None else 1 - err,
        "val_top1": None if err is None else 1 - err,
        **more,
    }


def law(method: str, n: float) -> float:
    e, a = LAWS[method]
    return e + a * n**-0.35


@pytest.fixture(scope="module")
def pool() -> P.Pool:
    return P.extended("sweeps/quickstart.yaml", [], load_profile(None))


def synthetic(pool: P.Pool, finished: bool = True) -> object:
    """The quickstart's grid finished (3 seeds, 1 point of noise), the extension pending."""
    rng = np.random.default_rng(0)
    rows = []
    for p in pool.plan.runs:
        done = finished and pool.sweep_id(p) in pool.in_grid
        s = p.spec
        err = law(s.method, p.encoder_params) + rng.normal(0, 0.01) if done else None
        recipe = {k: s.config[k] for k in ("batch_size", "epochs")}
        rows.append(row(s.method, p.encoder_params, s.seed, err, run_id=s.run_id, **recipe))
    return to_table(rows, {})


@pytest.mark.slow
def test_expected_width_matches_a_brute_force_monte_carlo() -> None:
    """answer(hypothetical=) is the advisor's expected width: compare it with the width
    the sweep really gives when outcomes drawn from the fit's predictive distribution
    (a replicate's law + noise) are added and everything refitted."""
    rng = np.random.default_rng(1)
    widths = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
    rows = [
        row(m, 4.9e6 * w * w, s, law(m, 4.9e6 * w * w) + rng.normal(0, 0.01))
        for w in widths
        for s in range(2)
        for m in LAWS
    ]
    df = pd.DataFrame(rows)
    q, n_new = Q.GapAt(params=4.9e6), 4.9e6 / 4  # 4x past the largest size
    now = np.mean([Q.answer(df, q, n_boot=300, seed=s).width for s in range(3)])
    hyp = [Q.Run(m, n_new) for m in LAWS]
    expected = np.mean(
        [Q.answer(df, q, hypothetical=hyp, n_boot=300, seed=s).width for s in range(3)]
    )
    laws = {
        m: fit_power_law(
            df[df.method == m].encoder_params, 1 - df[df.method == m].top1, n_boot=300, seed=7
        )
        for m in LAWS
    }
    brute = []
    for k in range(20):
        new = []
        for m, fit in laws.items():
            draws = fit.draws([n_new])[:, 0]
            err = draws[rng.integers(len(draws))] + rng.normal(0, fit.chosen.sigma)
            new.append(row(m, n_new, 9, err, run_id=f"new-{m}-{k}"))
        brute.append(Q.answer(pd.concat([df, pd.DataFrame(new)]), q, n_boot=300, seed=k).width)
    measured, se = float(np.mean(brute)), float(np.std(brute) / math.sqrt(len(brute)))
    assert expected < 0.95 * now and measured < now  # it narrows, and it says so
    assert abs(expected - measured) < 0.1 * measured + 2 * se, (now, expected, measured, se)


def test_the_informative_run_beats_a_cheap_useless_one(pool: P.Pool) -> None:
    """Cost proportional to parameters: a seed at the largest size (informative for the
    gap there) against a seed at the smallest, 245x cheaper and of no use to it."""
    table = synthetic(pool)
    q = A.make_question(None, params=None, threshold=1.0, flops=None, largest=P.largest(pool))
    assert isinstance(q, Q.GapAt) and q.params == P.largest(pool)
    new = [p for p in pool.plan.runs if p.spec.seed == 3 and p.spec.method == "simclr"]
    sizes = sorted({p.encoder_params for p in new})
    cands = [
        replace(p, gpu_hours=p.encoder_params / 1e6)
        for p in new
        if p.encoder_params in (sizes[0], sizes[-1])
    ]
    ranking = A.rank(table, cands, q, batch=1)
    assert ranking.now is not None and ranking.now.reliable
    (best,) = ranking.batch
    cheap = min(ranking.rows, key=lambda a: a.hours)
    assert best.planned.encoder_params == sizes[-1] and "narrower" in best.why
    assert best.useful and best.width < (1 - A.NOISE) * ranking.now.width
    assert cheap.hours < best.hours / 200 and not cheap.useful  # cheap, and no use


def test_with_nothing_finished_a_cheap_spread_first_design(pool: P.Pool) -> None:
    """Every size of the grid (5) but the largest (the costliest, left to the ranking) at
    the lowest seed, and the cheapest runs more that the law's interval needs (3
    residual degrees of freedom), per method."""
    ranking = A.advise(pool, synthetic(pool, finished=False), Q.GapAt(1e6), batch=100)
    assert ranking.now is None and "first design" in ranking.note
    chosen = [a.planned for a in ranking.batch]
    for method in LAWS:
        mine = [p for p in chosen if p.spec.method == method]
        grid = [p for p in pool.plan.runs if pool.sweep_id(p) in pool.in_grid]
        sizes = sorted({p.encoder_params for p in grid if p.spec.method == method})
        assert {p.encoder_params for p in mine if p.spec.seed == 0} == set(sizes[:-1])
        assert len(mine) == 6 and all(pool.sweep_id(p) in pool.in_grid for p in mine)
    two = A.advise(pool, synthetic(pool, finished=False), Q.GapAt(1e6), batch=2)
    for a in two.batch:  # one run of each method, its cheapest: both laws progress
        mine = [b.hours for b in ranking.batch if b.planned.spec.method == a.planned.spec.method]
        assert a.hours == min(mine)
    assert {a.planned.spec.method for a in two.batch} == set(LAWS)


def test_the_sweep_written_is_the_finished_runs_and_the_advised(pool: P.Pool, tmp_path) -> None:
    finished = [p for p in pool.plan.runs if pool.sweep_id(p) in pool.in_grid][:3]
    extra = [p for p in pool.plan.runs if pool.sweep_id(p) not in pool.in_grid][:2]
    out = P.write_sweep(
        "sweeps/quickstart.yaml", [], pool, finished + extra, tmp_path / "next.yaml"
    )
    again = load_sweep(out)
    assert again.name == pool.sweep.name  # same run folder and experiment
    assert {r.run_id for r in again.runs} == {pool.sweep_id(p) for p in finished + extra}


def test_bad_questions_are_one_line_errors() -> None:
    with pytest.raises(SpecError, match="--flops"):
        A.make_question(A.QuestionKind.FRONTIER, params=None, threshold=1, flops=None, largest=1)
    with pytest.raises(SpecError, match="--threshold"):
        A.make_question(A.QuestionKind.CLOSES, params=None, threshold=0, flops=None, largest=1)
    with pytest.raises(SpecError, match="only"):
        load_sweep("sweeps/quickstart.yaml", ["only=[nosuchrun]"])


@pytest.mark.parametrize("command", ["advise", "submit"])
def test_an_unknown_question_is_one_line_and_exit_2(command: str) -> None:
    from typer.testing import CliRunner

    from scaling.cli.app import app

    extra = (
        ["--adaptive", "--budget", "1", "--until", "interval < 1"] if command == "submit" else []
    )
    args = [command, "sweeps/quickstart.yaml", "--question", "why", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --question must be one of gap-at, closes, frontier (got 'why')"
    )


#: err = E + A n^-0.35 + B D^-0.45 (D: images seen), a joint law per method.
JOINT = {"supervised": (0.015, 2.0, 6.0), "simclr": (0.03, 3.0, 5.0)}
LENGTHS = ["methods.simclr.epochs=[5, 10, 20]", "methods.supervised.epochs=[15, 30, 60]"]


@pytest.fixture(scope="module")
def pool2d() -> P.Pool:
    """The quickstart over widths x training lengths (the paper's Fig. 7 in miniature)."""
    return P.extended("sweeps/quickstart.yaml", LENGTHS, load_profile(None))


def joint_table(pool: P.Pool, finished: bool = True) -> object:
    rng = np.random.default_rng(0)
    rows = []
    for p in pool.plan.runs:
        s, n = p.spec, p.encoder_params
        epochs = int(s.config["epochs"])
        d = train_size(s.dataset, s.method) * epochs
        e, a, b = JOINT[s.method]
        done = finished and pool.sweep_id(p) in pool.in_grid
        err = e + a * n**-0.35 + b * d**-0.45 + rng.normal(0, 0.005) if done else None
        flops = 6 * n * d * (2 if s.method == "simclr" else 1)
        more = {"epochs": epochs, "images_seen": d, "train_flops": flops}
        rows.append(row(s.method, n, s.seed, err, run_id=s.run_id, **more))
    return to_table(rows, {})


def test_the_frontier_question_ranks_runs_by_what_they_do_to_the_joint_laws(pool2d) -> None:
    """The gap at equal compute (the joint laws' frontiers): an interval from the grid,
    an expected width for each candidate (its runs added to the joint laws), only runs
    that narrow it bought; from nothing, a first design at two training lengths per
    method (a joint law needs lengths as well as sizes)."""
    table = joint_table(pool2d)
    grid = [p for p in pool2d.plan.runs if pool2d.sweep_id(p) in pool2d.in_grid]
    q = Q.ComputeOptimal(flops=max(6 * p.encoder_params * 1408 * 20 for p in grid) / 4)
    sizes = sorted({p.encoder_params for p in pool2d.plan.runs})
    more = [  # seed 3 at the smallest and the largest size, both methods, longest training
        p
        for p in pool2d.plan.runs
        if p.spec.seed == 3
        and p.encoder_params in (sizes[0], sizes[-1])
        and int(p.spec.config["epochs"]) in (20, 60)
    ]
    ranking = A.rank(table, more, q, batch=1, n_boot=200)
    assert ranking.now is not None and ranking.now.reliable and ranking.now.unit == "points"
    assert len(ranking.rows) == 4 and all(math.isfinite(a.width) for a in ranking.rows)
    assert all(abs(a.width / ranking.now.width - 1) < 0.2 for a in ranking.rows)
    assert all(a.useful for a in ranking.batch)
    first = A.advise(pool2d, joint_table(pool2d, finished=False), q, batch=100, n_boot=50)
    assert ranking.batch or not ranking.wanted
    assert first.now is None and "first design" in first.note
    for method, lengths in (("simclr", {5, 20}), ("supervised", {15, 60})):
        mine = [a.planned for a in first.batch if a.planned.spec.method == method]
        assert {int(p.spec.config["epochs"]) for p in mine} == lengths


def test_a_law_in_size_is_advised_runs_of_its_own_recipe(pool2d) -> None:
    """The gap at a size is read from one recipe per method (the longest training here):
    a first design trains that one, and runs of other lengths are said not to narrow."""
    q = Q.GapAt(1e6)
    first = A.advise(pool2d, joint_table(pool2d, finished=False), q, batch=100, n_boot=50)
    assert {int(a.planned.spec.config["epochs"]) for a in first.batch} == {20, 60}
    table = joint_table(pool2d)
    sizes = sorted({p.encoder_params for p in pool2d.plan.runs})
    at_top = [p for p in pool2d.plan.runs if p.spec.seed == 3 and p.encoder_params == sizes[-1]]
    ranking = A.rank(table, at_top, q, batch=4, n_boot=200)
    other = [a for a in ranking.rows if "another recipe" in a.why]
    assert len(other) == 8 and all(
        int(a.planned.spec.config["epochs"]) not in (20, 60) for a in other
    )
    assert not {a.planned.spec.run_id for a in ranking.batch} & {
        a.planned.spec.run_id for a in other
    }


def test_blocks_too_small_alone_are_advised_together(pool: P.Pool) -> None:
    """Cheap seeds at small sizes: none narrows the gap at 4x the largest size by the
    noise floor alone, a few together do, and that union is what is advised."""
    sizes = sorted({p.encoder_params for p in pool.plan.runs})
    cands = [
        p
        for p in pool.plan.runs
        if pool.sweep_id(p) not in pool.in_grid and p.encoder_params <= sizes[2]
    ]
    ranking = A.rank(synthetic(pool), cands, Q.GapAt(4 * sizes[-1]), batch=4, n_boot=200)
    best, *alone = ranking.rows
    assert not any(a.useful for a in alone) and "together" in best.why
    assert best.useful and best.width < (1 - A.NOISE) * ranking.now.width
    groups = {(p.spec.method, p.encoder_params) for p in best.block}
    assert len(groups) >= 2 and [a.planned for a in ranking.batch] == list(best.block[:4])


def test_a_failed_back_test_is_re_measured_not_given_up(pool: P.Pool) -> None:
    """SimCLR's largest size measured 5 points worse than its law: its back-test fails, so
    no gap is read past the data (whichever law failed), and the advice is more seeds of
    the size it held out, not "no candidate"."""
    df = synthetic(pool).to_pandas()
    worse = (df["method"] == "simclr") & (df["encoder_params"] == df["encoder_params"].max())
    df.loc[worse & (df["state"] == "finished"), "top1"] -= 0.05
    largest = P.largest(pool)
    inside = Q.answer(df, Q.GapAt(largest), n_boot=100)
    assert inside.reliable and not inside.failed  # at the data the law is not extrapolated
    past = Q.answer(df, Q.GapAt(2 * largest), n_boot=100)
    assert not past.reliable and past.failed == {"simclr": (largest,)}  # the size held out
    assert "past the largest model trained" in past.why and "back-test" in past.why
    ranking = A.advise(
        pool, to_table(df.to_dict("records"), {}), Q.GapAt(2 * largest), batch=4, n_boot=100
    )
    assert ranking.batch and ranking.wanted
    assert {(a.planned.spec.method, a.planned.encoder_params) for a in ranking.batch} == {
        ("simclr", int(largest))
    }
    assert all(a.planned.spec.seed >= 3 and "back-test" in a.why for a in ranking.batch)
