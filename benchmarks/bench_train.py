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
    from scaling.sweep.methods import METHODS
    from scaling.train.augment import AUGMENTATIONS
    from scaling.train.optim import build_optimizer
    from scaling.train.readers import load_dataset
    from scaling.train.steps import STEPS
    from scaling.train.views import StepViews, local_views

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data = load_dataset("digits", image_size=16, split="train").to(dev)
    batch = 128
    images, labels = data.images[:batch], data.labels[:batch]
    rows = slice(0, batch)
    layout = Layout.single(batch)
    print(
        f"digits 16 px, depth 10 (CIFAR stem), batch {batch}; {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.device}, {args.threads} threads, torch {torch.__version__}"
    )
    print("| method | width | step | images/s |")
    print("| --- | --- | --- | --- |")
    for method, info in METHODS.items():  # each step as the trainer runs it: views, then STEPS
        config = info.config(batch_size=batch).model_dump()
        if "color_strength" in config:
            config["color_strength"] = 0.5
        aug = AUGMENTATIONS[info.augmentation](16, config, False)
        step_fn = STEPS[info.objective]
        grouped = layout.with_grouping(method)  # both views in one forward, as the trainer
        for width in (0.125, 0.25, 0.5, 1.0):
            torch.manual_seed(0)
            net = build_network(method, depth=10, width=width, stem="cifar", projection_dim=64)
            net = net.to(dev)
            opt = build_optimizer(config["optimizer"], net, 0.1, 1e-6)
            gen = torch.Generator(device=dev).manual_seed(0)
            times = []
            for i in range(args.steps + 2):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                views, _ = local_views(aug, images, gen, rows, info.views)
                batch_views = StepViews(views, labels, gen.get_state())
                step_fn(net, batch_views, grouped, config, contextlib.nullcontext())
                opt.step()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            print(f"| {method} | {width} | {median * 1000:.0f} ms | {batch / median:.0f} |")


if __name__ == "__main__":
    main()
