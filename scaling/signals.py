"""Stop requests: SIGTERM/SIGUSR1 set a flag the training loop checks after each step.

Signal handlers can only be installed on the main thread. Trainers that run elsewhere
(a Ray Tune trial or Ray Train worker runs the training function on a thread of its
actor) are stopped through `EXTERNAL_STOP` instead: setting it from any thread has the
same effect as SIGTERM (checkpoint after the current step, then Preempted).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

# One training run per process at a time, so one process-wide event is enough; the
# caller that sets it clears it before starting the next run.
EXTERNAL_STOP = threading.Event()


class StopFlag:
    """SIGTERM/SIGUSR1 (or EXTERNAL_STOP) set a flag; the loop checkpoints after the
    current step and stops."""

    def __init__(self) -> None:
        self._signalled = False

    @property
    def requested(self) -> bool:
        return self._signalled or EXTERNAL_STOP.is_set()

    def _handle(self, signum: int, frame: Any) -> None:
        self._signalled = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # no signal handlers off the main thread: EXTERNAL_STOP only
            return
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
