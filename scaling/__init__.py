"""scaling: plan, run and analyse scaling studies of SimCLR against supervised training.

Public names are re-exported lazily so that `import scaling` (and `scaling --help`)
never pays for torch, MLflow or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ScalingError": "scaling.errors",
    "SpecError": "scaling.errors",
    "SubmissionError": "scaling.errors",
    "RunFailed": "scaling.errors",
    "RunSpec": "scaling.spec",
    "Sweep": "scaling.spec",
    "load_sweep": "scaling.spec",
    "ClusterProfile": "scaling.cluster",
    "load_profile": "scaling.cluster",
    "Layout": "scaling.layout",
    "derive": "scaling.layout",
    "make_plan": "scaling.plan",
    "METHODS": "scaling.methods",
    "nt_xent": "scaling.losses",
    "LARS": "scaling.optim",
    "param_groups": "scaling.optim",
    "cached_backward": "scaling.accumulate",
    "build_encoder": "scaling.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scaling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
