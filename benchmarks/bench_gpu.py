"""The GPU benchmark: SimCLR step throughput, MFU, gradient caching, memory model, augmentation.

    python benchmarks/bench_gpu.py --out $OUT [--tests-log $OUT/cuda_tests.txt]
    python benchmarks/bench_gpu.py --cpu-smoke       # tiny shapes on the CPU: the code runs

One step is what the trainer runs (`scaling.train.steps.simclr_step`): the batched
augmentation of both views on the device, forward/backward (gradient caching when the
layout accumulates), NT-Xent in fp32, LARS. Each configuration: `--warmup` steps, then
`--steps` timed ones (one synchronisation at the end); pairs/s = batch / step time.
MFU: the cost model's model FLOPs (3 x forward x 2 views per pair; caching's extra
forward is not model FLOPs) against the device's dense peak at that precision (bf16, or
TF32 for fp32, which cuDNN's convolutions use by default). Memory: the cost model's
peak (scaling.plan.costs.peak_memory_bytes, at the run's precision) against
torch.cuda.max_memory_allocated, without and with its margins. Configurations run in
priority order and stop when `--budget-s` is spent; `torch.compile` ones come last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_augment, beside this file

#: Dense tensor-core peaks in TFLOP/s: (bf16, tf32), by words of the device name.
PEAKS = {
    ("h200",): (989.0, 494.7),
    ("h100", "sxm"): (989.0, 494.7),
    ("h100", "hbm3"): (989.0, 494.7),
    ("h100", "pcie"): (756.0, 378.0),
    ("h100",): (989.0, 494.7),
    ("a100",): (312.0, 156.0),
    ("l40s",): (362.0, 183.0),
    ("a10",): (125.0, 62.5),
}
ANCHORS = (
    "anchors: ResNet-18 SimCLR on CIFAR-10, 11.9 s/epoch on one A100 with 16 CPU workers = "
    "about 4.2k pairs/s, ~9% of the A100's bf16 peak at 6.7 GFLOP per trained pair; goal on "
    "an H100/H200: >= 40k pairs/s at 32 px in bf16 (~27% MFU), aiming at 35% (~52k pairs/s)"
)


@dataclass(frozen=True)
class Config:
    depth: int
    size: int
    batch: int
    precision: str = "bf16"
    accum: int = 1
    channels_last: bool = True
    compile: bool = False
    width: float = 1.0
    stem: str = "cifar"


def configs(smoke: bool) -> list[Config]:
    """The measured configurations in priority order (smoke: the same, tiny, no compile)."""
    r18, r50 = Config(18, 32, 512), Config(50, 224, 256, stem="imagenet")
    full = [
        r18,
        replace(r18, batch=1024),
        replace(r18, precision="fp32"),
        replace(r18, batch=1024, precision="fp32"),
        replace(r18, channels_last=False),
        replace(r18, batch=1024, accum=4),
        r50,
        replace(r50, precision="fp32"),
        replace(r50, accum=4),
        replace(r18, compile=True),
        replace(r18, batch=1024, compile=True),
    ]
    if not smoke:
        return full
    small = {18: (0.125, 16), 50: (0.125, 32)}
    return [
        replace(c, width=small[c.depth][0], size=small[c.depth][1], batch=max(8, c.batch // 32))
        for c in full
        if not c.compile
    ]


def peak_tflops(name: str, precision: str, override: float | None) -> float | None:
    if override:
        return override
    words = set(re.findall(r"[a-z0-9]+", name.lower()))
    for key, (bf16, tf32) in PEAKS.items():
        if set(key) <= words:
            return bf16 if precision == "bf16" else tf32
    return None


def measure(c: Config, dev: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """One configuration's step time and peak memory, with the cost model's figures."""
    from scaling.models.resnet import build_network
    from scaling.plan import costs
    from scaling.plan.layout import Layout
    from scaling.train.augment import SimCLRAugment
    from scaling.train.optim import build_optimizer
    from scaling.train.steps import simclr_step
    from scaling.train.views import local_views

    torch.manual_seed(0)
    net = build_network("simclr", depth=c.depth, width=c.width, stem=c.stem, projection_dim=128)
    net = net.to(dev)
    if c.channels_last:
        net = net.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if c.compile else net
    opt = build_optimizer("lars", net, 0.3 * c.batch / 256, 1e-6)
    aug = SimCLRAugment(c.size, color_strength=1.0 if c.size >= 64 else 0.5)
    images = torch.randint(0, 256, (c.batch, 3, c.size, c.size), dtype=torch.uint8, device=dev)
    layout = Layout(c.batch // c.accum, c.accum, 1, 1, c.precision).with_grouping("simclr")
    gen = torch.Generator(device=dev).manual_seed(0)
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if c.precision == "bf16"
        else contextlib.nullcontext()
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        shuffle = c.accum > 1  # shuffle-BN under accumulation, as the trainer's stream
        (v1, v2), perm = local_views(aug, images, gen, slice(0, c.batch), 2, shuffle)
        simclr_step(step_net, v1, v2, layout, 0.5, autocast, perm)
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    measured = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    cost = costs.arch_cost("simclr", c.depth, c.width, c.stem, 1.0, c.size, 128, 10)
    views = 1 if c.accum > 1 else 2  # graphs alive at once (caching: one chunk of one view)
    raw = costs.peak_memory_bytes(
        cost, layout.micro_batch, views, margin_bytes=0, margin_fraction=0.0, precision=c.precision
    )
    planned = costs.peak_memory_bytes(cost, layout.micro_batch, views, precision=c.precision)
    return {
        "step_s": step_s,
        "warmup_s": warmup_s,
        "pairs_per_s": c.batch / step_s,
        "model_flops_per_pair": cost.flops_per_image * 3 * 2,
        "measured_bytes": measured,
        "model_bytes": raw,
        "planned_bytes": planned,
    }


def run_all(args: argparse.Namespace, dev: torch.device, name: str) -> list[dict[str, Any]]:
    """Every configuration in turn; the summary is rewritten after each (a timeout keeps it)."""
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for c in configs(args.cpu_smoke):
        row: dict[str, Any] = {"config": c.__dict__}
        if time.perf_counter() - start > args.budget_s:
            row["error"] = "skipped: time budget spent"
        else:
            try:
                row.update(measure(c, dev, args.warmup, args.steps))
                peak = peak_tflops(name, c.precision, args.peak_tflops)
                if peak:
                    row["mfu"] = row["pairs_per_s"] * row["model_flops_per_pair"] / (peak * 1e12)
            except torch.OutOfMemoryError as exc:
                row["error"] = f"out of memory: {str(exc).splitlines()[0][:80]}"
            except Exception as exc:  # one failing configuration must not lose the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_summary(args, name, rows, [])
        _release(dev)
    return rows


def write_summary(
    args: argparse.Namespace, name: str, rows: list[dict[str, Any]], extra: list[str]
) -> str:
    lines = [f"# GPU benchmark on {name} (torch {torch.__version__})", "", ANCHORS, ""]
    lines += table(rows) + [""] + extra + [tests_line(args.tests_log)]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(text)
        (args.out / "rows.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return text


def _release(dev: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()  # compiled graphs of the last configuration
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def caching_overheads(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Row index of each cached configuration -> its step time over the plain step's."""
    out = {}
    for i, r in enumerate(rows):
        c = r["config"]
        if c["accum"] > 1 and "step_s" in r:
            plain = {**c, "accum": 1}
            base = next((p for p in rows if p["config"] == plain and "step_s" in p), None)
            if base:
                out[i] = r["step_s"] / base["step_s"]
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    gib = 2**30
    lines = [
        "| configuration | batch | precision | layout | channels_last | compile | step | pairs/s "
        "| MFU | vs plain step | peak memory (max_memory_allocated) | memory model: raw / planned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    overheads = caching_overheads(rows)
    for i, r in enumerate(rows):
        c = r["config"]
        layout = "plain" if c["accum"] == 1 else f"cached x{c['accum']}"
        head = (
            f"| ResNet-{c['depth']} x{c['width']:g} {c['stem']} stem {c['size']} px | {c['batch']} | {c['precision']} | {layout} "
            f"| {'on' if c['channels_last'] else 'off'} | {'on' if c['compile'] else 'off'} "
        )
        if "error" in r:
            lines.append(head + f"| {r['error']} | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        over = f"{overheads[i]:.2f}x" if i in overheads else "-"
        mem = "-" if r["measured_bytes"] is None else f"{r['measured_bytes'] / gib:.2f} GiB"
        model = f"{r['model_bytes'] / gib:.2f} / {r['planned_bytes'] / gib:.2f} GiB"
        if r["measured_bytes"]:
            model += f" ({r['model_bytes'] / r['measured_bytes']:.2f}x / {r['planned_bytes'] / r['measured_bytes']:.2f}x)"
        lines.append(
            head + f"| {r['step_s'] * 1000:.1f} ms | {r['pairs_per_s']:,.0f} | {mfu} "
            f"| {over} | {mem} | {model} |"
        )
    return lines


def augmentation(dev: torch.device, smoke: bool) -> list[str]:
    from bench_augment import bench

    lines = [
        "| augmentation px | batch | on the device (img/s) | torchvision v2 per image, best (img/s) | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size, batch in ((16, 32),) if smoke else ((32, 1024), (96, 256), (224, 256)):
        r = bench(size, batch, dev.type, 0.2 if smoke else 1.0)
        best = max(r["tensor"], r["pil"])
        lines.append(
            f"| {size} | {batch} | {r['batched']:,.0f} | {best:,.0f} | {r['batched'] / best:.1f}x |"
        )
    return lines


def tests_line(path: Path | None) -> str:
    if path is None or not path.exists():
        return "CUDA tests: not run"
    summary = [
        ln for ln in path.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", ln)
    ]
    return f"CUDA tests: {summary[-1].strip('= ') if summary else 'no summary line (see the log)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="write summary.md and rows.json here"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 10 (smoke: 1)")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (smoke: 2)")
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting configurations"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device peak")
    parser.add_argument("--tests-log", type=Path, default=None)
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (1 if args.cpu_smoke else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.cpu_smoke else 20)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: no CUDA device (torch.cuda.is_available() is False); --cpu-smoke "
            "runs the same code on tiny shapes on the CPU"
        )
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    else:
        from scaling.plan.throughput import cpu_model

        name = cpu_model()
    print(f"{name}; torch {torch.__version__}; {ANCHORS}", flush=True)
    rows = run_all(args, dev, name)
    lines = [f"# GPU benchmark on {name} (torch {torch.__version__})", "", ANCHORS, ""]
    lines += (
        table(rows) + [""] + augmentation(dev, args.cpu_smoke) + ["", tests_line(args.tests_log)]
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(text)
        (args.out / "rows.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
