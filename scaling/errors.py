"""The small exception hierarchy every layer raises and the CLI formats.

`ScalingError` and its children carry messages written for the user: the CLI prints
them as one line and exits with code 2 (set SCALING_DEBUG=1 for the traceback).
"""

from __future__ import annotations


class ScalingError(Exception):
    """Base of every error the user can act on."""


class SpecError(ScalingError):
    """A sweep spec, cluster profile or run spec is malformed.

    The message names the file, the key path and what is allowed.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class SubmissionError(ScalingError):
    """A backend could not submit, query or cancel runs."""


class RunFailed(ScalingError):
    """A run stopped for good; `kind` is one of diverged, oom, timeout, error."""

    KINDS = ("diverged", "oom", "timeout", "error")

    def __init__(self, message: str, *, kind: str = "error", step: int | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown RunFailed kind {kind!r}; allowed: {', '.join(self.KINDS)}")
        self.kind = kind
        self.step = step
        super().__init__(message)
