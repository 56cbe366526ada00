"""Gradient caching vs a plain full-batch step: time and peak memory at the same batch.

    .venv/bin/python benchmarks/bench_accumulate.py [--device cpu|cuda] [--depth 18]
        [--width 0.5] [--size 32] [--batch 256] [--steps 5]

Each configuration runs in a fresh subprocess so its peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on CPU the process's peak resident set (ru_maxrss,
which includes the Python interpreter and libraries: compare the differences). The
physical cost of caching is one extra forward (about 4/3 of a plain step); the gain is
that the graph of only one micro-batch of one view is alive at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def child(args: argparse.Namespace, accum: int) -> dict[str, float]:
    import resource

    import torch

    from scaling.models.resnet import build_network
    from scaling.train.accumulate import cached_backward, plain_backward
    from scaling.train.losses import nt_xent
    from scaling.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = build_network(
        "simclr", depth=args.depth, width=args.width, stem="cifar", projection_dim=128
    ).to(dev)
    opt = build_optimizer("lars", net, 0.1, 1e-6)
    x1 = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    x2 = torch.randn(args.batch, 3, args.size, args.size, device=dev)

    def loss_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, 0.5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if accum == 1:
            plain_backward(net, x1, x2, loss_fn)
        else:
            cached_backward(net, x1, x2, args.batch // accum, loss_fn)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"accum": accum, "step_s": statistics.median(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args, args.child)))
        return
    rows = []
    for accum in (1, 2, 4, 8):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", str(accum)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.device}, {args.threads} threads"
    print(
        f"ResNet-{args.depth} x{args.width}, {args.size} px, batch {args.batch} (two views), {machine}"
    )
    print("| accumulation | micro-batch | step time | vs plain | peak memory | vs plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        kind = "plain (full batch)" if r["accum"] == 1 else f"cached, {r['accum']} steps"
        print(
            f"| {kind} | {args.batch // r['accum']} | {r['step_s'] * 1000:.0f} ms | {r['step_s'] / base['step_s']:.2f}x "
            f"| {r['peak_mb']:.0f} MB | {r['peak_mb'] / base['peak_mb']:.2f}x |"
        )


if __name__ == "__main__":
    main()
