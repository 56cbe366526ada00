"""Records TensorFlow's own outputs for the official SimCLR augmentation (tests/tf_reference.npz).

The official code (google-research/simclr, tf2/data_util.py) crops with
`tf.image.sample_distorted_bounding_box` and `tf.image.resize(..., BICUBIC)`, and distorts
colour with brightness (a factor), `tf.image.adjust_contrast`, `adjust_saturation` and
`adjust_hue`, clipping to [0, 1] after each, then `rgb_to_grayscale`. This script calls
exactly those TensorFlow ops and stores what they return, so tests/test_augment_official.py
can hold the batched PyTorch implementation (scaling.train.official) against them:

* crop boxes: 20,000 draws of `sample_distorted_bounding_box` with the official arguments
  (`crop_and_resize`: min_object_covered 0.1, aspect (3/4, 4/3), 100 attempts) on a
  375x500 photograph, a 32x32 and an 8x8 image (area from 0.08; 0.25 on 8x8, as the
  quickstart), and the op's own seeds (tf.random.set_seed);
* each colour op on fixed images at fixed factors, the bicubic resize of fixed boxes to
  two sizes, and
  the whole `color_jitter_rand` sequence for fixed orders and factors.

TensorFlow is never a dependency of the project: run this in a separate environment,

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu numpy
    /tmp/tf/bin/python tests/tf_reference.py      # writes tests/tf_reference.npz

and commit the file it writes (about 300 KB).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("tf_reference.npz")
DRAWS = 20_000
#: (height, width, smallest area) of the crop-box recordings
CROP_CASES = ((375, 500, 0.08), (32, 32, 0.08), (8, 8, 0.25))
CONTRAST = (0.2, 0.6, 1.0, 1.5, 1.8)
SATURATION = (0.0, 0.2, 0.7, 1.5, 1.8, 3.0)
HUE = (-0.5, -0.2, -0.05, 0.1, 0.2, 0.45)
#: (top, left, height, width) boxes on a 24x20 image, resized to 16x16 and to 15x15
RESIZE_BOXES = ((0, 0, 24, 20), (3, 2, 4, 5), (5, 1, 19, 18), (0, 4, 16, 16), (10, 7, 9, 3))
RESIZE_SIZES = (16, 15)


def images(seed: int = 0) -> np.ndarray:
    """(6, 10, 12, 3) float32 in [0, 1]: random, grey, saturated, two-tone, dark, and an
    image whose channel means are (0.70, 0.40, 0.30) (the issue's contrast example)."""
    rng = np.random.default_rng(seed)
    x = rng.random((6, 10, 12, 3), dtype=np.float32)
    x[1] = 0.5
    x[2] = np.array([1.0, 0.0, 0.1], dtype=np.float32)
    x[3, :5] = np.array([0.9, 0.2, 0.4], dtype=np.float32)
    x[3, 5:] = np.array([0.1, 0.8, 0.5], dtype=np.float32)
    x[4] *= 0.05
    means = np.array([0.70, 0.40, 0.30], dtype=np.float32)
    x[5] = np.clip(means + 0.25 * (rng.random((10, 12, 3), dtype=np.float32) - 0.5), 0, 1)
    x[5] += means - x[5].mean(axis=(0, 1))
    return x


def crop_boxes(tf: object, height: int, width: int, area: float, seed: int) -> np.ndarray:
    """(DRAWS, 4) boxes (top, left, height, width), as the official crop draws them."""
    tf.random.set_seed(seed)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    out = np.empty((DRAWS, 4), dtype=np.uint8 if max(height, width) < 256 else np.int16)
    for i in range(DRAWS):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.constant([height, width, 3]),
            bounding_boxes=bbox,
            min_object_covered=0.1,
            aspect_ratio_range=(3.0 / 4, 4.0 / 3.0),
            area_range=(area, 1.0),
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        out[i] = [begin[0], begin[1], size[0], size[1]]
    return out


def jitter(tf: object, image: object, order: list[int], factors: list[float]) -> object:
    """color_jitter_rand with the draws given: brightness (simclrv2: a factor), contrast,
    saturation, hue in `order`, clipped to [0, 1] after each (tf2/data_util.py)."""
    ops = (
        lambda x, f: x * f,
        tf.image.adjust_contrast,
        tf.image.adjust_saturation,
        tf.image.adjust_hue,
    )
    for op in order:
        image = tf.clip_by_value(ops[op](image, factors[op]), 0.0, 1.0)
    return image


def main() -> None:
    import tensorflow as tf

    x = images()
    t = tf.constant(x)
    rec: dict[str, np.ndarray] = {"images": x}
    for h, w, area in CROP_CASES:
        rec[f"boxes_{h}x{w}_{area}"] = crop_boxes(tf, h, w, area, seed=h + w)
    rec["contrast"] = np.stack([tf.image.adjust_contrast(t, f).numpy() for f in CONTRAST])
    rec["saturation"] = np.stack([tf.image.adjust_saturation(t, f).numpy() for f in SATURATION])
    rec["hue"] = np.stack([tf.image.adjust_hue(t, d).numpy() for d in HUE])
    rec["grayscale"] = tf.image.rgb_to_grayscale(t).numpy()
    # 8-bit levels, so that a lossless PNG of them decodes to exactly these inputs
    big = (np.random.default_rng(1).integers(0, 256, (3, 24, 20, 3)) / 255).astype(np.float32)
    rec["resize_images"] = big
    for size in RESIZE_SIZES:  # 16: taps at multiples of 1/32; 15: the table's rounding shows
        rec[f"resize_{size}"] = np.stack(
            [
                tf.image.resize(
                    big[:, top : top + h, left : left + w], [size, size], method="bicubic"
                ).numpy()
                for top, left, h, w in RESIZE_BOXES
            ]
        )
    rng = np.random.default_rng(2)
    orders = np.stack([rng.permutation(4) for _ in range(len(x))])
    factors = np.stack(
        [np.r_[rng.uniform(0.2, 1.8, 3), rng.uniform(-0.2, 0.2)] for _ in range(len(x))]
    ).astype(np.float32)
    rec["jitter_orders"], rec["jitter_factors"] = orders, factors
    rec["jitter"] = np.stack(
        [jitter(tf, t[i], orders[i].tolist(), factors[i].tolist()).numpy() for i in range(len(x))]
    )
    meta = {
        "tensorflow": tf.__version__,
        "crop_cases": CROP_CASES,
        "contrast": CONTRAST,
        "saturation": SATURATION,
        "hue": HUE,
        "resize_boxes": RESIZE_BOXES,
        "resize_sizes": RESIZE_SIZES,
        "draws": DRAWS,
    }
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **rec)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB), TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
