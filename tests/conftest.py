from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The session-scoped `slurm_cluster` fixture (a real one-machine Slurm with accounting).
pytest_plugins = ["tests.slurm_cluster"]

# Keep tests on the CPU and small thread counts: two cores are shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The planner's architecture-cost cache goes to a folder of this session, not ~/.cache.
os.environ.setdefault("SCALING_CACHE_DIR", tempfile.mkdtemp(prefix="scaling-cache-"))


@pytest.fixture
def weird_tmp_path(tmp_path: Path) -> Path:
    """A temporary folder whose name has spaces and quotes, to catch quoting bugs."""
    path = tmp_path / "we ird 'dir' \"x\""
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
