"""The plan: every run of a sweep with its layout, memory and cost, before launch.

One row per run. The cost of each distinct architecture is computed once on the meta
device (scaling.plan.costs) and shared by every run that uses it, so a 100,000-run grid
plans in about a second.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import SpecError
from scaling.plan import checks
from scaling.plan.data_info import folder_problem
from scaling.plan.layout import (
    Layout,
    bn_batch_of,
    derive,
    resolve_precision,
    test_size,
    train_size,
)
from scaling.plan.schedule import lr_for_batch
from scaling.plan.throughput import MODEL, Calibration
from scaling.sweep.cluster import ClusterProfile
from scaling.sweep.methods import MONITOR_TEST, MONITOR_TRAIN, get_method
from scaling.sweep.spec import RunSpec, Sweep

GB = 1e9


@dataclass(frozen=True)
class Accelerator:
    """The resolved device of one run: what the planner sizes micro-batches for."""

    device: str
    name: str
    memory_gb: float
    peak_tflops: float
    utilization: float


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    layout: Layout | None
    encoder_params: int
    flops_per_image: int
    peak_memory_gb: float
    gpu_hours: float
    feasible: bool
    reason: str
    warnings: tuple[str, ...] = ()
    predicted_train_s: float = math.nan  # wall time of the training steps (evaluation excluded)
    cost_source: str = "model"  # measured | scaled | model (scaling.plan.throughput)

    def row(self) -> dict[str, Any]:
        spec = self.spec
        n_train = train_size(spec.dataset, spec.method) or 0
        layout = self.layout
        lr = derive(spec.config, layout, n_train, spec.method).lr if layout else float("nan")
        row = spec.flat()
        row.update(
            lr=lr,
            micro_batch=layout.micro_batch if layout else 0,
            accum_steps=layout.accum_steps if layout else 0,
            gpus=layout.gpus if layout else 0,
            nodes=layout.nodes if layout else 0,
            bn_batch=layout.bn_batch if layout else 0,
            precision=layout.precision if layout else "",
            encoder_params=self.encoder_params,
            flops_per_image=self.flops_per_image,
            peak_memory_gb=self.peak_memory_gb,
            gpu_hours=self.gpu_hours,
            predicted_train_s=self.predicted_train_s,
            cost_source=self.cost_source,
            feasible=self.feasible,
            reason=self.reason,
            warnings="; ".join(self.warnings),
        )
        return row


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    profile: ClusterProfile
    accelerator: Accelerator
    runs: tuple[PlannedRun, ...]

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.runs]

    def table(self) -> Any:
        """The plan as a pyarrow Table (columns: spec fields, layout, cost).

        Built column by column, without a dict per row: 100,000 runs in well under a
        second. The columns equal those of `rows()` (a test holds them together).
        """
        import pyarrow as pa

        runs = self.runs
        columns: dict[str, list[Any]] = {
            "run_id": [r.spec.run_id for r in runs],
            "method": [r.spec.method for r in runs],
            "dataset": [r.spec.dataset["name"] for r in runs],
            "image_size": [r.spec.dataset["image_size"] for r in runs],
        }
        model_keys = dict.fromkeys(k for r in runs[:1] for k in r.spec.model)
        columns.update({k: [r.spec.model.get(k) for r in runs] for k in model_keys})
        columns["seed"] = [r.spec.seed for r in runs]
        for key, sub in _config_keys(runs):
            if sub is None:
                columns[key] = [r.spec.config.get(key) for r in runs]
            else:
                columns[f"{key}_{sub}"] = [(r.spec.config.get(key) or {}).get(sub) for r in runs]
        lrs: dict[tuple[Any, ...], float] = {}
        columns["lr"] = [_lr(r, lrs) for r in runs]
        for name in ("micro_batch", "accum_steps", "gpus", "nodes", "bn_batch"):
            columns[name] = [getattr(r.layout, name) if r.layout else 0 for r in runs]
        columns["precision"] = [r.layout.precision if r.layout else "" for r in runs]
        for name in (
            "encoder_params",
            "flops_per_image",
            "peak_memory_gb",
            "gpu_hours",
            "predicted_train_s",
            "cost_source",
            "feasible",
            "reason",
        ):
            columns[name] = [getattr(r, name) for r in runs]
        columns["warnings"] = ["; ".join(r.warnings) for r in runs]
        return pa.table({k: _arrow_column(v) for k, v in columns.items()})


def _config_keys(runs: tuple[PlannedRun, ...]) -> list[tuple[str, str | None]]:
    """(key, None) for scalar config fields, (key, sub) for nested ones, in first-seen order."""
    keys: dict[tuple[str, str | None], None] = {}
    for method in dict.fromkeys(r.spec.method for r in runs):
        config = next(r.spec.config for r in runs if r.spec.method == method)
        for key, value in config.items():
            if isinstance(value, dict):
                keys.update({(key, sub): None for sub in value})
            else:
                keys[(key, None)] = None
    return list(keys)


def _lr(run: PlannedRun, cache: dict[tuple[Any, ...], float]) -> float:
    if run.layout is None:
        return float("nan")
    config = run.spec.config
    key = (config["lr_rule"], config.get("base_lr"), config["batch_size"])
    if key not in cache:
        cache[key] = lr_for_batch(
            config["lr_rule"], int(config["batch_size"]), config.get("base_lr")
        )
    return cache[key]


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    kinds = set(map(type, values)) - {type(None)}
    if kinds and kinds <= {int, float} and float in kinds:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if len(kinds) > 1:  # e.g. lr_rule: "sqrt" in one run, 0.5 in another
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.array(values)


def resolve_accelerator(profile: ClusterProfile) -> Accelerator:
    """Fill the profile's null accelerator fields from this machine (local backend)."""
    acc = profile.accelerator
    device = profile.device
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    name, memory_gb, peak = acc.name, acc.memory_gb, acc.peak_tflops
    if device == "cuda" and _cuda_available() and (memory_gb is None or name is None):
        import torch

        props = torch.cuda.get_device_properties(0)
        name = name or props.name
        memory_gb = memory_gb or props.total_memory / GB
    if device == "cpu":
        from scaling.plan.costcache import machine_figure
        from scaling.plan.throughput import cpu_device_name
        from scaling.sweep.cluster import parallel_runs, threads_per_run, total_memory_gb

        parallel = parallel_runs(profile, device)
        name = name or cpu_device_name(threads_per_run(profile, parallel))
        memory_gb = memory_gb or total_memory_gb() / parallel
        # Measured once per machine (a re-measurement on every plan moved 10x with the load).
        peak = peak or machine_figure("cpu_matmul_tflops", _cpu_tflops) / parallel
    if memory_gb is None or peak is None:
        raise SpecError(
            "accelerator.memory_gb and accelerator.peak_tflops are needed for a "
            f"{device} device that this machine cannot measure; set them in the cluster profile",
            key="accelerator",
        )
    return Accelerator(device, name or device, float(memory_gb), float(peak), acc.utilization)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _cpu_tflops() -> float:
    """Measured fp32 matmul throughput of this CPU: the best of 5 ~0.05 s tries (the best
    is the least disturbed by other work on the machine)."""
    import torch

    a = torch.randn(512, 512)
    a @ a  # warm-up
    best, reps = 0.0, 4
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        best = max(best, 2 * 512**3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def _check_folders(sweep: Sweep) -> None:
    """An image folder that is there but wrong (no class folders, an empty class, classes
    that differ between train/ and val/, an unreadable image) is a SpecError now, not a
    failed run later. One that is not there may be mounted on the cluster only: no error."""
    for root in sorted({str(s.dataset.get("root")) for s in sweep.runs
                        if s.dataset["name"] == "imagefolder" and s.dataset.get("root")}):  # fmt: skip
        path = Path(root).expanduser()
        problem = folder_problem(path) if path.is_dir() else None
        if problem:
            raise SpecError(problem, file=sweep.path, key="dataset.root")


def make_plan(
    sweep: Sweep,
    profile: ClusterProfile,
    accelerator: Accelerator | None = None,
    calibration: Calibration | None = None,
) -> Plan:
    """Lay out and cost every run of `sweep` on `profile`'s hardware.

    `calibration`: measured throughput on this accelerator (default: the finished runs'
    measurements kept for its name, scaling.plan.throughput); without any, the FLOP model.
    """
    from scaling.plan import costcache, costs, throughput

    acc = accelerator or resolve_accelerator(profile)
    gpus, nodes = profile.gpus_per_run, profile.nodes_per_run
    memory_bytes = int(acc.memory_gb * GB)
    precision = resolve_precision(profile.precision, acc.device)
    if calibration is None:
        calibration = throughput.Calibration(throughput.load(acc.name))

    @functools.cache
    def fits(cost: Any, views: int) -> int:  # one search per architecture and view count
        return costs.max_micro_batch(cost, memory_bytes, views, precision=precision)

    _check_folders(sweep)
    planned = []
    for spec in sweep.runs:
        info = get_method(spec.method)
        batch = int(spec.config["batch_size"])
        if batch % gpus:
            raise SpecError(
                f"batch {batch} is not divisible by gpus_per_run={gpus} of the cluster profile; "
                "use a multiple of it",
                file=sweep.path,
                key=f"methods.{spec.method}.batch_size",
            )
        cost = costcache.spec_cost(spec)
        # Without accumulation both views of the rank's batch hold graphs at once. With
        # cached accumulation only one chunk of one view does, so chunks can be larger.
        live_views = info.views
        max_micro = fits(cost, live_views)
        if info.cached_accumulation and max_micro < batch // gpus:
            live_views = 1
            max_micro = fits(cost, live_views)
        layout_mb = costs.choose_layout(batch, gpus, max_micro)
        layout = None
        if layout_mb:
            bn = bn_batch_of(layout_mb[0], gpus, acc.device)  # no replace(): 100k runs
            layout = Layout(layout_mb[0], layout_mb[1], gpus, nodes, precision, bn)
            spec = spec.with_bn_batch(layout.bn_batch)  # the BN batch is part of the result
        n_train = train_size(spec.dataset, spec.method)
        reason = ""
        if layout is None:
            need = costs.peak_memory_bytes(cost, 1, live_views, precision=precision) / GB
            reason = f"one sample needs {need:.1f} GB, the accelerator has {acc.memory_gb:.1f} GB"
        elif n_train is not None and batch > n_train:
            reason = f"batch {batch} exceeds the {n_train} training images"
        micro = layout.micro_batch if layout else 1
        hours, train_s, source = _time_cost(spec, layout, cost, n_train, acc, calibration)
        planned.append(
            PlannedRun(
                spec=spec,
                layout=layout,
                encoder_params=cost.encoder_params,
                flops_per_image=cost.flops_per_image,
                peak_memory_gb=costs.peak_memory_bytes(cost, micro, live_views, precision=precision)
                / GB,
                gpu_hours=hours,
                predicted_train_s=train_s,
                cost_source=source,
                feasible=not reason,
                reason=reason,
                warnings=checks.plan_warnings(spec, layout, n_train) if layout else (),
            )
        )
    costcache.save()
    return Plan(sweep, profile, acc, tuple(planned))


def _time_cost(
    spec: RunSpec,
    layout: Layout | None,
    cost: Any,
    n_train: int | None,
    acc: Accelerator,
    calibration: Calibration,
) -> tuple[float, float, str]:
    """(device-hours, training wall seconds, cost source) of one run.

    The FLOP model: FLOPs / (peak x utilisation). From measurements: seconds per image
    per device x the images the steps see (drop_last), and evaluation at the FLOP rate
    the measured training reached.
    """
    from scaling.plan import costcache, costs

    if not n_train:
        return math.nan, math.nan, MODEL
    info = get_method(spec.method)
    epochs = int(spec.config["epochs"])
    gpus = layout.gpus if layout else 1
    cached = info.cached_accumulation and layout is not None and layout.accum_steps > 1
    per_image = costs.train_flops(cost.flops_per_image, 1, 1, info.views, cached)
    n_test = test_size(spec.dataset) or 0
    eval_flops = costs.eval_flops(cost.flops_per_image, n_train, n_test, spec.method,
                                  spec.config.get("eval"))  # fmt: skip
    every = int((spec.config.get("eval") or {}).get("knn_every") or 0)
    if every:  # the online kNN monitor: a forward of its subsets every `every` epochs
        subset = min(n_train, MONITOR_TRAIN) + min(n_test, MONITOR_TEST)
        eval_flops += epochs // every * cost.flops_per_image * subset
    found = None
    if calibration and layout is not None:
        key = (layout.micro_batch, layout.accum_steps, gpus, layout.resolved_precision(acc.device))
        found = calibration.seconds_per_image(
            spec.run_id, costcache.arch_args(spec), key, per_image
        )
    if found is None:
        rate = acc.peak_tflops * 1e12 * acc.utilization  # FLOP/s per device
        train_device_s = per_image * n_train * epochs / rate
        return (train_device_s + eval_flops / rate) / 3600, train_device_s / gpus, MODEL
    seconds, source = found
    batch = int(spec.config["batch_size"])
    train_device_s = seconds * max(1, n_train // batch) * batch * epochs
    eval_device_s = eval_flops * seconds / per_image  # at the measured FLOP rate
    return (train_device_s + eval_device_s) / 3600, train_device_s / gpus, source


def totals(plan: Plan) -> dict[str, Any]:
    """Runs per method, GPU-hours, infeasible runs and why: the plan's last lines."""
    per_method: dict[str, int] = {}
    reasons: dict[str, int] = {}
    warnings: dict[str, int] = {}
    hours = 0.0
    for run in plan.runs:
        for warning in run.warnings:
            warnings[warning] = warnings.get(warning, 0) + 1
        per_method[run.spec.method] = per_method.get(run.spec.method, 0) + 1
        if run.feasible and not math.isnan(run.gpu_hours):
            hours += run.gpu_hours
        if not run.feasible:
            key = run.reason.split(",")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "runs": len(plan.runs),
        "per_method": per_method,
        "gpu_hours": hours,
        "infeasible": sum(reasons.values()),
        "reasons": reasons,
        "warnings": warnings,
    }


def iter_feasible(plan: Plan) -> Iterable[PlannedRun]:
    return (r for r in plan.runs if r.feasible)
