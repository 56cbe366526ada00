"""Orchestration overhead of the local backend per run (goal: under 3 s).

    .venv/bin/python benchmarks/bench_local.py [N]

Submits N tiny runs (one at a time) through the real `scaling submit` with a real
SQLite MLflow store, then subtracts the time each run spent inside `scaling.train.trainer.run`
(result.json's wall_time_s). What remains is the cost of orchestration: planning,
the subprocess (Python + torch import), the run lock, and MLflow (experiment, run
creation, params, per-epoch and final pushes, artifacts).
"""

from __future__ import annotations

import json
import os
import platform
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sweep.yaml").write_text(
            SWEEP.replace("[0, 1, 2, 3, 4, 5, 6, 7]", str(list(range(n))))
        )
        (root / "local.yaml").write_text(PROFILE)
        cmd = [sys.executable, "-m", "scaling", "submit", "sweep.yaml", "--cluster", "local.yaml"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        total = time.perf_counter() - t0
        inside = sum(
            json.loads(p.read_text())["wall_time_s"] for p in root.glob("runs/bench/*/result.json")
        )
        t1 = time.perf_counter()
        out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
        resubmit = time.perf_counter() - t1
        assert "nothing to run" in out.stderr, out.stderr
    per_run = (total - inside) / n
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"{n} runs: submit {total:.1f} s, inside training {inside:.1f} s")
    print(
        f"| local orchestration | {per_run:.2f} s per run (resubmit of {n} finished runs: {resubmit:.1f} s) | {machine} |"
    )


if __name__ == "__main__":
    main()
