"""Benchmark: a 10,000-run synthetic sweep collected, fitted and plotted (goal: < 10 s).

A synthetic sweep file (20 architectures x (24 SimCLR recipes + 1 supervised) x 20
seeds = 10,000 runs) is expanded with scaling.sweep.spec.load_sweep, and a run directory is
written for each run (result.json with made-up but law-abiding metrics; 1% failed with
failure.json, 1% running, 1% pending) outside the timed region. Timed: collect()
reading every run directory, then build_report() (gap table, fits with bootstrap,
figures, HTML).

    .venv/bin/python benchmarks/bench_report.py [--out DIR] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

SWEEP = """
name: bench_report
description: synthetic 10,000-run sweep for benchmarks/bench_report.py
dataset: {name: synthetic, image_size: 32, size: 50000}
seeds: [%s]
model: {depth: [10, 18, 34, 50], width: [0.25, 0.5, 1.0, 2.0, 4.0], stem: cifar}
methods:
  simclr: {batch_size: [256, 1024, 4096, 8192], epochs: [100, 400, 800], temperature: [0.1, 0.5]}
  supervised: {batch_size: 1024, epochs: 90}
"""
BASE_PARAMS = {10: 4.9e6, 18: 11.2e6, 34: 21.3e6, 50: 23.5e6}


def fake_metrics(spec, rng: np.random.Generator) -> dict:
    """Errors that follow E + A N^-alpha, better with epochs and batch (noise 2%)."""
    params = int(BASE_PARAMS[spec.model["depth"]] * spec.model["width"] ** 2)
    c = spec.config
    if spec.method == "supervised":
        err = 0.04 + 3.0 * params**-0.25
    else:
        err = (
            0.05
            + 40.0 * params**-0.33 * (100 / c["epochs"]) ** 0.2 * (256 / c["batch_size"]) ** 0.04
        )
        err *= 1.0 if c["temperature"] == 0.5 else 1.05
    err = min(0.95, err * float(np.exp(rng.normal(0, 0.02))))
    flops = params * 60
    views = 2 if spec.method == "simclr" else 1
    return {
        "run_id": spec.run_id,
        "method": spec.method,
        "top1": 1 - err,
        "top5": 1 - err / 3,
        "knn_top1": 1 - err * 1.1 if spec.method == "simclr" else None,
        "epochs": c["epochs"],
        "steps": 100,
        "images_seen": 50000 * c["epochs"],
        "train_flops": 3.0 * flops * 50000 * c["epochs"] * views,
        "wall_time_s": 1.0,
        "encoder_params": params,
        "flops_per_image": flops,
        "derived": {"lr": 0.3 * c["batch_size"] / 256},
        "layout": {"micro_batch": c["batch_size"], "accum_steps": 1, "gpus": 1, "nodes": 1},
    }


def write_runs(sweep, workdir: Path) -> None:
    rng = np.random.default_rng(0)
    for i, spec in enumerate(sweep.runs):
        run_dir = workdir / sweep.name / spec.run_id
        kind = i % 100
        if kind == 99:  # pending: no directory
            continue
        run_dir.mkdir(parents=True)
        (run_dir / "spec.json").write_text(
            json.dumps(
                {
                    **spec.to_dict(),
                    "layout": {"micro_batch": 64, "accum_steps": 1, "gpus": 1, "nodes": 1},
                }
            )
        )
        if kind == 98:  # running
            (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
        elif kind == 97:  # failed
            (run_dir / "failure.json").write_text(
                json.dumps({"kind": "oom", "message": "CUDA out of memory"})
            )
        else:
            (run_dir / "result.json").write_text(json.dumps(fake_metrics(spec, rng)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from scaling.sweep.spec import load_sweep

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sweep.yaml").write_text(SWEEP % ", ".join(map(str, range(args.seeds))))
        sweep = load_sweep(root / "sweep.yaml")
        write_runs(sweep, root / "work")
        t0 = time.perf_counter()
        from scaling.report import html as report
        from scaling.report import results

        table = results.collect(sweep, root / "work")
        t1 = time.perf_counter()
        html = report.build_report(sweep, table, args.out or root / "report", n_boot=args.n_boot)
        t2 = time.perf_counter()
        states = dict(
            zip(
                *np.unique(
                    table.column("state").to_numpy(zero_copy_only=False), return_counts=True
                ),
                strict=True,
            )
        )
        print(
            f"runs: {table.num_rows} {states}; report: {html} ({html.stat().st_size / 1e6:.1f} MB)"
        )
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(
        "| runs | collect (s) | report: gaps + fits + figures + html (s) | total (s) | n_boot | machine |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {table.num_rows} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t2 - t0:.2f} | {args.n_boot} | {machine} |"
    )


if __name__ == "__main__":
    main()
