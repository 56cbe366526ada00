"""The run directory: `<workdir>/<sweep>/<run_id>/`, the local truth of one run.

Written before MLflow: spec.json (the resolved spec, layout and code version),
metrics.jsonl (one JSON line per epoch), checkpoints/, result.json (written last,
atomically: its presence means the run finished), failure.json (why it stopped),
train.log. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SPEC, METRICS, RESULT, FAILURE, LOG, CHECKPOINTS = (
    "spec.json",
    "metrics.jsonl",
    "result.json",
    "failure.json",
    "train.log",
    "checkpoints",
)

#: result.json's final numbers, which every tracking mirror logs
FINAL_METRICS = (
    "top1",
    "top5",
    "knn_top1",
    "val_top1",
    "wall_time_s",
    "images_seen",
    "train_flops",
)


def run_dir_of(workdir: str | Path, sweep: str, run_id: str) -> Path:
    return Path(workdir) / sweep / run_id


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: as open() would, the umask rules
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_bytes(
        path, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode()
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one line; a line cut by a kill is skipped by `read_jsonl`."""
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(record, dict):
            yield record


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """metrics.jsonl's epoch records: lines whose `epoch` is a positive integer (any
    other line, hand-edited or from a broken tool, is skipped, never a traceback)."""
    for record in read_jsonl(path):
        epoch = record.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0:
            yield record


def log_tail(path: Path, lines: int = 5) -> list[str]:
    """The last `lines` non-empty lines of a log ([] when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """result.json when it is a finished run's (a numeric top-1), else None: any other
    dict there (hand-written, from a broken tool) does not make the run finished."""
    result = read_json(run_dir / RESULT)
    if result is None:
        return None
    top1 = result.get("top1")
    return result if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the lines of epochs 1..epochs_done (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    write_metrics(path, [r for r in read_metrics(path) if r["epoch"] <= epochs_done])


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl as these records, one line each, written whole (atomically)."""
    atomic_write_bytes(
        path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    )


def metrics_gap(records: list[dict[str, Any]], epochs: int) -> list[int]:
    """The epochs in 1..`epochs` that metrics.jsonl lacks (cut, or lines lost)."""
    have = {r.get("epoch") for r in records}
    return [e for e in range(1, epochs + 1) if e not in have]


def git_version(start: Path | None = None) -> dict[str, Any]:
    """The code's git commit and whether the tree was dirty (None outside a checkout)."""
    cwd = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def _umask() -> int:
    """The process's umask: /proc's (Linux), else read once by setting it (not thread-safe,
    so not on every write)."""
    global _UMASK
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
        return _UMASK


_UMASK: int | None = None
