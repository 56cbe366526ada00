"""Validity checks on a planned run: layouts and schedules that change what it measures.

Each check is a one-line warning that says what to change. `scaling plan` prints them
under the table (with how many runs each applies to) and keeps them in the plan's
`warnings` column; they never stop a run.
"""

from __future__ import annotations

import functools
import math

from scaling.plan.layout import Layout, derive, test_size
from scaling.sweep.spec import RunSpec

#: warmup longer than this share of training leaves little of the cosine decay.
MAX_WARMUP_FRACTION = 0.25
#: per view, below this many images batch-norm statistics get noisy for the data set
#: (SimCLR's global BN normalises over thousands; ImageNet ResNets use 32-256 per GPU).
SMALL_BN_BATCH = {"imagefolder": 256, "stl10": 128}
SMALL_BN_BATCH_DEFAULT = 32


Z90 = 1.645  # two-sided 90%, the level of every interval the tool shows
#: a test set under this many images moves top-1 by over 0.1 point per image
SMALL_TEST_SET = 1000


@functools.lru_cache(maxsize=4096)  # 100,000 runs share a few hundred schedules
def _warmup_share(
    method: str, batch: int, epochs: int, warmup: float | None, n_train: int
) -> float:
    config = {"batch_size": batch, "epochs": epochs, "warmup_epochs": warmup, "lr_rule": "linear"}
    derived = derive(config, Layout.single(batch), n_train, method)
    return derived.warmup_steps / max(1, derived.total_steps)


def binomial_half_width(accuracy: float, n: int) -> float:
    """Half-width in points of the normal 90% binomial interval of a top-1 on n images."""
    return 100 * Z90 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)


def sweep_warnings(specs: list[RunSpec]) -> list[str]:
    """Checks on the sweep as a whole: seeds, and the test set's resolution."""
    out = []
    if specs and len({s.seed for s in specs}) == 1:
        out.append(
            "one seed: no gap will have an interval and no trend can be told from "
            "run-to-run noise; give the sweep seeds: [0, 1, 2]"
        )
    sizes = {s.dataset["name"]: test_size(s.dataset) for s in specs}
    for name, n in sizes.items():
        if n and n < SMALL_TEST_SET:
            half = binomial_half_width(0.95, n)
            out.append(
                f"the {name} test set has {n} images: one image is {100 / n:.2f} points "
                f"and a run's top-1 at 95% has a 90% binomial interval of +-{half:.1f} "
                "points; gaps smaller than that are ties"
            )
    return out


def plan_warnings(spec: RunSpec, layout: Layout, n_train: int | None) -> tuple[str, ...]:
    out = []
    if n_train:
        c = spec.config
        share = _warmup_share(
            spec.method, int(c["batch_size"]), int(c["epochs"]), c.get("warmup_epochs"), n_train
        )
        if share > MAX_WARMUP_FRACTION:
            out.append(
                f"warmup is {share:.0%} of training (over {MAX_WARMUP_FRACTION:.0%}): "
                f"lower methods.{spec.method}.warmup_epochs or train longer"
            )
    batch = int(spec.config["batch_size"])
    small = SMALL_BN_BATCH.get(spec.dataset["name"], SMALL_BN_BATCH_DEFAULT)
    if layout.bn_batch < batch and layout.bn_batch < small:
        out.append(
            f"batch norm sees {layout.bn_batch} images per view, not the batch of {batch} "
            f"(micro-batch {layout.micro_batch} x {layout.accum_steps} accumulation x "
            f"{layout.gpus} ranks): use an accelerator with more memory or more GPUs with SyncBN"
        )
    return tuple(out)
