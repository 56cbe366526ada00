"""The run stage: which runs to start, where, and how their state and results are kept.

Holds what to run and why not (`submission`), the plan for a command with `--only`
(`planning`), run states (`state`), locks (`locks`), the one reader of spec.json
(`runfile`), the one training entry every backend calls (`entry`), a run trained under
its lock and mirrored (`tracked`), MLflow lookups (`tracking`), the tracking mirrors
behind one protocol (`mirrors`: MLflow in `mirror`, W&B in `wandb_mirror`) pushed from a
background thread (`pusher`), what `scaling status` shows (`status`), and the backends
behind one protocol (`backends/`: local with its persistent `worker`, slurm, ray).
Imports every stage before it (sweep, models, plan, train), never `scaling.report` or
`scaling.cli`.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "run_tracked": "scaling.run.tracked",
    "build_plan": "scaling.run.planning",
    "run_state": "scaling.run.state",
    "run_lock": "scaling.run.locks",
    "get_backend": "scaling.run.backends.base",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
