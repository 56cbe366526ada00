"""How well the plan predicts training time once the smallest networks have run (goal: 25%).

    .venv/bin/python benchmarks/bench_costmodel.py [--seeds 0] [--calibrate 0.0625 0.125]

In a fresh temporary workdir and cost cache, through the real CLI: `scaling plan` of the
quickstart (the FLOP model: nothing measured yet), `scaling submit --only width=W` for
the calibration widths, `scaling plan` again (now from their measurements), then
`scaling submit` of the rest. For every run trained after the second plan it prints the
predicted and the measured training time (result.json throughput.train_time_s) and the
median absolute error of both plans: the FLOP model's (the baseline) and the calibrated
one. `--seeds` and `--set` reduce the grid (the full quickstart trains 24 runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def scaling(*args: str, cwd: Path, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "scaling", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def plan(sweep: Path, sets: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    rows = json.loads(scaling("plan", str(sweep), "--format", "json", *sets, cwd=cwd, env=env))
    return {r["run_id"]: r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "quickstart.yaml")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--calibrate", type=float, nargs="+", default=[0.0625, 0.125])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--verbose", action="store_true", help="every run's epoch times")
    args = parser.parse_args()
    sets = [f"--set=seeds=[{args.seeds}]"] + [f"--set={s}" for s in args.sets]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "SCALING_CACHE_DIR": str(root / "cache")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        model = plan(args.sweep, sets, root, env)
        t0 = time.perf_counter()
        for width in args.calibrate:
            scaling("submit", str(args.sweep), *sets, f"--only=width={width}", cwd=root, env=env)
        calibration_s = time.perf_counter() - t0
        calibrated = plan(args.sweep, sets, root, env)
        t0 = time.perf_counter()
        scaling("submit", str(args.sweep), *sets, cwd=root, env=env)
        rest_s = time.perf_counter() - t0
        name = _sweep_name(args.sweep)
        took, epochs = {}, {}
        for run_id in calibrated:
            run_dir = root / "runs" / name / run_id
            result = json.loads((run_dir / "result.json").read_text())
            took[run_id] = result["throughput"]["train_time_s"]
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            epochs[run_id] = [json.loads(line)["seconds"] for line in lines]
        if args.verbose:
            for run_id, row in calibrated.items():
                e = epochs[run_id]
                print(
                    f"{row['method']} {row['width']}: {took[run_id]:.1f} s, epochs "
                    f"first {e[0]:.2f} s, median {statistics.median(e):.2f} s, max {max(e):.2f} s"
                )
    report(model, calibrated, took, set(args.calibrate), calibration_s, rest_s)


def _sweep_name(path: Path) -> str:
    import yaml

    return str(yaml.safe_load(path.read_text())["name"])


def report(
    model: dict[str, Any],
    calibrated: dict[str, Any],
    took: dict[str, float],
    calibration_widths: set[float],
    calibration_s: float,
    rest_s: float,
) -> None:
    from scaling.plan.throughput import cpu_model

    print(
        f"{cpu_model()}, {os.cpu_count()} cores; calibration runs {calibration_s:.0f} s, "
        f"the rest {rest_s:.0f} s"
    )
    print(
        "| run | method | width | cost from | predicted | FLOP model | took | error | model error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    errors, model_errors = [], []
    for run_id, row in sorted(calibrated.items(), key=lambda kv: (kv[1]["method"], kv[1]["width"])):
        if row["width"] in calibration_widths:
            continue
        seconds = took[run_id]
        error = row["predicted_train_s"] / seconds - 1
        model_error = model[run_id]["predicted_train_s"] / seconds - 1
        errors.append(abs(error))
        model_errors.append(abs(model_error))
        print(
            f"| {run_id} | {row['method']} | {row['width']} | {row['cost_source']} "
            f"| {row['predicted_train_s']:.1f} s | {model[run_id]['predicted_train_s']:.1f} s "
            f"| {seconds:.1f} s | {error:+.0%} | {model_error:+.0%} |"
        )
    print(
        f"median absolute error over {len(errors)} runs: calibrated {statistics.median(errors):.0%}, "
        f"FLOP model {statistics.median(model_errors):.0%}"
    )


if __name__ == "__main__":
    main()
