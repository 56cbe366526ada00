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
from collections.abc import Callable, Iterator
from typing import Any

# One training run per process at a time, so one process-wide event is enough; the
# caller that sets it clears it before starting the next run.
EXTERNAL_STOP = threading.Event()


AGREE_EVERY = 8  # steps between the ranks' agreements on a stop or a checkpoint


def agree(flags: list[bool], step: int, device: Any, every: int = AGREE_EVERY) -> list[bool]:
    """Per flag: whether any rank raised it, the same answer on every rank.

    A signal (or a checkpoint's time) reaches the ranks of a job at slightly different
    steps; if rank 0 stopped at step k while rank 1 went on to k + 1, rank 1 would wait
    forever in a collective. So with several ranks the flags are combined (MAX) every
    `every` steps, at the same steps on every rank (all False in between); a single
    process answers at once.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(flags)
    if step % every:
        return [False] * len(flags)
    both = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return [bool(v) for v in both.tolist()]


class StopFlag:
    """SIGTERM/SIGUSR1 (or EXTERNAL_STOP) set a flag; the loop checkpoints after the
    current step and stops (the ranks agree on when through `agree`)."""

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


@contextlib.contextmanager
def stop_when(condition: Callable[[], bool], every: float, name: str) -> Iterator[None]:
    """While the block runs, a daemon thread checks `condition` every `every` seconds
    and, once it holds, stops the run as SIGTERM would (EXTERNAL_STOP): a cancel file
    appearing (Ray), the pipe to a dead parent closing (the local backend's worker)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every):
            if condition():
                EXTERNAL_STOP.set()
                return

    thread = threading.Thread(target=watch, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
