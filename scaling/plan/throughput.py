"""Measured training throughput: what finished runs took, and what the plan predicts from it.

Every finished run records, in result.json and in a per-device folder of the cache
(`$SCALING_CACHE_DIR/throughput/<device>/<run_id>.json`), the seconds its training steps
took per image per device, with what decides that figure: the architecture, method,
micro-batch, accumulation, precision and the device's name. The plan then predicts each
run's training time from those measurements:

* measured: runs of the same architecture and layout on this device (median over them);
* scaled: otherwise, from the measured architectures of the same method and precision on
  this device, by training FLOPs per image: between two of them on the power law through
  them, beyond them from the two nearest (`_interpolate`: small networks do not reach
  the device's FLOP rate, so time is not proportional to FLOPs), or proportionally to
  the one measured architecture; only within SCALE_RANGE x of the measured networks'
  FLOPs per image and IMAGE_RANGE x of their image sizes, where that curve was checked
  against real runs (BENCHMARKS.md, "Plans beyond the measured networks");
* calibrated: further out, the FLOP model anchored on the nearest measured network: its
  measured time per image (every overhead the device has at that size) plus the FLOPs
  beyond it at the FLOP model's rate (peak x utilisation, or the best rate a measured
  network reached if that is higher), labelled with how far it extrapolates
  (`Prediction.beyond`: 70,000x the measured networks' FLOPs per image). Below the
  smallest measured network, that network's time (a smaller one is not slower);
* model: no measurement on this device, the FLOP model (peak x utilisation).

A run's own measurement never predicts that run, so `scaling status` and `report` can
compare a finished run's prediction with what it took.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

MEASURED, SCALED, CALIBRATED, MODEL = "measured", "scaled", "calibrated", "model"
COST_SOURCES = (MEASURED, SCALED, CALIBRATED, MODEL)
#: How far from the measured networks a prediction is `scaled` along their curve: within
#: this factor of their FLOPs per image (either way), and of their image sizes. Beyond,
#: the curve through small networks (whose FLOP rate still rises with size) is no longer
#: evidence: 70,000x beyond it predicted 302 device-hours where the FLOP model said 5,186.
SCALE_RANGE = 10.0
IMAGE_RANGE = 2.0


class Prediction(NamedTuple):
    """Seconds per image per device, what they rest on (measured | scaled | calibrated),
    and how many times beyond the measured networks' FLOPs per image (1: within them;
    for `calibrated`, also when only the image size is out of range)."""

    seconds: float
    source: str
    beyond: float = 1.0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_device_name(threads: int) -> str:
    """A CPU device as throughput depends on it: the model and the threads one run uses."""
    return f"{cpu_model()} ({threads} thread{'s' * (threads != 1)})"


def throughput_dir(device: str) -> Path:
    root = os.environ.get("SCALING_CACHE_DIR") or Path.home() / ".cache" / "scaling"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return Path(root) / "throughput" / slug


@dataclass(frozen=True)
class Measurement:
    """One finished run's training speed and what it depends on."""

    run_id: str
    device: str
    arch: tuple[Any, ...]  # costcache.arch_args: method, depth, width, stem, ..., classes
    micro_batch: int
    accum_steps: int
    gpus: int
    precision: str
    train_flops_per_image: float  # forward FLOPs x passes x views
    images: int
    train_time_s: float  # the training steps' wall time, every epoch (evaluation excluded)

    @property
    def seconds_per_image(self) -> float:
        """Per device: each of the `gpus` devices trains images / gpus of them."""
        return self.train_time_s * self.gpus / self.images

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "device": self.device,
            "arch": list(self.arch),
            "micro_batch": self.micro_batch,
            "accum_steps": self.accum_steps,
            "gpus": self.gpus,
            "precision": self.precision,
            "train_flops_per_image": self.train_flops_per_image,
            "images": self.images,
            "train_time_s": self.train_time_s,
            "images_per_s_per_device": 1.0 / self.seconds_per_image,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(
            str(d["run_id"]),
            str(d["device"]),
            tuple(d["arch"]),
            int(d["micro_batch"]),
            int(d["accum_steps"]),
            int(d["gpus"]),
            str(d["precision"]),
            float(d["train_flops_per_image"]),
            int(d["images"]),
            float(d["train_time_s"]),
        )


def record(m: Measurement) -> None:
    """Keep a finished run's measurement for later plans (write-then-rename; a cache that
    cannot be written is not used)."""
    from scaling.rundir import atomic_write_bytes

    if m.images <= 0 or m.train_time_s <= 0:
        return
    try:
        path = throughput_dir(m.device) / f"{m.run_id}.json"
        atomic_write_bytes(path, json.dumps(m.to_dict(), sort_keys=True).encode())
    except OSError as exc:
        log.debug("throughput measurement not written: %s", exc)


def same_device(planned: str, measured: str) -> bool:
    """Whether a profile's accelerator name names the device a run measured: every word of
    it is in the device's name ("A100-80GB" names "NVIDIA A100-SXM4-80GB")."""
    words = set(re.findall(r"[a-z0-9]+", planned.lower()))
    return bool(words) and words <= set(re.findall(r"[a-z0-9]+", measured.lower()))


