"""Benchmark: do the report's 90% intervals cover 90%? (scaling.report.calibration)

For every design of calibration.GRID (4-8 sizes x 1/3/5 seeds x 0.5/1/3 points of noise,
laws with and without an error floor), draws `--reps` pairs of data sets from known laws,
fits them with the report's code path (`after`) and with the method it replaced
(`before`), and prints the coverage table that BENCHMARKS.md records, with a summary:
the share of designs whose coverage lies in 85-95%, per column. Then the joint law over
size and training length (calibration.measure_joint) at three noise levels.

    .venv/bin/python benchmarks/bench_coverage.py [--reps 200] [--n-boot 200] [--method after]
        [--sizes 4 5] [--out table.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from pathlib import Path

from scaling.report import calibration as C


def summary(rows: list[C.Coverage]) -> str:
    cols = ("at_max", "at_reach", "gap_at_max", "gap_at_reach")
    lines = []
    for method in sorted({r.method for r in rows}):
        mine = [r for r in rows if r.method == method]
        parts = []
        for c in cols:
            vals = [getattr(r, c) for r in mine if not math.isnan(getattr(r, c))]
            inside = sum(0.85 <= v <= 0.95 for v in vals)
            low = sum(v < 0.85 for v in vals)
            mean = 100 * sum(vals) / len(vals) if vals else math.nan
            parts.append(
                f"{c}: mean {mean:.1f}%, {inside}/{len(vals)} designs in 85-95%, {low} below"
            )
        undrawn = sum(r.drawn < 1 for r in mine)
        lines.append(
            f"- {method}: "
            + "; ".join(parts)
            + f"; {undrawn} designs draw no band on some data sets"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--method", choices=[str(m) for m in C.Method], action="append")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--joint-only", action="store_true", help="only the joint-law designs")
    args = parser.parse_args()
    methods = [C.Method(m) for m in (args.method or [str(m) for m in C.Method])]
    designs = [d for d in C.GRID if not args.sizes or d.sizes in args.sizes]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    rows = []
    start = time.perf_counter()
    warnings.simplefilter("ignore", RuntimeWarning)
    for method in methods if not args.joint_only else ():
        for design in designs:
            t = time.perf_counter()
            rows.append(C.measure(design, method=method, reps=args.reps, n_boot=args.n_boot))
            print(f"{time.perf_counter() - t:.1f} s {rows[-1].row()}", flush=True)
    joint = []
    if not args.sizes:  # the joint law: its own design, three noise levels, three seeds
        for noise in (0.5, 1.0, 3.0):
            t = time.perf_counter()
            joint.append(C.measure_joint(noise, reps=args.reps // 2, n_boot=args.n_boot))
            print(f"{time.perf_counter() - t:.1f} s {joint[-1]}", flush=True)
    text = C.table(rows) + "\n\n" + summary(rows) if rows else ""
    if joint:
        cols = list(joint[0])
        text += "\n\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols) + "\n"
        text += "\n".join("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in joint)
    text += f"\n\n{time.perf_counter() - start:.0f} s in all, load {os.getloadavg()[0]:.2f} at the end\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
