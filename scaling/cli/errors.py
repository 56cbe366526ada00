"""The one place that turns known errors into one line and exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from scaling.errors import ExitCode, ScalingError

F = TypeVar("F", bound=Callable[..., Any])


def debug() -> bool:
    """SCALING_DEBUG=1 lets the full traceback through."""
    return os.environ.get("SCALING_DEBUG", "") not in ("", "0")


def guarded(fn: F) -> F:
    """Wrap a command: a ScalingError becomes `error: <message>` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScalingError as exc:
            if debug():
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(ExitCode.BAD_INPUT) from None
        except KeyboardInterrupt:
            if debug():
                raise
            print("interrupted", file=sys.stderr)
            raise SystemExit(ExitCode.INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]
