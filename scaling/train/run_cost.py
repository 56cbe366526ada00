"""What a finished run reports about its own cost: network size, training FLOPs spent,
and the measured speed of its training steps (which later plans predict from,
scaling.plan.throughput)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scaling.plan import throughput
from scaling.plan.layout import Layout
from scaling.rundir import METRICS, read_metrics
from scaling.sweep.methods import get_method
from scaling.sweep.spec import RunSpec


def measured_throughput(
    spec: RunSpec, layout: Layout, precision: str, dev: torch.device, run_dir: Path, images: int
) -> throughput.Measurement:
    """The training steps' speed: their wall time over every epoch (metrics.jsonl keeps one
    line per epoch, each attempt's share included; evaluation and the kNN monitor are not
    in it), on this device as the planner names it."""
    from scaling.plan.costcache import arch_args

    seconds = sum(float(r.get("seconds") or 0.0) for r in read_metrics(run_dir / METRICS))
    if dev.type == "cuda":
        device = torch.cuda.get_device_name(dev)
    else:
        device = throughput.cpu_device_name(torch.get_num_threads())
    per_image = cost_figures(spec, layout, 1)["train_flops"]
    return throughput.Measurement(
        spec.run_id,
        device,
        arch_args(spec),
        layout.micro_batch,
        layout.accum_steps,
        layout.gpus,
        precision,
        per_image,
        images,
        seconds,
    )


def cost_figures(spec: RunSpec, layout: Layout, images: int) -> dict[str, Any]:
    """Network size and the training compute actually spent, for result.json."""
    from scaling.plan import costs
    from scaling.plan.costcache import spec_cost

    info = get_method(spec.method)
    cost = spec_cost(spec)
    cached = info.cached_accumulation and layout.accum_steps > 1
    return {
        "encoder_params": cost.encoder_params,
        "flops_per_image": cost.flops_per_image,
        "train_flops": float(
            costs.train_flops(cost.flops_per_image, images, 1, info.views, cached)
        ),
    }
