"""The planner: every run of a sweep with its layout, memory and cost, before launch.

One row per run. The cost of each distinct architecture is computed once on the meta
device (scaling.plan.costs) and shared by every run that uses it, so a 100,000-run grid
plans in about a second.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import SpecError
from scaling.plan import checks
from scaling.plan.accelerator import GB, Accelerator, resolve_accelerator
from scaling.plan.data_info import folder_problem, train_names
from scaling.plan.layout import (
    Derived,
    Layout,
    bn_batch_of,
    bn_grouping_of,
    derive,
    labelled_recipe,
    labelled_share,
    labelled_size,
    resolve_precision,
    test_size,
    train_size,
    validation_size,
)
from scaling.plan.throughput import MODEL, Calibration
from scaling.sweep.cluster import ClusterProfile
from scaling.sweep.labellist import listed_names, resolve_names
from scaling.sweep.methods import MONITOR_TEST, MONITOR_TRAIN, Evaluation, Labels, get_method
from scaling.sweep.spec import RunSpec, Sweep


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
    cost_source: str = "model"  # measured | scaled | calibrated | model (plan.throughput)
    # how many times beyond the measured networks' FLOPs per image (1: within them)
    cost_extrapolation: float = 1.0
    derived: Derived | None = None  # what the trainer will use (LR, steps, warmup)
    eval_memory_gb: float = math.nan  # evaluation's device peak (within peak_memory_gb)
    features_gb: float = 0.0  # its feature store on the host (memory-mapped in the run dir)

    def row(self) -> dict[str, Any]:
        """The run's row of the plan: its spec's columns (RunSpec.flat), then PLAN_COLUMNS."""
        row = self.spec.flat()
        row.update((name, value(self, {})) for name, value in PLAN_COLUMNS)
        return row


def _derived_field(name: str) -> Callable[[PlannedRun, dict[Any, Any]], Any]:
    """A value the trainer derives (plan.layout.derive): NaN without a layout."""
    return lambda run, _: getattr(run.derived, name) if run.derived else math.nan


def _layout_field(name: str) -> Callable[[PlannedRun, dict[Any, Any]], Any]:
    return lambda run, _: getattr(run.layout, name) if run.layout else 0


def _run_field(name: str) -> Callable[[PlannedRun, dict[Any, Any]], Any]:
    return lambda run, _: getattr(run, name)


def _labels(run: PlannedRun, _: dict[Any, Any]) -> str | None:
    """The labels a run uses: the fraction it trains on (a method trained on labels), or
    its evaluations, protocol and fraction each (one pretrained without them); None for
    one evaluation on every label (nothing to say)."""
    evaluations = run.spec.evaluations()
    if len(evaluations) == 1 and evaluations[0]["label_fraction"] == 1.0:
        return None
    if get_method(run.spec.method).labels is Labels.TRAINING:
        return _share(run.spec.label_fraction, run.spec.label_list)
    by_protocol: dict[str, list[str]] = {}
    for e in evaluations:
        share = _share(e["label_fraction"], e.get("label_list"))
        by_protocol.setdefault(str(e["protocol"]), []).append(share)
    return ", ".join(f"{p} {'/'.join(fs)}" for p, fs in by_protocol.items())


def _share(fraction: float, listed: Mapping[str, Any] | None) -> str:
    """A label fraction, and a list's size ("0.01 (128 listed)": the names it holds)."""
    return f"{fraction:g}" + (f" ({listed['images']} listed)" if listed else "")


#: The plan's columns after the spec's own: (name, value of a run given a shared cache),
#: the one list `PlannedRun.row` and `Plan.table` both follow.
PLAN_COLUMNS: tuple[tuple[str, Callable[[PlannedRun, dict[Any, Any]], Any]], ...] = (
    ("lr", _derived_field("lr")),
    ("steps", _derived_field("total_steps")),
    ("warmup", _derived_field("warmup_epochs")),
    ("warmup_steps", _derived_field("warmup_steps")),
    *(
        (name, _layout_field(name))
        for name in ("micro_batch", "accum_steps", "gpus", "nodes", "bn_batch")
    ),
    ("bn_grouping", lambda run, _: run.layout.bn_grouping if run.layout else ""),
    ("precision", lambda run, _: run.layout.precision if run.layout else ""),
    *(
        (name, _run_field(name))
        for name in (
            "encoder_params",
            "flops_per_image",
            "peak_memory_gb",
            "eval_memory_gb",
            "features_gb",
            "gpu_hours",
            "predicted_train_s",
            "cost_source",
            "cost_extrapolation",
            "feasible",
            "reason",
        )
    ),
    ("warnings", lambda run, _: "; ".join(run.warnings)),
    ("labels", _labels),
)


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
        for path in _config_keys(runs):
            columns["_".join(path)] = [_at(r.spec.config, path) for r in runs]
        if any(get_method(m).labels is Labels.TRAINING for m in {r.spec.method for r in runs}):
            columns["label_fraction"] = [
                r.spec.label_fraction
                if get_method(r.spec.method).labels is Labels.TRAINING
                else None
                for r in runs
            ]
        cache: dict[Any, Any] = {}
        for name, value in PLAN_COLUMNS:
            columns[name] = [value(r, cache) for r in runs]
        return pa.table({k: _arrow_column(v) for k, v in columns.items()})


