"""The one place that turns known errors into one line and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from scaling.errors import ScalingError


def debug() -> bool:
    return os.environ.get("SCALING_DEBUG", "") not in ("", "0")


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Call `fn`; a ScalingError becomes `error: <message>` on stderr and exit 2."""
    try:
        return fn()
    except ScalingError as exc:
        if debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug():
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
