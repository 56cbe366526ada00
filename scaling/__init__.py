"""scaling: plan, run and analyse scaling studies of SimCLR against supervised training.

The package is grouped by pipeline stage, and imports point one way along it:

    errors, enums,   shared by every stage (the exception hierarchy and exit codes; the
    rundir           enum base; the run directory, the files through which the stages
                     hand a run to each other)
    sweep/           YAML specs and cluster profiles, the method registry, strict loading
    models/          the networks a run spec names (encoders, heads)
    plan/            grid expansion, the cost model and its cache, layouts, LR schedules
    train/           data, augmentation, losses, optimizer, gradient caching, the trainer
    run/             what to run, run states and locks, the training entry, tracking
                     mirrors, status, backends/
    report/          results, gaps, fits, figures, the HTML report
    cli/             thin commands; nothing imports it

A stage imports only the stages above it in this list (tests/test_layout.py checks).
Public names are re-exported lazily so that `import scaling` (and `scaling --help`)
never pays for torch, MLflow or Ray.
"""

from __future__ import annotations

from scaling._exports import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "ScalingError": "scaling.errors",
    "SpecError": "scaling.errors",
    "SubmissionError": "scaling.errors",
    "RunFailed": "scaling.errors",
    "RunSpec": "scaling.sweep.spec",
    "Sweep": "scaling.sweep.spec",
    "load_sweep": "scaling.sweep.spec",
    "ClusterProfile": "scaling.sweep.cluster",
    "load_profile": "scaling.sweep.cluster",
    "Layout": "scaling.plan.layout",
    "derive": "scaling.plan.layout",
    "make_plan": "scaling.plan.planner",
    "METHODS": "scaling.sweep.methods",
    "nt_xent": "scaling.train.losses",
    "LARS": "scaling.train.optim",
    "param_groups": "scaling.train.optim",
    "cached_backward": "scaling.train.accumulate",
    "build_encoder": "scaling.models.resnet",
}

__all__ = ["__version__", *_EXPORTS]
__getattr__ = lazy(__name__, _EXPORTS)
