"""The sweep stage: what a study asks for, read strictly from YAML.

Holds the sweep spec and the frozen, hashed run spec (`spec`), grid expansion (`grid`),
cluster profiles (`cluster`), the method registry (`methods`) and strict loading with
one-line errors (`config`). Imports only the shared base (`scaling.errors`, `scaling.enums`): no torch,
no other stage.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "Sweep": "scaling.sweep.spec",
    "RunSpec": "scaling.sweep.spec",
    "load_sweep": "scaling.sweep.spec",
    "ClusterProfile": "scaling.sweep.cluster",
    "load_profile": "scaling.sweep.cluster",
    "METHODS": "scaling.sweep.methods",
    "get_method": "scaling.sweep.methods",
    "reference_method": "scaling.sweep.methods",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
