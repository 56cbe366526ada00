"""Throughput of the batched SimCLR augmentation against torchvision v2 applied per image.

The usual way to get SimCLR's per-image randomness is a torchvision `v2.Compose` called
once per image in a Dataset (a batched v2 call draws ONE set of parameters for the whole
batch). This measures both on the same pipeline (crop 0.08-1, flip, jitter 0.8s p 0.8 in
random order, grayscale p 0.2, blur p 0.5 from 64 px, normalise), one view per image, the
batched one in both styles (`augment: official`, TensorFlow's bicubic crops and colour
ops, the default; `augment: torchvision`, the per-image pipeline's semantics):

    .venv/bin/python benchmarks/bench_augment.py            # CPU, 2 threads, 32 and 96 px
    .venv/bin/python benchmarks/bench_augment.py --device cuda

and prints markdown table rows (images/s = augmented views per second) for BENCHMARKS.md.
The per-image baselines always run on the CPU (where a Dataset runs them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from scaling.plan.throughput import cpu_model
from scaling.sweep.methods import AugmentStyle
from scaling.train.augment import SimCLRAugment


def per_image_pipeline(aug: SimCLRAugment) -> v2.Compose:
    """The same pipeline as `aug`, as the torchvision v2 transforms a Dataset would call."""
    s = aug.color_strength
    steps: list[torch.nn.Module] = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            aug.image_size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True
        ),
        v2.RandomHorizontalFlip(aug.flip_p),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=aug.jitter_p),
        v2.RandomGrayscale(aug.gray_p),
    ]
    if aug.blur_p > 0:
        steps.append(
            v2.RandomApply([v2.GaussianBlur(aug.kernel_size, aug.blur_sigma)], p=aug.blur_p)
        )
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(aug.mean), list(aug.std))]
    return v2.Compose(steps)


def images_per_second(
    fns: dict[str, tuple[Callable[[], object], int]],
    seconds: float,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median throughput of each fn (images per call), timed in turns for about `seconds`.

    Taking turns (one call of each, again and again) spreads a shared machine's bursts of
    load over every candidate alike, so their ratio holds even when the absolute rates move.
    `clock`: wall time, or the process's CPU time (time.process_time, with one thread: the
    work done, whatever else the machine runs).
    """
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for fn, _ in fns.values():  # warm-up
        fn()
    sync()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds * len(fns) or min(map(len, rates.values())) < 5:
        for name, (fn, images) in fns.items():
            t0 = clock()
            fn()
            sync()
            rates[name].append(images / max(clock() - t0, 1e-9))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench(
    size: int,
    batch: int,
    device: str,
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    aug = SimCLRAugment(size, style=AugmentStyle.TORCHVISION)
    official = SimCLRAugment(size, style=AugmentStyle.OFFICIAL)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    on_device = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    compose = per_image_pipeline(aug)
    n = max(32, batch // 4)  # per-image is slow: time a quarter batch
    pils = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images[:n]]
    fns: dict[str, tuple[Callable[[], object], int]] = {
        "official": (lambda: official(on_device, generator), batch),
        "batched": (lambda: aug(on_device, generator), batch),
        "tensor": (lambda: [compose(im) for im in images[:n]], n),
        "pil": (lambda: [compose(im) for im in pils], n),
    }
    return images_per_second(fns, seconds, sync, clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the process's CPU time (with --threads 1, robust on a busy machine)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock cpu measures one CPU thread: use it with --threads 1 on the CPU")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    machine = f"{cpu_model()}, {args.threads} threads, {args.clock} clock"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()}"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {machine}")
    print(
        f"| px | batch | official, batched on {args.device} (img/s) "
        f"| torchvision, batched on {args.device} (img/s) | v2 per image, uint8 tensor (img/s) "
        "| v2 per image, PIL (img/s) | speed-up vs best per image (official; torchvision) "
        "| machine |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        r = bench(size, args.batch, args.device, args.seconds, clock)
        best = max(r["tensor"], r["pil"])
        print(
            f"| {size} | {args.batch} | {r['official']:,.0f} | {r['batched']:,.0f} "
            f"| {r['tensor']:,.0f} | {r['pil']:,.0f} "
            f"| {r['official'] / best:.1f}x; {r['batched'] / best:.1f}x | {machine} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
