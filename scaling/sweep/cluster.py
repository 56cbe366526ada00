"""Cluster profiles: where and how runs execute (never part of a run's identity)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from scaling.errors import SpecError
from scaling.sweep.config import StrictModel, apply_overrides, read_yaml, validate

DEFAULT_UTILIZATION = 0.35  # typical model FLOP utilisation of ResNet training on GPUs


class AcceleratorConfig(StrictModel):
    """The accelerator of one run's device; null values are auto-detected locally."""

    name: str | None = None
    memory_gb: PositiveFloat | None = None
    peak_tflops: PositiveFloat | None = None
    utilization: float = Field(DEFAULT_UTILIZATION, gt=0.0, le=1.0)


class ClusterTracking(StrictModel):
    uri: str | None = None  # overrides the sweep's tracking URI (e.g. an mlflow server)


#: What Slurm accepts in the fields that become `#SBATCH --key=value` lines: names
#: (partitions as a comma-separated list), feature expressions (constraint) and host
#: lists (exclude). Anything else, above all a newline, would end the line and turn the
#: rest into shell commands before the script's own --time and --signal lines.
_NAME = r"[A-Za-z0-9_.+-]+"
SLURM_FIELDS = {
    "partition": (
        re.compile(rf"{_NAME}(,{_NAME})*"),
        "names of letters, digits, _ . + -, comma-separated",
    ),
    "account": (re.compile(_NAME), "letters, digits and _ . + -"),
    "qos": (
        re.compile(rf"{_NAME}(,{_NAME})*"),
        "names of letters, digits, _ . + -, comma-separated",
    ),
    "constraint": (
        re.compile(r"[A-Za-z0-9_.+\-&|,*:!\[\]()]+"),
        "features of letters, digits and _ . + - joined by & | , with [ ] ( ) * : !",
    ),
    "exclude": (
        re.compile(r"[A-Za-z0-9_.\-,\[\]]+"),
        "a host list: host names, [ ] ranges, commas",
    ),
}


