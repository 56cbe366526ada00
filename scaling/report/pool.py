"""The runs a sweep could contain, for the advisor (scaling.report.advise) to choose from.

The pool is the sweep's own grid extended: the sizes between its widths (geometric
midpoints), the lengths between its epochs (when epochs is an axis) and MORE_SEEDS more
seeds (`extended`). Each run costs what the plan says (device-hours,
scaling.plan.planner.make_plan), never a separate estimate. `write_sweep` writes the pool
restricted to some runs as a sweep that `scaling submit` takes as it is (`--out next.yaml`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.plan.layout import train_size
from scaling.plan.planner import Plan, PlannedRun, make_plan
from scaling.report.questions import Run
from scaling.report.results import CONFIG_TYPES, NOT_RECIPE
from scaling.sweep.cluster import ClusterProfile
from scaling.sweep.config import apply_overrides, read_yaml
from scaling.sweep.spec import Sweep, load_sweep

#: Seeds beyond the sweep's that a candidate may use.
MORE_SEEDS = 2


@dataclass(frozen=True)
class Pool:
    """The runs the sweep could contain: `sweep` (its grid extended), their plan (aligned
    with sweep.runs), the overrides that extend it and which runs are in the grid asked."""

    sweep: Sweep
    plan: Plan
    overrides: tuple[str, ...]
    in_grid: frozenset[str]  # sweep-level run_ids of the sweep as written

    @functools.cached_property
    def _ids(self) -> dict[str, str]:
        pairs = zip(self.plan.runs, self.sweep.runs, strict=True)
        return {p.spec.run_id: s.run_id for p, s in pairs}

    def sweep_id(self, planned: PlannedRun) -> str:
        """The sweep-level run_id (the plan's adds the BN batch where the layout needs)."""
        return self._ids[planned.spec.run_id]

    @property
    def grid(self) -> frozenset[str]:
        """Plan-level run_ids of the sweep as written."""
        return frozenset(k for k, v in self._ids.items() if v in self.in_grid)


def extended(path: str | Path, overrides: Sequence[str], profile: ClusterProfile) -> Pool:
    """The sweep at `path` with its widths, lengths and seeds extended (see the module)."""
    base = load_sweep(path, overrides)
    raw = apply_overrides(read_yaml(path), list(overrides), str(path))
    more: list[str] = []
    model = raw.get("model") or {}
    widths = model.get("width")
    if isinstance(widths, list) and len(widths) > 1:
        w = sorted(float(v) for v in widths)
        mids = [float(f"{math.sqrt(a * b):.4g}") for a, b in zip(w, w[1:], strict=False)]
        more.append(f"model.width={json.dumps(sorted(set(w + mids)))}")
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    top = max(seeds)
    more.append(f"seeds={json.dumps(seeds + [top + i + 1 for i in range(MORE_SEEDS)])}")
    for method, section in (raw.get("methods") or {}).items():
        epochs = (section or {}).get("epochs")
        if isinstance(epochs, list) and len(epochs) > 1:
            e = sorted(int(v) for v in epochs)
            mids = {round(math.sqrt(a * b)) for a, b in zip(e, e[1:], strict=False)}
            more.append(f"methods.{method}.epochs={json.dumps(sorted(set(e) | mids))}")
    more = [m for m in more if m]
    sweep = load_sweep(path, [*overrides, *more])
    return Pool(
        sweep, make_plan(sweep, profile), tuple(more), frozenset(r.run_id for r in base.runs)
    )


def run_of(planned: PlannedRun) -> Run:
    """A planned run as the questions API's hypothetical run."""
    spec = planned.spec
    n = train_size(spec.dataset, spec.method)
    images = None if n is None else float(n * int(spec.config["epochs"]))
    recipe = tuple(
        (k, v)
        for k, v in sorted(spec.config.items())
        if k in CONFIG_TYPES
        and k not in NOT_RECIPE
        and not k.startswith("eval_")
        and isinstance(v, int | float | str)
    )
    return Run(spec.method, float(planned.encoder_params), images, 1, recipe)


def write_sweep(
    path: str | Path, overrides: Sequence[str], pool: Pool, keep: Sequence[PlannedRun], out: Path
) -> Path:
    """The sweep at `path` with the pool's extension and `only` the runs in `keep` (the
    finished ones and those advised): `scaling submit out` trains the advised ones,
    `scaling report out` reports them all (same name: same run folder, same experiment)."""
    import yaml

    from scaling.rundir import atomic_write_bytes

    raw = apply_overrides(read_yaml(path), [*overrides, *pool.overrides], str(path))
    raw["only"] = sorted({pool.sweep_id(p) for p in keep})
    text = f"# written by scaling advise from {path}\n" + yaml.safe_dump(raw, sort_keys=False)
    atomic_write_bytes(out, text.encode())
    return out


def collect(pool: Pool, workdir: str | Path) -> Any:
    """The pool's results table (run directories: what finished, what runs)."""
    from scaling.report.results import collect as collect_runs

    return collect_runs(pool.sweep, workdir, None, plan=pool.plan)


def largest(pool: Pool) -> float:
    """The biggest encoder the sweep as written trains (the default question's size)."""
    ids = [p for p in pool.plan.runs if pool.sweep_id(p) in pool.in_grid]
    return float(max(p.encoder_params for p in ids))
