"""The plan stage: every run of a sweep with its layout and cost, before anything runs.

Holds the planner (`planner`: planned runs, their layout, memory, time and warnings, the
plan's columns), the accelerator a plan sizes runs for (`accelerator`), the layout
(micro-batch, accumulation, GPUs) and the quantities derived from it (`layout`:
effective batch, LR, steps, warmup), the LR rules and schedule (`schedule`), the cost
model on the meta device (`costs`), its on-disk cache (`costcache`), measured training
throughput (`throughput`), the plan's validity checks (`checks`) and the data-set facts
the planner needs (`data_info`). Imports `scaling.errors`, `scaling.rundir`,
`scaling.sweep` and `scaling.models`.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "Plan": "scaling.plan.planner",
    "PlannedRun": "scaling.plan.planner",
    "make_plan": "scaling.plan.planner",
    "totals": "scaling.plan.planner",
    "Layout": "scaling.plan.layout",
    "derive": "scaling.plan.layout",
    "lr_for_batch": "scaling.plan.schedule",
    "warmup_cosine": "scaling.plan.schedule",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
