"""Numbers as the report writes them."""

from __future__ import annotations

import math


def human(n: float) -> str:
    """1234567 -> '1.23M' (parameters, FLOPs, images)."""
    if not math.isfinite(n):
        return "inf"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
