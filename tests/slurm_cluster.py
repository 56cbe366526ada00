"""A session-scoped ``slurm_cluster`` fixture: a real one-machine Slurm with accounting.

Tests of the Slurm path must run against a real ``slurmctld``/``slurmd``/``slurmdbd``
(submitit reads job states through ``sacct``; a fake would prove nothing). The fixture
picks, in this order:

1. a cluster that already answers ``sinfo`` (CI starts one with
   ``cluster/slurm-local/start.sh`` before the tests; a user may have their own);
2. a private cluster started with ``cluster/slurm-local/start.sh`` in a temporary
   STATE_DIR when its prerequisites are installed and we are root; it is stopped
   (by PID, ``stop.sh``) at the end of the session. It never touches /etc: the
   fixture sets ``SLURM_CONF`` in ``os.environ`` for the session instead, so every
   subprocess (``sbatch``, submitit) sees it;
3. otherwise the tests are skipped with what to install, EXCEPT when
   ``CI=true``: in CI a missing Slurm is a failure, never a silent skip.

Use it from a test module with ``from slurm_cluster import slurm_cluster`` or, once
for the whole suite, ``pytest_plugins = ["tests.slurm_cluster"]`` in ``tests/conftest.py``.
Several imports are harmless: a second instance finds the first one's cluster
answering ``sinfo`` and reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "cluster" / "slurm-local"
PREREQUISITES = (
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sinfo",
    "sbatch",
    "sacct",
    "scancel",
    "scontrol",
)
START_TIMEOUT_S = 180
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


@dataclass(frozen=True)
class SlurmCluster:
    """A running Slurm the tests may submit to.

    ``state_dir`` is set only when the fixture started the cluster itself (and will
    stop it); ``conf`` is the ``SLURM_CONF`` in effect, None for Slurm's default path.
    """

    partition: str
    max_array_size: int
    conf: Path | None
    state_dir: Path | None

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id (no cluster suffix)."""
        out = _run("sbatch", "--parsable", f"--partition={self.partition}", *args)
        return out.strip().split(";")[0]

    def states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """sacct's allocation rows for a job (array tasks are ``<id>_<i>``): JobID -> (State, ExitCode).

        The state is reduced to its first word: sacct writes "CANCELLED by 0".
        """
        out = _run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode")
        rows: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            if line.strip():
                jid, state, exit_code = line.split("|")
                rows[jid] = (state.split()[0] if state else "", exit_code)
        return rows

    def wait_final(
        self, job_id: str, count: int = 1, timeout_s: float = 60.0
    ) -> dict[str, tuple[str, str]]:
        """Poll sacct until ``count`` rows of the job are in a final state; return them.

        Accounting reaches slurmdbd a little after the job ends, so a single sacct
        right after ``squeue`` empties can miss rows: polling is the only honest wait.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.states(job_id)
            done = {k: v for k, v in rows.items() if v[0] in FINAL_STATES}
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: {count} final rows expected within {timeout_s}s, sacct says {rows}"
                )
            time.sleep(0.2)


def _run(*cmd: str, timeout: float = 30.0) -> str:
    """Run a Slurm command and return stdout; raise with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _answers(*cmd: str) -> bool:
    """True when the command exits 0 within a few seconds (a reachable controller)."""
    if shutil.which(cmd[0]) is None:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _unavailable(message: str) -> None:
    """Skip, or fail under CI=true (CI must exercise the Slurm path, not skip it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no usable Slurm: {message}", pytrace=False)
    pytest.skip(message)


def _config_value(key: str) -> str | None:
    """A value from ``scontrol show config`` (None if absent)."""
    for line in _run("scontrol", "show", "config").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    return None


def _default_partition() -> str:
    """The partition marked default (``*`` in sinfo), else the first one."""
    names = [p for p in _run("sinfo", "-h", "-o", "%P").split() if p]
    for name in names:
        if name.endswith("*"):
            return name[:-1]
    if not names:
        raise RuntimeError("sinfo lists no partition")
    return names[0]


def _describe(conf: Path | None, state_dir: Path | None) -> SlurmCluster:
    if not _answers("sacct", "-n", "-X", "-S", "now-1minutes"):
        _unavailable(
            "Slurm answers sinfo but not sacct: it has no accounting (slurmdbd); "
            "cluster/slurm-local/start.sh sets one up"
        )
    max_array = int(_config_value("MaxArraySize") or 1001)
    return SlurmCluster(_default_partition(), max_array, conf, state_dir)


def _start_private() -> tuple[Path, Path]:
    """Start cluster/slurm-local in a new temporary STATE_DIR; return (state_dir, conf)."""
    state_dir = Path(tempfile.mkdtemp(prefix="scaling-slurm-test-"))
    env = {**os.environ, "SLURM_LOCAL_ETC": "0"}
    proc = subprocess.run(
        [str(SCRIPTS / "start.sh"), str(state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=START_TIMEOUT_S,
    )
    if proc.returncode != 0:
        shutil.rmtree(state_dir, ignore_errors=True)
        pytest.fail(
            f"cluster/slurm-local/start.sh failed ({proc.returncode}):\n{proc.stderr}",
            pytrace=False,
        )
    return state_dir, state_dir / "etc" / "slurm.conf"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-machine (or real) Slurm with accounting; see the module docstring."""
    if _answers("sinfo", "-h"):
        conf = os.environ.get("SLURM_CONF")
        yield _describe(Path(conf) if conf else None, None)
        return
    missing = [cmd for cmd in PREREQUISITES if shutil.which(cmd) is None]
    if missing:
        _unavailable(
            f"no Slurm answers sinfo and {', '.join(missing)} not installed: run "
            "`sudo cluster/slurm-local/install.sh && sudo cluster/slurm-local/start.sh`"
        )
    if os.geteuid() != 0:
        _unavailable(
            "no Slurm answers sinfo and starting cluster/slurm-local needs root: "
            "run `sudo cluster/slurm-local/start.sh` and export the SLURM_CONF it prints"
        )
    state_dir, conf = _start_private()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield _describe(conf, state_dir)
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(state_dir)], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(state_dir, ignore_errors=True)
