"""Training throughput (images/s) of the quickstart's models, as the trainer runs them.

    .venv/bin/python benchmarks/bench_train.py [--threads 1] [--device cpu]

One optimizer step = batched augmentation + forward/backward (+ NT-Xent for SimCLR,
two views per image) + LARS/SGD, exactly the functions `scaling.train.trainer` calls. Images
per second count images, not views.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import torch

    from scaling.models.resnet import build_network
    from scaling.plan.layout import Layout
    from scaling.train.augment import CropFlipAugment, SimCLRAugment
    from scaling.train.optim import build_optimizer
    from scaling.train.readers import load_dataset
    from scaling.train.steps import simclr_step, supervised_step

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data = load_dataset("digits", image_size=16, split="train").to(dev)
    batch = 128
    images, labels = data.images[:batch], data.labels[:batch]
    rows = slice(0, batch)
    layout = Layout.single(batch)
    print(f"digits 16 px, depth 10 (CIFAR stem), batch {batch}; {platform.machine()}, "
          f"{os.cpu_count()} cores, {args.device}, {args.threads} threads, torch {torch.__version__}")  # fmt: skip
    print("| method | width | step | images/s |")
    print("| --- | --- | --- | --- |")
    for method in ("simclr", "supervised"):
        for width in (0.125, 0.25, 0.5, 1.0):
            torch.manual_seed(0)
            net = build_network(method, depth=10, width=width, stem="cifar", projection_dim=64).to(
                dev
            )
            opt = build_optimizer("lars" if method == "simclr" else "sgd", net, 0.1, 1e-6)
            gen = torch.Generator(device=dev).manual_seed(0)
            if method == "simclr":
                aug = SimCLRAugment(16, 0.5)

                def step(net=net, aug=aug, gen=gen) -> None:  # type: ignore[no-untyped-def]
                    simclr_step(net, images, aug, gen, layout, rows, 0.5, contextlib.nullcontext())
            else:
                aug = CropFlipAugment(16)

                def step(net=net, aug=aug, gen=gen) -> None:  # type: ignore[no-untyped-def]
                    supervised_step(
                        net, images, labels, aug, gen, layout, rows, contextlib.nullcontext()
                    )

            times = []
            for i in range(args.steps + 2):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                step()
                opt.step()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            print(f"| {method} | {width} | {median * 1000:.0f} ms | {batch / median:.0f} |")


if __name__ == "__main__":
    main()