def load(device: str) -> tuple[Measurement, ...]:
    """Every kept measurement on `device` (`same_device`), in a stable order; unreadable
    files are skipped."""
    root = throughput_dir(device).parent
    try:
        folders = sorted(f for f in os.listdir(root) if same_device(device, f))
    except OSError:
        return ()
    found = []
    for folder in folders:
        try:
            names = sorted(n for n in os.listdir(root / folder) if n.endswith(".json"))
        except OSError:
            continue
        for name in names:
            try:
                m = Measurement.from_dict(json.loads((root / folder / name).read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if same_device(device, m.device) and m.images > 0 and m.train_time_s > 0:
                found.append(m)
    return tuple(found)


class Calibration:
    """Predicts seconds per image per device for runs on one device from its measurements."""

    def __init__(self, measurements: Iterable[Measurement], flop_rate: float = 0.0) -> None:
        """`flop_rate`: the FLOP model's rate on this device (peak x utilisation, FLOP/s
        per device), which `calibrated` predictions charge the FLOPs beyond the
        measured networks at (0: the best rate a measured network reached)."""
        self.measurements = tuple(measurements)
        self.flop_rate = flop_rate
        self._run_ids = {m.run_id for m in self.measurements}
        self._cache: dict[tuple[Any, ...], Prediction | None] = {}

    def __bool__(self) -> bool:
        return bool(self.measurements)

    def seconds_per_image(
        self,
        run_id: str,
        arch: tuple[Any, ...],
        layout: tuple[int, int, int, str],
        train_flops_per_image: float,
    ) -> Prediction | None:
        """The prediction for a run (see Prediction), or None (no measurement to use).

        `layout`: (micro_batch, accum_steps, gpus, resolved precision)."""
        if not self.measurements:
            return None
        excluded = run_id if run_id in self._run_ids else None  # never its own figure
        key = (excluded, tuple(arch), layout, float(train_flops_per_image))
        if key not in self._cache:  # one search per architecture and layout
            self._cache[key] = self._predict(*key)
        return self._cache[key]

    def _predict(
        self,
        excluded: str | None,
        arch: tuple[Any, ...],
        layout: tuple[int, int, int, str],
        flops: float,
    ) -> Prediction | None:
        micro, accum, gpus, precision = layout
        pool = [m for m in self.measurements if m.run_id != excluded and m.precision == precision]
        same = [
            m
            for m in pool
            if m.arch == arch and (m.micro_batch, m.accum_steps, m.gpus) == (micro, accum, gpus)
        ]
        if same:
            return Prediction(statistics.median(m.seconds_per_image for m in same), MEASURED)
        method = [m for m in pool if m.arch[0] == arch[0]]
        same_micro = [m for m in method if (m.micro_batch, m.accum_steps) == (micro, accum)]
        used = same_micro or method
        points = _per_arch(used)
        if not points:
            return None
        beyond = max(flops / points[-1][0], points[0][0] / flops, 1.0)
        sizes = {float(m.arch[IMAGE_SIZE]) for m in used}
        size = float(arch[IMAGE_SIZE])
        size_off = min(max(size / s, s / size) for s in sizes)
        if beyond <= SCALE_RANGE and size_off <= IMAGE_RANGE:
            return Prediction(_interpolate(points, flops), SCALED)
        # Out of range: the nearest measured network's time, plus the FLOPs beyond it at
        # the device's FLOP rate (small networks never reach it: proportional scaling
        # from one overhead-bound network was off by 27x at 89x its FLOPs, BENCHMARKS.md).
        f, t = min(points, key=lambda p: abs(math.log(p[0] / flops)))
        rate = max(self.flop_rate, max(pf / pt for pf, pt in points))
        return Prediction(t + max(0.0, flops - f) / rate, CALIBRATED, beyond)


IMAGE_SIZE = 5  # the image size's place in an arch tuple (costcache.arch_args)


def _per_arch(ms: list[Measurement]) -> list[tuple[float, float]]:
    """(training FLOPs per image, median seconds per image) per measured architecture."""
    by_arch: dict[tuple[Any, ...], list[Measurement]] = {}
    for m in ms:
        by_arch.setdefault(m.arch, []).append(m)
    return sorted(
        (group[0].train_flops_per_image, statistics.median(m.seconds_per_image for m in group))
        for group in by_arch.values()
    )


def _interpolate(points: list[tuple[float, float]], flops: float) -> float:
    """Seconds per image at `flops` from measured (FLOPs, seconds) points of other networks.

    Between two measured networks: the power law through them (log-log interpolation).
    Beyond the measured range, from the two nearest: a line (a fixed cost per image plus
    a FLOP-proportional one) overestimates the time, because the FLOP rate a device
    reaches still rises with the network's size, and the power law underestimates it,
    because that rise saturates; the prediction is their geometric mean. One measured
    network: time proportional to FLOPs (a compute-bound device).
    """
    below = [p for p in points if p[0] <= flops]
    above = [p for p in points if p[0] > flops]
    if below and above:
        (f0, t0), (f1, t1) = below[-1], above[0]
        if f0 == flops:
            return t0
        return t0 * math.exp(math.log(t1 / t0) * math.log(flops / f0) / math.log(f1 / f0))
    near = below[-2:] if below else above[:2]
    if len(near) < 2 or near[0][0] == near[1][0]:
        f, t = near[-1] if below else near[0]
        return t * flops / f
    (f0, t0), (f1, t1) = near
    power = t0 * math.exp(math.log(t1 / t0) * math.log(flops / f0) / math.log(f1 / f0))
    line = t0 + (t1 - t0) / (f1 - f0) * (flops - f0)
    return math.sqrt(power * line) if line > 0 and t1 > t0 else power
