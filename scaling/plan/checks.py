"""Validity checks on a planned run: layouts and schedules that change what it measures.

Each check is a one-line warning that says what to change. `scaling plan` prints them
under the table (with how many runs each applies to) and keeps them in the plan's
`warnings` column; they never stop a run.
"""

from __future__ import annotations

from scaling.plan.layout import Layout, derive
from scaling.sweep.spec import RunSpec

#: warmup longer than this share of training leaves little of the cosine decay.
MAX_WARMUP_FRACTION = 0.25
#: per view, below this many images batch-norm statistics get noisy for the data set
#: (SimCLR's global BN normalises over thousands; ImageNet ResNets use 32-256 per GPU).
SMALL_BN_BATCH = {"imagefolder": 256, "stl10": 128}
SMALL_BN_BATCH_DEFAULT = 32


def plan_warnings(spec: RunSpec, layout: Layout, n_train: int | None) -> tuple[str, ...]:
    out = []
    if n_train:
        derived = derive(spec.config, layout, n_train, spec.method)
        share = derived.warmup_steps / max(1, derived.total_steps)
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