def control_characters(value: Any) -> bool:
    """Whether a value (a string, or the strings in a list or mapping) holds a control
    character (newline, carriage return, NUL, ...)."""
    if isinstance(value, str):
        return any(ord(c) < 32 or ord(c) == 127 for c in value)
    if isinstance(value, dict):
        return any(control_characters(k) or control_characters(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(control_characters(v) for v in value)
    return False


class SlurmConfig(StrictModel):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: PositiveInt = 1440
    cpus_per_task: PositiveInt = 10
    mem_gb: PositiveFloat | None = None
    constraint: str | None = None
    exclude: str | None = None
    array_parallelism: PositiveInt = 64
    max_timeouts: NonNegativeInt = 3
    setup: list[str] = []
    additional: dict[str, Any] = {}

    @field_validator(*SLURM_FIELDS)
    @classmethod
    def _slurm_syntax(cls, value: str | None, info: Any) -> str | None:
        pattern, allowed = SLURM_FIELDS[info.field_name]
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"Slurm allows {allowed} here (got {value!r})")
        return value

    @field_validator("setup", "additional")
    @classmethod
    def _one_line_each(cls, value: Any) -> Any:
        if control_characters(value):
            raise ValueError(
                "no control characters (a newline would split an #SBATCH line or a setup "
                f"line in two; got {value!r})"
            )
        return value


class RayConfig(StrictModel):
    address: str = "local"  # local | auto | ray://host:port
    num_cpus: PositiveInt | None = None  # local Ray only
    cpus_per_trial: PositiveFloat = 1  # per training process (per rank of a multi-GPU run)
    accelerator_type: str | None = None
    max_failures: NonNegativeInt = 2
    temp_dir: str | None = None  # local Ray only; None: <workdir>/.ray (or a short /tmp dir)
    runtime_env: dict[str, Any] = {}  # joining a cluster: ray.init(runtime_env=...)


class ClusterProfile(StrictModel):
    backend: Literal["local", "slurm", "ray"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training precision: bf16 autocast (the loss stays fp32) or fp32 throughout.
    # auto: bf16 on CUDA, fp32 on the CPU. bf16 also runs on the CPU (to test the path).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    accelerator: AcceleratorConfig = AcceleratorConfig()
    gpus_per_node: PositiveInt = 1
    gpus_per_run: PositiveInt = 1
    max_parallel: PositiveInt | None = None  # None: one run per CPU core or per GPU set
    threads_per_run: PositiveInt | None = None  # CPU threads each run may use
    # Image folders: decode threads per rank; None: the CPUs the rank may use
    # (its Slurm cpus_per_task, or this machine's cores shared by the local ranks).
    data_workers: PositiveInt | None = None
    # The process group's collective timeout: long enough for rank 0 to write a
    # checkpoint or for the slowest rank's share of an evaluation.
    dist_timeout_min: PositiveFloat = 60.0
    workdir: str = "runs"
    # Local backend: one process per slot trains its runs one after another (torch is
    # imported once); false: a fresh `scaling train` process per run.
    persistent_workers: bool = True
    # A mid-epoch checkpoint at least this often, so that a kill loses minutes, not an
    # epoch (0: at epoch ends and on stop signals only).
    checkpoint_every_min: NonNegativeFloat = 10
    tracking: ClusterTracking = ClusterTracking()
    slurm: SlurmConfig | None = None
    ray: RayConfig | None = None

    @model_validator(mode="after")
    def _backend_section(self) -> ClusterProfile:
        if self.backend == "slurm" and self.slurm is None:
            object.__setattr__(self, "slurm", SlurmConfig())
        if self.backend == "ray" and self.ray is None:
            object.__setattr__(self, "ray", RayConfig())
        return self

    @property
    def nodes_per_run(self) -> int:
        return -(-self.gpus_per_run // self.gpus_per_node)


def load_profile(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ClusterProfile:
    """Read a cluster profile; None gives the embedded local default."""
    if path is None:
        default = validate(
            ClusterProfile, apply_overrides({}, overrides or [], "<local>"), "<local>"
        )
        check_workdir(default.workdir, "<local>")
        return default
    file = str(path)
    raw = apply_overrides(read_yaml(path), overrides or [], file)
    profile: ClusterProfile = validate(ClusterProfile, raw, file)
    check_workdir(profile.workdir, file)
    return profile


def check_workdir(workdir: str, file: str) -> None:
    """A workdir that exists must be a folder (the runs are written below it)."""
    path = Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError(
            f"{path} is a file; the workdir holds the run directories: give a folder",
            file=file,
            key="workdir",
        )


def train_env(profile: ClusterProfile) -> dict[str, str]:
    """What the profile tells every training process, through its environment (read by
    `scaling.train.trainer`; the same channel for the local, Slurm and Ray backends)."""
    env = {"SCALING_DIST_TIMEOUT_MIN": str(profile.dist_timeout_min)}
    if profile.data_workers is not None:
        env["SCALING_DATA_WORKERS"] = str(profile.data_workers)
    return env


def parallel_runs(profile: ClusterProfile, device: str) -> int:
    """Runs at once: the profile's max_parallel, else one per CPU core (one thread each:
    small CPU runs use cores better side by side than threaded) or one per GPU set."""
    if profile.max_parallel is not None:
        return profile.max_parallel
    if device == "cuda":
        import torch

        return max(1, torch.cuda.device_count() // profile.gpus_per_run)
    return max(1, os.cpu_count() or 1)


def threads_per_run(profile: ClusterProfile, parallel: int) -> int:
    """CPU threads each of `parallel` runs side by side uses: the profile's, else a share."""
    return profile.threads_per_run or max(1, (os.cpu_count() or 1) // parallel)


def total_memory_gb() -> float:
    """This machine's physical memory (the budget of a CPU run)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
