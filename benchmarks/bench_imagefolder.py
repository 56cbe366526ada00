"""Training views per second from an image folder: the project's path against the peers'.

The peers' way to feed ImageNet to SimCLR: torchvision `ImageFolder` + `DataLoader`
workers, each image decoded in full and transformed per view with `RandomResizedCrop`,
flip, `ColorJitter` (p 0.8) and `RandomGrayscale` (two views per decode, as SimCLR
implementations do). The project's path (`scaling.train.views.train_views` on an
`ImageFolderSet`): crop boxes drawn for the batch, each image decoded once at the
smallest JPEG scale its boxes allow and only the boxes resized, in a thread pool, one
batch ahead; flip, colour jitter and grey batched on the device. Same files (generated
here: JPEGs of 300-500 px at 4:3 and 3:4), same cores, 224 px, no blur on either side:

    .venv/bin/python benchmarks/bench_imagefolder.py              # 2 cores, CPU
    .venv/bin/python benchmarks/bench_imagefolder.py --device cuda  # augment on the GPU
    .venv/bin/python benchmarks/bench_imagefolder.py --augment torchvision

(`--augment`: our path's style; official, the default, decodes every JPEG in full and
resizes its boxes bicubically in float32, as TensorFlow; torchvision uses PIL's bilinear
resize after a reduced decode where the boxes allow.)

and prints markdown table rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_folder(root: Path, images: int, classes: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for k in range(images):
        folder = root / "train" / f"c{k % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        long = int(rng.integers(300, 501))
        w, h = (long, long * 3 // 4) if k % 2 == 0 else (long * 3 // 4, long)
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        noise = rng.normal(0, 12, pixels.shape)
        photo = np.clip(pixels + noise, 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(folder / f"{k}.jpg", quality=90)
    for c in range(classes):  # a val/ split with the same classes (the loader checks it)
        (root / "val" / f"c{c}").mkdir(parents=True, exist_ok=True)
        src = next((root / "train" / f"c{c}").iterdir())
        (root / "val" / f"c{c}" / src.name).write_bytes(src.read_bytes())


class TwoViews:
    """The peers' SimCLR wrapper: the same transform twice on one decoded image."""

    def __init__(self, transform: object) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)  # type: ignore[operator]


def peer_views_per_second(
    root: Path, size: int, batch: int, workers: int, epochs: int, colour: bool = True
) -> float:
    from torchvision import datasets, transforms

    s = 1.0
    jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    colour_ops = [transforms.RandomApply([jitter], p=0.8), transforms.RandomGrayscale(p=0.2)]
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            *(colour_ops if colour else []),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=TwoViews(transform))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
    )
    for _ in loader:  # warm-up epoch: worker start, page cache
        pass
    views, start = 0, time.perf_counter()
    for _ in range(epochs):
        for (v1, v2), _labels in loader:
            views += v1.shape[0] + v2.shape[0]
    return views / (time.perf_counter() - start)


def our_views_per_second(
    root: Path,
    size: int,
    batch: int,
    workers: int,
    epochs: int,
    device: str,
    cache: bool,
    colour: bool = True,
    augment: str = "official",
) -> float:
    from scaling.train.augment import CropFlipAugment, SimCLRAugment
    from scaling.train.readers import load_dataset
    from scaling.train.views import train_views

    data = load_dataset(
        "imagefolder",
        root=root,
        image_size=size,
        workers=workers,
        max_cache_bytes=1 << 40 if cache else 0,
    )
    aug = (
        SimCLRAugment(size, color_strength=1.0, blur=False, style=augment)
        if colour
        else CropFlipAugment(size, style=augment)
    )
    gen = torch.Generator(device=device).manual_seed(0)

    def epoch(e: int) -> int:
        n = 0
        for step in train_views(
            data,
            aug,
            gen,
            batch_size=batch,
            seed=0,
            epoch=e,
            rows=slice(0, batch),
            views=2,
            device=device,
        ):
            n += sum(v.shape[0] for v in step.views)
        if device == "cuda":
            torch.cuda.synchronize()
        return n

    epoch(0)  # warm-up
    views, start = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        views += epoch(e)
    return views / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="images per step (2 views each)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--augment", choices=("official", "torchvision"), default="official")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # the same cores for both (DataLoader workers inherit)
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    torch.set_num_threads(args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.images)
        kw = {"size": args.size, "batch": args.batch, "workers": args.cores, "epochs": args.epochs}
        ours_kw = {**kw, "device": args.device, "augment": args.augment}
        paths = {
            "peer": lambda: peer_views_per_second(root, **kw),
            "ours": lambda: our_views_per_second(root, **ours_kw, cache=False),
            "cached": lambda: our_views_per_second(root, **ours_kw, cache=True),
            "peer_crop": lambda: peer_views_per_second(root, **kw, colour=False),
            "ours_crop": lambda: our_views_per_second(root, **ours_kw, cache=False, colour=False),
        }
        best = dict.fromkeys(paths, 0.0)
        for _ in range(args.repeats):  # interleaved, best of each: a shared machine is noisy
            for name, fn in paths.items():
                best[name] = max(best[name], fn())
        peer, ours, cached = best["peer"], best["ours"], best["cached"]
        peer_crop, ours_crop = best["peer_crop"], best["ours_crop"]
    machine = f"{platform.machine()}, {args.cores} cores, torch {torch.__version__}, {args.device}"
    print(
        f"machine: {machine}; {args.images} JPEGs 300-500 px, {args.size} px, "
        f"batch {args.batch} images x 2 views, ours with augment: {args.augment}"
    )
    print("| path | views/s | vs peer |\n| --- | --- | --- |")
    print(
        f"| torchvision ImageFolder + DataLoader ({args.cores} workers), per view | "
        f"{peer:,.0f} | 1.00x |"
    )
    print(f"| ours, decoded from the files each epoch | {ours:,.0f} | {ours / peer:.2f}x |")
    print(f"| ours, from the files' bytes in memory | {cached:,.0f} | {cached / peer:.2f}x |")
    print(f"| crop + flip only (no colour): peer | {peer_crop:,.0f} | 1.00x |")
    print(
        f"| crop + flip only (no colour): ours, from the files | {ours_crop:,.0f} | "
        f"{ours_crop / peer_crop:.2f}x |"
    )


if __name__ == "__main__":
    main()
