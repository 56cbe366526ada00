"""A cache on disk of architecture costs, so a new process plans as fast as a warm one.

`costs.arch_cost` traces each distinct architecture on the meta device (0.1-0.3 s each;
a sweep of 40 architectures costs seconds). The figures depend only on the arguments
and on the code that builds and counts the network, so they are kept in
`$SCALING_CACHE_DIR/arch_costs.json` (default ~/.cache/scaling), keyed by the
arguments and invalidated by a fingerprint of that code and of the torch and timm
versions. A cache that cannot be read or written is simply not used.

This machine's own figures (the CPU's matmul throughput, which a 0.1 s measurement on a
busy machine gets anywhere within 10x) are measured once and kept in `machine.json`,
keyed by host, CPU, core count and torch version, so two plans give the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_memory: dict[str, dict[str, int]] | None = None
_dirty = False


def cache_path() -> Path:
    root = os.environ.get("SCALING_CACHE_DIR") or Path.home() / ".cache" / "scaling"
    return Path(root) / "arch_costs.json"


def _fingerprint() -> str:
    """The code and library versions the figures come from (no import of either)."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for name in ("plan/costs.py", "models/resnet.py"):
        digest.update((package / name).read_bytes())
    digest.update(f"{version('torch')} {version('timm')}".encode())
    return digest.hexdigest()[:16]


def _load() -> dict[str, dict[str, int]]:
    global _memory
    if _memory is None:
        _memory = {}
        try:
            data = json.loads(cache_path().read_text())
            if data.get("fingerprint") == _fingerprint():
                _memory = dict(data["costs"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return _memory


def arch_cost(*args: Any) -> Any:
    """`costs.arch_cost(*args)`, from the disk cache when it has them."""
    global _dirty
    from scaling.plan import costs

    key = json.dumps(list(args))
    memory = _load()
    if key in memory:
        return costs.ArchCost(**memory[key])
    cost = costs.arch_cost(*args)
    memory[key] = asdict(cost)
    _dirty = True
    return cost


def save() -> None:
    """Write new entries (write-then-rename: a reader never sees half a file)."""
    global _dirty
    if not _dirty or _memory is None:
        return
    from scaling.rundir import atomic_write_bytes

    try:
        payload = {"fingerprint": _fingerprint(), "costs": _memory}
        atomic_write_bytes(cache_path(), json.dumps(payload, sort_keys=True).encode())
        _dirty = False
    except OSError as exc:
        log.debug("architecture cost cache not written: %s", exc)


def forget() -> None:
    """Save what is new, then drop what this process holds: the next lookup reads the
    file afresh, as a new process would (a persistent worker between two runs)."""
    global _memory
    from scaling.plan import costs

    save()
    _memory = None
    costs.arch_cost.cache_clear()


def machine_key() -> str:
    """What a machine figure belongs to: host, CPU model, cores, torch version."""
    import platform
    from importlib.metadata import version

    from scaling.plan.throughput import cpu_model

    return f"{platform.node()} | {cpu_model()} | {os.cpu_count()} cores | torch {version('torch')}"


def machine_figure(name: str, measure: Callable[[], float]) -> float:
    """`measure()` of this machine, measured once and then read from machine.json."""
    from scaling.rundir import atomic_write_bytes

    path = cache_path().with_name("machine.json")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    key = machine_key()
    figures = data.get(key) if isinstance(data.get(key), dict) else {}
    value = figures.get(name)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    value = float(measure())
    data[key] = {**figures, name: value}
    try:
        atomic_write_bytes(path, json.dumps(data, sort_keys=True, indent=1).encode())
    except OSError as exc:
        log.debug("machine figures not written: %s", exc)
    return value


def arch_args(spec: Any) -> tuple[Any, ...]:
    """The arguments of `arch_cost` for a run spec (what its network is)."""
    from scaling.plan.data_info import num_classes

    model = spec.model
    return (
        spec.method,
        model["depth"],
        model["width"],
        model["stem"],
        model["depth_multiplier"],
        spec.dataset["image_size"],
        int(spec.config.get("projection_dim", 128)),
        num_classes(spec.dataset),
    )


def spec_cost(spec: Any) -> Any:
    """The architecture cost of a run spec's network (disk-cached)."""
    return arch_cost(*arch_args(spec))
