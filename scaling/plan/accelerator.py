"""The accelerator a plan sizes runs for: the profile's figures, or this machine's.

`resolve_accelerator` fills what a cluster profile leaves null from the machine the plan
is made on (a CUDA device's name and memory; the CPU's memory and matmul throughput,
measured once per machine and cached, scaling.plan.costcache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from scaling.errors import SpecError
from scaling.sweep.cluster import ClusterProfile

GB = 1e9


@dataclass(frozen=True)
class Accelerator:
    """The resolved device of one run: what the planner sizes micro-batches for."""

    device: str
    name: str
    memory_gb: float
    peak_tflops: float
    utilization: float


def resolve_accelerator(profile: ClusterProfile) -> Accelerator:
    """Fill the profile's null accelerator fields from this machine (local backend)."""
    acc = profile.accelerator
    device = profile.device
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    name, memory_gb, peak = acc.name, acc.memory_gb, acc.peak_tflops
    if device == "cuda" and _cuda_available() and (memory_gb is None or name is None):
        import torch

        props = torch.cuda.get_device_properties(0)
        name = name or props.name
        memory_gb = memory_gb or props.total_memory / GB
    if device == "cpu":
        from scaling.plan.costcache import machine_figure
        from scaling.plan.throughput import cpu_device_name
        from scaling.sweep.cluster import parallel_runs, threads_per_run, total_memory_gb

        parallel = parallel_runs(profile, device)
        name = name or cpu_device_name(threads_per_run(profile, parallel))
        memory_gb = memory_gb or total_memory_gb() / parallel
        # Measured once per machine (a re-measurement on every plan moved 10x with the load).
        peak = peak or machine_figure("cpu_matmul_tflops", _cpu_tflops) / parallel
    if memory_gb is None or peak is None:
        raise SpecError(
            "accelerator.memory_gb and accelerator.peak_tflops are needed for a "
            f"{device} device that this machine cannot measure; set them in the cluster profile",
            key="accelerator",
        )
    return Accelerator(device, name or device, float(memory_gb), float(peak), acc.utilization)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _cpu_tflops() -> float:
    """Measured fp32 matmul throughput of this CPU: the best of 5 ~0.05 s tries (the best
    is the least disturbed by other work on the machine)."""
    import torch

    a = torch.randn(512, 512)
    a @ a  # warm-up
    best, reps = 0.0, 4
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        best = max(best, 2 * 512**3 * reps / (time.perf_counter() - start) / 1e12)
    return best
