"""Time to plan a 100,000-run grid (goal: under 2 s on a 2-core machine).

    .venv/bin/python benchmarks/bench_plan.py

Prints a markdown row for BENCHMARKS.md. The cost of each distinct architecture is
computed once on the meta device; the first call pays for those traces, so both the
cold (first plan in a process) and warm times are reported.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

SWEEP = """
name: bench
dataset: {name: cifar10, image_size: 32}
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
model: {depth: [10, 18, 34, 50], width: [0.25, 0.5, 1.0, 2.0, 4.0], stem: cifar}
methods:
  simclr:
    batch_size: [256, 512, 1024, 2048, 4096]
    epochs: [100, 200, 400, 800, 1000]
    temperature: [0.05, 0.1, 0.2, 0.5, 1.0]
    lr_rule: [linear, sqrt]
    weight_decay: [1.0e-6, 1.0e-4]
  supervised:
    batch_size: [256, 1024]
    epochs: [90, 200]
"""


def main() -> None:
    import torch

    torch.set_num_threads(2)
    from scaling.plan.accelerator import Accelerator
    from scaling.plan.planner import make_plan
    from scaling.sweep.cluster import load_profile
    from scaling.sweep.spec import load_sweep

    acc = Accelerator("cuda", "A100-80GB", 80.0, 312.0, 0.35)
    profile = load_profile(None, ["gpus_per_run=8", "gpus_per_node=8"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(SWEEP)
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            sweep = load_sweep(path)
            t1 = time.perf_counter()
            plan = make_plan(sweep, profile, acc)
            t2 = time.perf_counter()
            table = plan.table()
            t3 = time.perf_counter()
            timings.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    n = len(plan.runs)
    (e0, p0, a0, tot0), (e1, p1, a1, tot1) = timings[0], min(timings[1:], key=lambda t: t[3])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    print(f"runs: {n} ({table.num_columns} columns)")
    print(f"cold: expand {e0:.2f} s, plan {p0:.2f} s, table {a0:.2f} s, total {tot0:.2f} s")
    print(f"warm: expand {e1:.2f} s, plan {p1:.2f} s, table {a1:.2f} s, total {tot1:.2f} s")
    print(f"| plan {n:,} runs | {tot0:.2f} s cold / {tot1:.2f} s warm | {machine} |")


if __name__ == "__main__":
    main()
