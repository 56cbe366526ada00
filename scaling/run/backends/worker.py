"""A persistent worker of the local backend: one process per slot, runs one after another.

`scaling worker` (started by scaling.run.backends.local, not by hand) imports torch and
timm once, as it starts (a fresh process per run paid about 3 s every time), then reads
one request per line on stdin, trains that run as `scaling train` would (the same run
lock, the same exit codes, its output appended to the run's train.log) and answers
one line, the exit code, on the stdout it was started with.

Between runs everything a run may leave behind that could change the next one is put
back as a fresh process has it (`Fresh`). Signals act as on `scaling train`: SIGTERM
while training checkpoints and answers ExitCode.PREEMPTED (143), and the worker waits
for the next run;
SIGTERM or SIGKILL at any other moment ends the worker, and the parent handles its run
as it handles a killed `scaling train`. End of stdin (the parent closed it, or died)
ends the worker between runs, and stops a run in training as SIGTERM does.

A worker never outlives its `submit`: it sits in a session of its own (Ctrl-C in the
terminal reaches `submit` only), so it arms the parent-death signal
(scaling.run.processes.die_with_parent): when `submit` dies, even by kill -9, the
worker gets SIGTERM, its run checkpoints after the current step and the worker exits;
a watch on stdin during training does the same should the signal not come (the pipe
closes with its parent). The next `submit` resumes the run; it never finds a second
trainer still holding the run's lock.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Worker:
    """The parent's end of one `scaling worker`: send it a run, then poll for its answer."""

    def __init__(self, env: dict[str, str]) -> None:
        # A session of its own, as a `scaling train` child: Ctrl-C in the terminal
        # reaches only `submit`, which then SIGTERMs the worker so that its run checkpoints.
        from scaling.run.processes import children_env

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scaling", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=children_env(env),
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        os.set_blocking(self._stdout.fileno(), False)
        self._answers = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fileno(self) -> int:
        """Readable when an answer arrives (or the worker dies): for select."""
        return self._stdout.fileno()

    def send(self, request: dict[str, Any]) -> bool:
        """Hand it a run; False when it is gone (its stdin is closed)."""
        try:
            self._stdin.write(json.dumps(request).encode() + b"\n")
            self._stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def exit_code(self) -> int | None:
        """The exit code of the run it was sent, None while it trains: its answer, or
        the worker's own exit status when it died first (-9 for a SIGKILL)."""
        if self.proc.poll() is None:
            return self._answer()
        answer = self._answer()  # one written just before it died
        return self.proc.returncode if answer is None else answer

    def _answer(self) -> int | None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fileno(), 1 << 16):
                self._answers += chunk
        if b"\n" not in self._answers:
            return None
        line, _, self._answers = self._answers.partition(b"\n")
        return int(json.loads(line)["code"])

    def close(self) -> None:
        """No more runs: it ends once the current one does."""
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._stdin.close()


def serve() -> None:
    """Import, then answer requests until stdin ends: {spec, run_dir, log, device,
    threads} in, {run_dir, code} out."""
    from scaling.run.processes import die_with_parent

    die_with_parent()  # SIGTERM when `submit` dies: the run checkpoints, the worker ends
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    _quiet()  # fds 1 and 2 belong to the runs; between them nothing is written
    try:  # at once, before the first request: the parent may still be planning
        fresh, broken = Fresh.capture(), ""
    except Exception:  # an import that fails: every run fails, with the traceback
        fresh, broken = None, traceback.format_exc()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        with output_to(Path(request["log"])):
            if fresh is None:
                print(broken, file=sys.stderr)
                code = 1
            else:
                fresh.restore()
                with _stop_when_stdin_closes():
                    code = train_one(request)
        try:
            replies.write(json.dumps({"run_dir": request["run_dir"], "code": code}) + "\n")
        except OSError:  # the parent is gone: nobody to answer, nothing more to train
            return


@contextlib.contextmanager
def _stop_when_stdin_closes() -> Iterator[None]:
    """While a run trains, a closed stdin (the parent died, or gave up on its runs) stops
    it as SIGTERM would: a checkpoint after the current step, then the answer PREEMPTED.
    The parent writes nothing while a run trains, so this never takes a request."""
    import select

    from scaling.train.signals import stop_when

    poll = select.poll()
    poll.register(sys.stdin.fileno(), select.POLLHUP | select.POLLERR)
    with stop_when(lambda: bool(poll.poll(0)), 0.5, "scaling-stdin-watch"):
        yield


def train_one(request: dict[str, Any]) -> int:
    """One run, as `scaling train SPEC --run-dir DIR` (without tracking) would train it;
    its exit code."""
    from scaling.errors import ExitCode, ScalingError
    from scaling.run.entry import train_entry

    try:
        ending = train_entry(
            Path(request["spec"]),
            Path(request["run_dir"]),
            None,
            device=request["device"],
            threads=request["threads"],
        )
    except ScalingError as exc:  # what `scaling train` prints as one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except Exception:
        traceback.print_exc()
        return ExitCode.FAILED
    if ending.message:
        print(ending.message, file=sys.stderr)
    return ending.code


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """fds 1 and 2 (Python's prints and the C libraries' alike) appended to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _quiet()


def _quiet() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


@dataclass
class Fresh:
    """The process-wide state a fresh `scaling train` starts its run with, captured
    once after the imports and put back before every later run."""

    environ: dict[str, str]
    torch_seed: int
    torch_rng: Any
    python_rng: Any
    numpy_rng: Any
    threads: int
    flags: dict[str, Any]

    @classmethod
    def capture(cls) -> Fresh:
        import numpy as np
        import torch

        import scaling.run.tracked  # noqa: F401  (what `scaling train` imports first)

        # What the imports made lives as long as the worker: out of the collector's
        # sight, a full collection between runs scans only what a run made (ms, not 0.35 s).
        gc.collect()
        gc.freeze()
        return cls(
            dict(os.environ),
            torch.initial_seed(),
            torch.get_rng_state(),
            random.getstate(),
            np.random.get_state(),
            torch.get_num_threads(),
            _flags(),
        )

    def restore(self) -> None:
        import numpy as np
        import torch

        from scaling.plan import costcache
        from scaling.train import distributed
        from scaling.train.signals import EXTERNAL_STOP

        distributed.cleanup()
        if "torch._dynamo" in sys.modules:  # compiled graphs of the last run's network
            torch._dynamo.reset()
        gc.collect()  # the last run's tensors, before the next allocates its own
        _reset_peak_rss()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        os.environ.clear()
        os.environ.update(self.environ)
        torch.manual_seed(self.torch_seed)  # every CUDA generator as a fresh process has it
        torch.set_rng_state(self.torch_rng)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_num_threads(self.threads)
        _set_flags(self.flags)
        torch.set_grad_enabled(True)
        EXTERNAL_STOP.clear()
        costcache.forget()  # read afresh from disk, with what other processes added


def _reset_peak_rss() -> None:
    """Free memory back to the system and restart the peak resident size (what a CPU
    run reports as its peak memory, ru_maxrss) from what is resident now (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _flags() -> dict[str, Any]:
    import torch

    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def _set_flags(flags: dict[str, Any]) -> None:
    import torch

    torch.use_deterministic_algorithms(flags["deterministic"])
    torch.set_float32_matmul_precision(flags["matmul_precision"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
