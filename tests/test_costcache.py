from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.plan import costcache, costs
from tests.conftest import REPO

ARGS = ("simclr", 10, 0.25, "cifar", 1.0, 16, 32, 10)


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(costcache, "_memory", None)
    monkeypatch.setattr(costcache, "_dirty", False)
    return tmp_path


def test_costs_come_back_from_disk_in_a_new_process(fresh: Path) -> None:
    cost = costcache.arch_cost(*ARGS)
    assert cost == costs.arch_cost(*ARGS)
    costcache.save()
    data = json.loads((fresh / "arch_costs.json").read_text())
    assert len(data["costs"]) == 1
    code = (
        "import json, sys; from scaling.plan import costcache, costs\n"
        "costs.arch_cost = None  # a hit must not trace\n"
        f"print(json.dumps(costcache.arch_cost(*{ARGS!r}).__dict__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"SCALING_CACHE_DIR": str(fresh), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert json.loads(out.stdout) == cost.__dict__


def test_a_stale_or_corrupt_cache_is_ignored(fresh: Path) -> None:
    path = fresh / "arch_costs.json"
    key = json.dumps(list(ARGS))
    path.write_text(
        json.dumps(
            {
                "fingerprint": "old",
                "costs": {
                    key: {
                        "encoder_params": 1,
                        "total_params": 1,
                        "flops_per_image": 1,
                        "activation_bytes": 1,
                    }
                },
            }
        )
    )
    assert costcache.arch_cost(*ARGS).encoder_params > 1
    path.write_text("{not json")
    costcache._memory = None
    assert costcache.arch_cost(*ARGS) == costs.arch_cost(*ARGS)
