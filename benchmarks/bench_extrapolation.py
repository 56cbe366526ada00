"""Plans beyond the measured networks: predicted vs measured training time, 10x and 100x out.

    .venv/bin/python benchmarks/bench_extrapolation.py [--measured 0.0625 0.125] [--targets 0.4 1.25]

In a fresh temporary workdir and cost cache, through the real CLI: `scaling submit` of
two small digits networks (8 px, ResNet-10 at the `--measured` widths, supervised), then
`scaling plan` of networks about 10x and 100x their FLOPs per image (`--targets`), then
`scaling submit` of those. For each target it prints its FLOPs per image as a multiple
of the largest measured network's and the training time measured beside three
predictions: the plan's (`scaled` within 10x, `calibrated` beyond: the nearest measured
network's time plus the FLOPs beyond it at the FLOP model's rate), the previous rule (the measured networks' curve
extrapolated: the geometric mean of the power law and the line through the two nearest,
scaling.plan.throughput._interpolate) and the plain FLOP model (peak x utilisation,
nothing measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SWEEP = """\
name: beyond
dataset: {{name: digits, image_size: 8}}
seeds: [0]
model: {{depth: 10, width: {widths}, stem: cifar}}
methods: {{supervised: {{batch_size: 128, epochs: {epochs}, base_lr: 0.4}}}}
"""


def scaling(*args: str, cwd: Path, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "scaling", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def plan(sweep: Path, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    args = ("plan", str(sweep), "--cluster", str(cwd / PROFILE), "--format", "json")
    rows = json.loads(scaling(*args, cwd=cwd, env=env))
    return {r["run_id"]: r for r in rows}


#: one run at a time with every core: the device the plan sizes for is the one measured
#: ("<CPU> (N threads)"), for the calibration runs and the targets alike
PROFILE = "one-at-a-time.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=float, nargs="+", default=[0.0625, 0.125])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.4, 1.25])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    from scaling.plan import throughput

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "SCALING_CACHE_DIR": str(root / "cache")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        (root / PROFILE).write_text("backend: local\ndevice: cpu\nmax_parallel: 1\n")
        cluster = ("--cluster", str(root / PROFILE))
        base = root / "measured.yaml"
        base.write_text(SWEEP.format(widths=list(args.measured), epochs=args.epochs))
        target = root / "targets.yaml"
        target.write_text(SWEEP.format(widths=list(args.targets), epochs=args.epochs))
        flop_model = plan(target, root, env)  # nothing measured yet: the FLOP model
        scaling("submit", str(base), *cluster, cwd=root, env=env)
        measured = plan(base, root, env)
        predicted = plan(target, root, env)
        files = sorted((root / "cache" / "throughput").glob("*/*.json"))
        ms = [throughput.Measurement.from_dict(json.loads(p.read_text())) for p in files]
        device = ms[0].device
        points = throughput._per_arch(ms)
        scaling("submit", str(target), *cluster, cwd=root, env=env)
        largest = max(r["flops_per_image"] for r in measured.values())
        print(f"measured networks: widths {args.measured}, {len(ms)} runs on {device}")
        for f, t in points:
            print(f"  {f:.3g} training FLOPs per image: {1e3 * t:.3f} ms per image")
        print(
            f"{'width':>6} {'FLOPs x':>8} {'took s':>8} {'plan s':>8} {'source':>11} {'err':>6} "
            f"{'previous s':>10} {'err':>6} {'FLOP model s':>12} {'err':>6}"
        )
        for run_id, row in predicted.items():
            result = json.loads((root / "runs" / "beyond" / run_id / "result.json").read_text())
            took = result["throughput"]["train_time_s"]
            per_image = result["throughput"]["train_flops_per_image"]
            images = result["images_seen"]
            previous = throughput._interpolate(points, per_image) * images
            model = flop_model[run_id]["predicted_train_s"]
            print(
                f"{row['width']:>6g} {row['flops_per_image'] / largest:>8.1f} {took:>8.1f} "
                f"{row['predicted_train_s']:>8.1f} {row['cost_source']:>11} "
                f"{row['predicted_train_s'] / took - 1:>+6.0%} {previous:>10.1f} "
                f"{previous / took - 1:>+6.0%} {model:>12.1f} {model / took - 1:>+6.0%}"
            )


if __name__ == "__main__":
    main()
