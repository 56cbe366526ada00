"""Lazy re-exports for package `__init__` files (PEP 562).

A package names its public objects and the modules that define them; importing the
package imports none of them until one is used, so `import scaling` (and
`scaling --help`) never pays for torch, MLflow or Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `exports[name]` on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
