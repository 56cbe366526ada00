"""The networks a run spec names: timm ResNets at any depth x width, and the heads
a method names on them (`resnet.HEADS`: SimCLR's projection head, a classifier).

Shared by the planner (which costs them on the meta device) and the trainer (which
trains them). Imports `scaling.errors` and `scaling.sweep` only.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "DEPTHS": "scaling.models.resnet",
    "build_encoder": "scaling.models.resnet",
    "build_network": "scaling.models.resnet",
    "ProjectionHead": "scaling.models.resnet",
    "SimCLRNet": "scaling.models.resnet",
    "SupervisedNet": "scaling.models.resnet",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