def _config_keys(runs: tuple[PlannedRun, ...]) -> list[tuple[str, ...]]:
    """The path of every config field (nested ones: section, field, ...), in first-seen
    order: the columns `RunSpec.flat` names `section_field`."""
    keys: dict[tuple[str, ...], None] = {}

    def walk(config: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, value in config.items():
            if isinstance(value, Mapping):
                walk(value, (*path, key))
            else:
                keys[(*path, key)] = None

    for method in dict.fromkeys(r.spec.method for r in runs):
        walk(next(r.spec.config for r in runs if r.spec.method == method), ())
    return list(keys)


def _at(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        config = config.get(key) if isinstance(config, Mapping) else None  # type: ignore[assignment]
    return config


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    kinds = set(map(type, values)) - {type(None)}
    if kinds and kinds <= {int, float} and float in kinds:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if len(kinds) > 1:  # e.g. lr_rule: "sqrt" in one run, 0.5 in another
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.array(values)


def _check_folders(sweep: Sweep) -> None:
    """An image folder that is there but wrong (no class folders, an empty class, classes
    that differ between train/ and val/, an unreadable image) is a SpecError now, not a
    failed run later. One that is not there may be mounted on the cluster only: no error."""
    for root in sorted(
        {
            str(s.dataset.get("root"))
            for s in sweep.runs
            if s.dataset["name"] == "imagefolder" and s.dataset.get("root")
        }
    ):
        path = Path(root).expanduser()
        problem = folder_problem(path) if path.is_dir() else None
        if problem:
            raise SpecError(problem, file=sweep.path, key="dataset.root")
        if path.is_dir():  # every list of image names it is given names its images
            lists = {
                listed["sha256"]: listed
                for s in sweep.runs
                if str(s.dataset.get("root")) == root
                for listed in _lists(s)
            }
            names = train_names(path) if lists else []
            for listed in lists.values():
                resolve_names(listed_names(listed), names, listed, f"{path / 'train'}")


def _lists(spec: RunSpec) -> list[Mapping[str, Any]]:
    """The lists of image names a run's labels or evaluations are named by."""
    items = [spec.label_list, *(e.get("label_list") for e in spec.evaluations())]
    return [listed for listed in items if listed is not None]


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
        rate = acc.peak_tflops * 1e12 * acc.utilization  # the FLOP model's, per device
        calibration = throughput.Calibration(throughput.load(acc.name), rate)

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
            grouping = bn_grouping_of(spec.method, bn, batch)
            layout = Layout(layout_mb[0], layout_mb[1], gpus, nodes, precision, bn, grouping)
            # the BN batch and grouping are part of the result
            spec = spec.with_bn_batch(layout.bn_batch, layout.bn_grouping)
        n_train = train_size(spec.dataset, spec.method)
        reason = ""
        if layout is None:
            need = costs.peak_memory_bytes(cost, 1, live_views, precision=precision) / GB
            reason = f"one sample needs {need:.1f} GB, the accelerator has {acc.memory_gb:.1f} GB"
        elif n_train is not None and batch > n_train:
            reason = f"batch {batch} exceeds the {n_train} training images"
        elif layout.bn_batch < 2:
            reason = (
                f"batch norm would normalise over {layout.bn_batch} image per view (the "
                f"micro-batch that fits is {layout.micro_batch}); it needs at least 2"
            )
        micro = layout.micro_batch if layout else 1
        config = spec.config
        if n_train and get_method(spec.method).labels is Labels.TRAINING:
            # trained on a label fraction: its subset, as many steps as on every label
            listed = spec.label_list  # a list of names: as many as it names
            share = listed["images"] if listed else labelled_share(n_train, spec.label_fraction)
            config, repeats = labelled_recipe(config, n_train, share)
            n_train = share * repeats
        derived = derive(config, layout, n_train, spec.method) if layout and n_train else None
        hours, train_s, source, beyond = _time_cost(spec, derived, layout, cost, acc, calibration)
        train_peak = costs.peak_memory_bytes(cost, micro, live_views, precision=precision)
        eval_peak, store = _eval_memory(spec, cost, micro * live_views, memory_bytes, precision)
        planned.append(
            PlannedRun(
                spec=spec,
                layout=layout,
                encoder_params=cost.encoder_params,
                flops_per_image=cost.flops_per_image,
                peak_memory_gb=max(train_peak, eval_peak) / GB,
                gpu_hours=hours,
                predicted_train_s=train_s,
                cost_source=source,
                cost_extrapolation=beyond,
                feasible=not reason,
                reason=reason,
                warnings=checks.plan_warnings(spec, layout, n_train) if layout else (),
                derived=derived,
                eval_memory_gb=eval_peak / GB,
                features_gb=store / GB,
            )
        )
    costcache.save()
    return Plan(sweep, profile, acc, tuple(planned))


def _eval_memory(
    spec: RunSpec, cost: Any, batch: int, memory_bytes: int, precision: str
) -> tuple[int, int]:
    """(device peak, host feature store) of the run's evaluation (costs.eval_memory_bytes):
    a frozen encoder stores the features of the labelled training images and of the test
    set; a network scored by its own head stores nothing."""
    from scaling.plan import costs

    info = get_method(spec.method)
    rows = 0
    if info.evaluation is Evaluation.FROZEN_ENCODER:
        rows = (labelled_size(spec.dataset) or 0) + (test_size(spec.dataset) or 0)
    return costs.eval_memory_bytes(cost, batch, rows, memory_bytes, precision)


def _time_cost(
    spec: RunSpec,
    derived: Derived | None,
    layout: Layout | None,
    cost: Any,
    acc: Accelerator,
    calibration: Calibration,
) -> tuple[float, float, str, float]:
    """(device-hours, training wall seconds, cost source, times beyond the measured
    networks' FLOPs per image) of one run.

    The FLOP model: FLOPs / (peak x utilisation). From measurements: seconds per image
    per device x the images the steps see (`derived.total_steps` batches), and evaluation
    at the FLOP rate the measured training reached.
    """
    from scaling.plan import costcache, costs

    if derived is None or layout is None:
        return math.nan, math.nan, MODEL, 1.0
    info = get_method(spec.method)
    epochs = int(spec.config["epochs"])
    gpus = layout.gpus
    cached = info.cached_accumulation and layout.accum_steps > 1
    per_image = costs.train_flops(cost.flops_per_image, 1, 1, info.views, cached)
    seen = derived.total_steps * derived.effective_batch  # every image every step sees
    n_test = test_size(spec.dataset) or 0
    n_fit = train_size(spec.dataset) or 0  # the labelled images the run trains on
    images = (n_fit, validation_size(spec.dataset), n_test)
    eval_flops = sum(  # each of the run's evaluations (protocol x label fraction)
        costs.eval_flops(cost.flops_per_image, images, spec.method, item)
        for item in spec.evaluations()
    )
    every = int((spec.config.get("eval") or {}).get("knn_every") or 0)
    if every:  # the online kNN monitor: a forward of its subsets every `every` epochs
        subset = min(n_fit, MONITOR_TRAIN) + min(n_test, MONITOR_TEST)
        eval_flops += epochs // every * cost.flops_per_image * subset
    key = (layout.micro_batch, layout.accum_steps, gpus, layout.resolved_precision(acc.device))
    found = None
    if calibration:
        arch = costcache.arch_args(spec)
        found = calibration.seconds_per_image(spec.run_id, arch, key, per_image)
    if found is None:
        rate = acc.peak_tflops * 1e12 * acc.utilization  # FLOP/s per device
        train_device_s = per_image * seen / rate
        return (train_device_s + eval_flops / rate) / 3600, train_device_s / gpus, MODEL, 1.0
    seconds, source, beyond = found
    train_device_s = seconds * seen
    eval_device_s = eval_flops * seconds / per_image  # at the measured FLOP rate
    return (train_device_s + eval_device_s) / 3600, train_device_s / gpus, source, beyond


def totals(plan: Plan) -> dict[str, Any]:
    """Runs per method, GPU-hours, infeasible runs and why: the plan's last lines."""
    per_method: dict[str, int] = {}
    reasons: dict[str, int] = {}
    warnings: dict[str, int] = {}
    hours = 0.0
    # device-hours and runs per cost source, and how far the calibrated ones extrapolate
    by_source: dict[str, dict[str, float]] = {}
    for run in plan.runs:
        for warning in run.warnings:
            warnings[warning] = warnings.get(warning, 0) + 1
        per_method[run.spec.method] = per_method.get(run.spec.method, 0) + 1
        if run.feasible and not math.isnan(run.gpu_hours):
            hours += run.gpu_hours
            part = by_source.setdefault(
                run.cost_source, {"gpu_hours": 0.0, "runs": 0, "beyond": 1.0}
            )
            part["gpu_hours"] += run.gpu_hours
            part["runs"] += 1
            part["beyond"] = max(part["beyond"], run.cost_extrapolation)
        if not run.feasible:
            key = run.reason.split(",")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "runs": len(plan.runs),
        "per_method": per_method,
        "gpu_hours": hours,
        "by_source": by_source,
        "infeasible": sum(reasons.values()),
        "reasons": reasons,
        "warnings": warnings,
    }
