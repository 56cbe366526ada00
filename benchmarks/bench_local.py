"""Orchestration overhead of the local backend per run (goal: under 1 s).

    .venv/bin/python benchmarks/bench_local.py [N] [ROUNDS]

Submits N tiny runs (one at a time) through the real `scaling submit` with a real
SQLite MLflow store, then subtracts the time each run spent inside `scaling.train.trainer.run`
(result.json's wall_time_s). What remains is the cost of orchestration: planning,
the process (Python + torch import), the run lock, and MLflow (experiment, run
creation, params, per-epoch and final pushes, artifacts). Both ways of running are
measured, alternately, ROUNDS times each: persistent workers (the default) and a fresh
`scaling train` process per run (`persistent_workers: false`); medians are printed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
name: bench
dataset: {name: synthetic, image_size: 8, size: 32}
seeds: [0, 1, 2, 3, 4, 5, 6, 7]
model: {depth: 10, width: 0.125, stem: cifar}
methods:
  supervised: {batch_size: 32, epochs: 1, warmup_epochs: 0}
"""
PROFILE = "backend: local\ndevice: cpu\nmax_parallel: 1\nthreads_per_run: 1\n"


def measure(n: int, workers: bool) -> tuple[float, float, float, float]:
    """Seconds of orchestration: per run (all of it over N), between two runs, once per
    submit (before the first run and after the last); and to resubmit the N finished runs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sweep.yaml").write_text(
            SWEEP.replace("[0, 1, 2, 3, 4, 5, 6, 7]", str(list(range(n))))
        )
        (root / "local.yaml").write_text(PROFILE + f"persistent_workers: {str(workers).lower()}\n")
        cmd = [sys.executable, "-m", "scaling", "submit", "sweep.yaml", "--cluster", "local.yaml"]
        t0, w0 = time.perf_counter(), time.time()
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        total = time.perf_counter() - t0
        results = list(root.glob("runs/bench/*/result.json"))
        inside = sum(json.loads(p.read_text())["wall_time_s"] for p in results)
        first = min(json.loads((p.parent / "spec.json").read_text())["started_at"] for p in results)
        last = max(p.stat().st_mtime for p in results)  # result.json is written last
        t1 = time.perf_counter()
        out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
        resubmit = time.perf_counter() - t1
        assert "nothing to run" in out.stderr, out.stderr
    between = (last - first - inside) / max(1, n - 1)
    print(
        f"  {'workers' if workers else 'process per run'}: {n} runs, submit {total:.1f} s, "
        f"inside training {inside:.1f} s, the first run started after {first - w0:.1f} s",
        flush=True,
    )
    return (total - inside) / n, between, total - inside - between * (n - 1), resubmit


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[bool, list[tuple[float, float, float, float]]] = {True: [], False: []}
    for _ in range(rounds):
        for workers in (False, True):
            results[workers].append(measure(n, workers))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; medians of {rounds} rounds, the two ways alternating")
    print(
        "| local backend | per run | between two runs | once per submit | resubmit (nothing to run) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for workers, label in ((False, "a process per run"), (True, "persistent workers")):
        cols = [statistics.median(r[i] for r in results[workers]) for i in range(4)]
        runs = ", ".join(f"{r[0]:.2f}" for r in results[workers])
        print(
            f"| {label} | {cols[0]:.2f} s ({runs}) | {cols[1]:.2f} s | {cols[2]:.1f} s | "
            f"{cols[3]:.1f} s |"
        )


if __name__ == "__main__":
    main()
