"""Benchmark: does the adaptive loop reach the full grid's interval with at most half of
the grid's device-hours? (scaling.report.advise, the loop of scaling.report.adaptive)

Simulated, no training: a digits grid (depth 10, `--widths`, 3 seeds, both methods; with
`--grids "widths x epochs"` also three training lengths per method, the paper's Fig. 7
in miniature) is planned by the real planner, and each run's cost is set proportional to
its training FLOPs (flops per image x views x images seen). Outcomes are drawn, once per
run, from a known law per method (err = E + A n^-alpha + noise, plus PER_HALVING per
halving of the training length below the longest). The full grid's answer (every run)
gives the width to reach; the adaptive loop starts from nothing (first design) and buys
`--batch` advised runs a step, within the grid's device-hours, until its interval is as
narrow. Printed per scenario (grid x law x question): the grid's width and hours, the
hours the loop spent to reach that width (or where it stopped), their ratio, and the
`bound`: the fraction of the grid's hours with which the best allocation of the pool's
runs, chosen knowing the true laws, matches the grid's variance of the answer
(linearised, c-optimal design). No loop can be expected to beat it; a single draw can,
since the loop stops the first time its interval is as narrow as the grid's one draw.

With `--coverage N`, each scenario is run on N data draws (seeds `--data-seed` onwards)
and the table gives, per scenario, how often the loop's final interval and the grid's
contain the true gap (the law's, at the longest training), with the ratios' median and
how many draws met the goal: a loop that stops the first time its interval is narrow
enough could stop on an interval that is narrow by chance, and its saving would then be
one the data do not support.

    .venv/bin/python benchmarks/bench_adaptive.py [--batch 2] [--n-boot 400] [--out table.md]
        [--laws 0 1 2] [--questions 0 1] [--grids widths "widths x epochs"] [--data-seed 0]
        [--coverage 20]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from scaling.plan.layout import train_size
from scaling.report import advise as A
from scaling.report import pool as P
from scaling.report.questions import Estimate, GapAt, Question, answer
from scaling.report.results import to_table
from scaling.sweep.cluster import load_profile
from scaling.sweep.methods import get_method

SWEEP = Path(__file__).parent.parent / "sweeps" / "quickstart.yaml"
#: (name, {method: (E, A, alpha)}, noise in error): a gap that stays, one that closes,
#: laws without a floor.
LAWS = (
    ("gap stays", {"supervised": (0.02, 2.0, 0.35), "simclr": (0.03, 3.0, 0.35)}, 0.01),
    ("gap closes", {"supervised": (0.02, 2.0, 0.35), "simclr": (0.02, 5.0, 0.42)}, 0.005),
    ("no floor", {"supervised": (1e-6, 1.5, 0.3), "simclr": (1e-6, 2.5, 0.3)}, 0.01),
)


#: The training lengths of the widths x epochs grid (the paper's Fig. 7 in miniature).
EPOCHS = {"simclr": [5, 10, 20], "supervised": [15, 30, 60]}
#: Error added per halving of the training length (the laws hold at the longest).
PER_HALVING = 0.02
#: The questions: the gap at this many times the grid's largest size.
QUESTIONS = (("gap at the largest size", 1), ("gap at 4x the largest", 4))


def pool_with_flop_costs(widths: list[float], lengths: bool = False) -> P.Pool:
    sets = [f"model.width={widths}", "seeds=[0, 1, 2]"]
    if lengths:
        sets += [f"methods.{m}.epochs={e}" for m, e in EPOCHS.items()]
    pool = P.extended(SWEEP, sets, load_profile(None))
    runs = []
    for p in pool.plan.runs:
        s = p.spec
        images = train_size(s.dataset, s.method) * int(s.config["epochs"])
        flops = 3 * p.flops_per_image * get_method(s.method).views * images
        runs.append(replace(p, gpu_hours=flops / 1e12))
    return replace(pool, plan=replace(pool.plan, runs=tuple(runs)))


def outcomes(pool: P.Pool, law: dict, noise: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    longest = _longest(pool)
    out = {}
    for p in pool.plan.runs:
        e, a, alpha = law[p.spec.method]
        short = math.log2(longest[p.spec.method] / int(p.spec.config["epochs"]))
        err = e + a * p.encoder_params**-alpha + PER_HALVING * short
        out[p.spec.run_id] = err + rng.normal(0, noise)
    return out


def _longest(pool: P.Pool) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pool.plan.runs:
        out[p.spec.method] = max(out.get(p.spec.method, 0), int(p.spec.config["epochs"]))
    return out


def bound(pool: P.Pool, law: dict, noise: float, q: GapAt) -> float:
    """The fewest device-hours, as a fraction of the grid's, with which any allocation of
    the pool's runs (at most the pool's seeds per size, fractions of a run allowed) gives
    the gap at q.params as small a variance as the grid's, knowing the true laws and
    noise (linearised, c-optimal design): a bound no loop can beat, whatever it buys."""
    from scipy.optimize import minimize

    per, grid_var = [], 0.0
    longest = _longest(pool)
    grid_hours = sum(p.gpu_hours for p in pool.plan.runs if pool.sweep_id(p) in pool.in_grid)
    for method, (_e, a, alpha) in law.items():
        runs = [
            p
            for p in pool.plan.runs
            if p.spec.method == method and int(p.spec.config["epochs"]) == longest[method]
        ]
        sizes = sorted({p.encoder_params for p in runs})
        n = np.array(sizes, dtype=float)
        hours = np.array([min(p.gpu_hours for p in runs if p.encoder_params == s) for s in sizes])
        cap = np.array([sum(p.encoder_params == s for p in runs) for s in sizes], dtype=float)
        in_grid = np.array(
            [
                sum(p.encoder_params == s and pool.sweep_id(p) in pool.in_grid for p in runs)
                for s in sizes
            ],
            dtype=float,
        )

        def grad(x: np.ndarray, a: float = a, alpha: float = alpha) -> np.ndarray:
            return np.stack([np.ones_like(x), x**-alpha, -a * np.log(x) * x**-alpha], -1)

        g, c = grad(n), grad(np.array([q.params]))[0]

        def var(k: np.ndarray, g: np.ndarray = g, c: np.ndarray = c) -> float:
            m = (g * k[:, None]).T @ g / noise**2
            return float(c @ np.linalg.solve(m + 1e-9 * np.eye(3), c))

        per.append((var, hours, cap))
        grid_var += var(in_grid)
    cost = np.concatenate([h for _, h, _ in per])
    caps = np.concatenate([k for _, _, k in per])
    cuts = np.cumsum([0] + [len(h) for _, h, _ in per])

    def best(frac: float) -> float:
        def total(k: np.ndarray) -> float:
            return (
                sum(v(k[i:j]) for (v, _, _), i, j in zip(per, cuts, cuts[1:], strict=False))
                / grid_var
            )

        spend = frac * grid_hours
        rng = np.random.default_rng(0)
        out = np.inf
        for _ in range(6):
            k0 = rng.uniform(0.2, 1.0, len(cost)) * caps
            k0 *= min(1.0, spend / float(cost @ k0))
            r = minimize(
                total,
                k0,
                bounds=list(zip(np.zeros_like(caps), caps, strict=True)),
                constraints=[{"type": "ineq", "fun": lambda k: spend - cost @ k}],
                method="SLSQP",
                options={"maxiter": 500},
            )
            out = min(out, float(r.fun))
        return out

    lo, hi = 0.0, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if best(mid) <= 1.0 else (mid, hi)
    return hi


def truth(law: dict, q: GapAt) -> float:
    """The true gap (points, supervised minus SimCLR top-1) at q.params, longest training."""
    err = {m: e + a * q.params**-alpha for m, (e, a, alpha) in law.items()}
    return 100 * (err["simclr"] - err["supervised"])


def table_of(pool: P.Pool, errs: dict[str, float], done: set[str]) -> object:
    rows = []
    for p in pool.plan.runs:
        s, fin = p.spec, p.spec.run_id in done
        err = errs[s.run_id] if fin else None
        rows.append(
            {
                "run_id": s.run_id,
                "sweep": "bench",
                "method": s.method,
                "dataset": "digits",
                "image_size": 8,
                "stem": "cifar",
                "depth": 10,
                "width": s.model["width"],
                "depth_multiplier": 1.0,
                "seed": s.seed,
                "batch_size": s.config["batch_size"],
                "epochs": s.config["epochs"],
                "encoder_params": p.encoder_params,
                "state": "finished" if fin else "pending",
                "top1": None if err is None else 1 - err,
                "val_top1": None if err is None else 1 - err,
            }
        )
    return to_table(rows, {})


def scenario(pool: P.Pool, q: Question, errs: dict, batch: int, n_boot: int) -> dict:
    grid = {p.spec.run_id for p in pool.plan.runs if pool.sweep_id(p) in pool.in_grid}
    hours = {p.spec.run_id: p.gpu_hours for p in pool.plan.runs}
    grid_hours = sum(hours[r] for r in grid)
    full = answer(table_of(pool, errs, grid), q, n_boot=n_boot)
    target = full.width if full.reliable else math.nan
    done: set[str] = set()
    spent, steps, width, stop, now = 0.0, 0, math.inf, "budget", None
    while True:
        ranking = A.advise(
            pool,
            table_of(pool, errs, done),
            q,
            batch=batch,
            budget=grid_hours - spent,
            bought=sorted(done),
            n_boot=n_boot,
        )
        now = ranking.now
        width = now.width if now is not None and now.reliable else math.inf
        if width <= target:
            stop = "answered"
            break
        if not ranking.batch:
            stop = "budget" if ranking.wanted else "no candidate"
            break
        for a in ranking.batch:
            done.add(a.planned.spec.run_id)
            spent += a.hours
        steps += 1
    return {
        "grid": full,
        "final": now,
        "grid_width": target,
        "grid_hours": grid_hours,
        "grid_runs": len(grid),
        "spent": spent,
        "runs": len(done),
        "steps": steps,
        "width": width,
        "stop": stop,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--widths", type=float, nargs="+", default=[1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1]
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--laws", type=int, nargs="+", default=list(range(len(LAWS))))
    ap.add_argument("--questions", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--grids", nargs="+", default=["widths"], choices=["widths", "widths x epochs"])
    ap.add_argument("--coverage", type=int, default=0, help="data draws per scenario")
    args = ap.parse_args()
    lines = coverage(args) if args.coverage else single(args)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def single(args: argparse.Namespace) -> list[str]:
    """Each scenario on one data draw, with the bound."""
    lines = header(
        args,
        f"data seed {args.data_seed}",
        "grid: width, device-h (runs) | adaptive: device-h spent (runs, steps) | ratio | bound "
        "| stop: final width",
    )
    for grid, pool, (name, law, noise), (qname, q) in scenarios(args):
        errs = outcomes(pool, law, noise, args.data_seed)
        t0 = time.time()
        r = scenario(pool, q, errs, args.batch, args.n_boot)
        ratio = r["spent"] / r["grid_hours"]
        line = (
            f"| {grid} | {name} ({100 * noise:g} pt) | {qname} | {r['grid_width']:.3g}, "
            f"{r['grid_hours']:.3g} ({r['grid_runs']}) | {r['spent']:.3g} ({r['runs']}, "
            f"{r['steps']}) | {ratio:.2f} | {bound(pool, law, noise, q):.2f} | "
            f"{r['stop']}: width {r['width']:.3g} ({time.time() - t0:.0f} s) |"
        )
        lines.append(line)
        print(line, flush=True)
    return lines


def header(args: argparse.Namespace, seeds: str, columns: str) -> list[str]:
    """The machine and settings line and a table's head (grid, law, question, `columns`),
    printed and returned."""
    n = columns.count("|") + 4
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"widths {args.widths}, 3 seeds, batch {args.batch}, {args.n_boot} replicates, {seeds}",
        "",
        f"| grid | law | question | {columns} |",
        "|" + " --- |" * n,
    ]
    print("\n".join(lines), flush=True)
    return lines


def scenarios(args: argparse.Namespace) -> Iterator[tuple[str, P.Pool, tuple, tuple[str, GapAt]]]:
    """(grid, its pool, law, (question's name, question)) for every scenario asked."""
    for grid in args.grids:
        pool = pool_with_flop_costs(args.widths, lengths=grid != "widths")
        largest = P.largest(pool)
        for law in (LAWS[i] for i in args.laws):
            for name, times in (QUESTIONS[i] for i in args.questions):
                yield grid, pool, law, (name, GapAt(times * largest))


def coverage(args: argparse.Namespace) -> list[str]:
    """Per scenario, over `args.coverage` data draws: how often the loop's final interval
    and the grid's contain the truth, the median ratio of hours, the draws that met the
    goal (answered with at most half the grid's hours)."""
    last = args.data_seed + args.coverage - 1
    lines = header(
        args,
        f"data seeds {args.data_seed}-{last}",
        "draws | grid covers | loop covers | loop covers, answered | median ratio | goal met",
    )
    for grid, pool, (name, law, noise), (qname, q) in scenarios(args):
        true, rows = truth(law, q), []
        for seed in range(args.data_seed, last + 1):
            r = scenario(pool, q, outcomes(pool, law, noise, seed), args.batch, args.n_boot)
            rows.append(r)
            print(
                f"  seed {seed}: {r['stop']} at {r['spent'] / r['grid_hours']:.2f}, "
                f"{_interval(r['final'])} vs grid {_interval(r['grid'])}, truth {true:.2f}",
                flush=True,
            )
        answered = [r for r in rows if r["stop"] == "answered"]
        ratios = sorted(r["spent"] / r["grid_hours"] for r in rows)
        line = (
            f"| {grid} | {name} | {qname} | {len(rows)} | "
            f"{_covers(rows, 'grid', true)} | {_covers(rows, 'final', true)} | "
            f"{_covers(answered, 'final', true)} | {ratios[len(ratios) // 2]:.2f} | "
            f"{sum(r['stop'] == 'answered' and r['spent'] <= r['grid_hours'] / 2 for r in rows)}"
            f"/{len(rows)} |"
        )
        lines.append(line)
        print(line, flush=True)
    return lines


def _interval(e: Estimate | None) -> str:
    return f"{e.lo:.2f} to {e.hi:.2f}" if e is not None and e.reliable else "no interval"


def _covers(rows: list[dict], key: str, true: float) -> str:
    ins = [r[key] is not None and r[key].reliable and r[key].lo <= true <= r[key].hi for r in rows]
    return f"{sum(ins)}/{len(ins)}" if ins else "-"


if __name__ == "__main__":
    main()
