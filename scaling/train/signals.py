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

    def agreed(self, step: int, device: Any, every: int = 8) -> bool:
        """Whether to stop now, the same answer on every rank.

        A signal reaches the ranks of a job at slightly different steps; if rank 0
        stopped at step k while rank 1 went on to k + 1, rank 1 would wait forever in a
        collective. So with several ranks the flags are combined (MAX) every `every`
        steps, at the same steps on every rank; a single process answers at once.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        if step % every:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

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
