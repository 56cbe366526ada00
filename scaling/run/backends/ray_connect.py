"""Starting or joining the Ray a profile names, and checking it before trials start.

`connect` starts a local Ray (resources from the profile, files under the workdir) or
joins a running cluster, whose head must answer first (`check_head`: Ray itself retries a
dead one for minutes); `check_tracking` refuses a SQLite store that several nodes would
write. Everything else about the Ray backend is in scaling.run.backends.ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from scaling.errors import SubmissionError
from scaling.sweep.cluster import RayConfig

log = logging.getLogger(__name__)

# Ray puts unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store;
# AF_UNIX paths are limited to 107 bytes on Linux (103 on macOS).
SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


@contextlib.contextmanager
def connect(config: RayConfig, workdir: Path) -> Iterator[None]:
    """Start or join the Ray the profile names, for the duration of the block.

    Already connected (the caller started Ray): used as it is and left running.
    `local`: a Ray started in this process with the profile's CPUs, no dashboard, its
    files under temp_dir (default <workdir>/.ray) and token authentication off
    (RAY_AUTH_MODE=disabled, for this cluster of one process tree only); shut down on
    exit, leaving no process. Any other address (`auto`, `ray://head:10001`) joins a
    running cluster and disconnects on exit.
    """
    if ray.is_initialized():
        yield
        return
    local = config.address == "local"
    if local:  # started here: resources from the profile, files under the workdir
        temp, scratch = _temp_dir(config, workdir)
        options: dict[str, Any] = {
            "num_cpus": config.num_cpus,
            "include_dashboard": False,
            "_temp_dir": str(temp),
        }
    else:  # joined: the cluster's own resources and files
        temp, scratch = None, False
        options = {"runtime_env": config.runtime_env or None}
    if not local:
        check_head(config.address)
    try:
        with scoped_env({"RAY_AUTH_MODE": "disabled"} if local else {}):
            try:
                ray.init(
                    address=config.address,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    **options,
                )
            except (ConnectionError, RuntimeError) as exc:
                raise SubmissionError(_head_down(config.address, exc)) from None
            try:
                yield
            finally:
                ray.shutdown()
    finally:
        if scratch and temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


HEAD_CONNECT_S = 5.0  # Ray itself retries a dead head for minutes


def check_head(address: str) -> None:
    """A head given as host:port (or ray://host:port) must accept a connection before
    `ray.init` is asked to, which would retry a dead one for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto": Ray looks the cluster up itself (and fails at once when none)
    try:
        socket.create_connection((host, int(port)), timeout=HEAD_CONNECT_S).close()
    except OSError as exc:
        raise SubmissionError(_head_down(address, exc)) from None


def _head_down(address: str, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"no Ray cluster answers at ray.address {address} ({reason}): start it (ray start "
        "--head) or fix the profile; nothing was started and every run stays resumable"
    )


def check_tracking(uri: str, address: str) -> None:
    """SQLite is one file that one machine may write: refused on a joined cluster of
    several nodes (trials push from theirs)."""
    from scaling.run.tracking import _sqlite_path

    db = _sqlite_path(uri)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if db is not None and len(nodes) > 1:
        raise SubmissionError(
            f"tracking.uri is SQLite ({db}), which only one machine can write, and the Ray "
            f"cluster at {address} has {len(nodes)} nodes: start an MLflow server (mlflow "
            f"server --backend-store-uri {uri} --host 0.0.0.0) and set tracking.uri: "
            "http://<this host>:5000 in the cluster profile"
        )


def _temp_dir(config: RayConfig, workdir: Path) -> tuple[Path, bool]:
    """Ray's temp dir, and whether it is a scratch dir to delete afterwards.

    <workdir>/.ray (or the profile's temp_dir) when short enough for Ray's unix socket
    paths; otherwise a short /tmp/scaling-ray-XXXX, removed after shutdown (with Ray's
    own logs: each run's log is in its run directory).
    """
    wanted = Path(config.temp_dir).absolute() if config.temp_dir else workdir / ".ray"
    limit = (103 if sys.platform == "darwin" else 107) - SOCKET_SUFFIX
    if len(os.fsencode(str(wanted))) <= limit:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted, False
    base = "/tmp" if os.path.isdir("/tmp") else None
    scratch = Path(tempfile.mkdtemp(prefix="scaling-ray-", dir=base))
    log.info("Ray temp dir %s is too long for unix sockets; using %s", wanted, scratch)
    return scratch, True


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block only (processes started meanwhile inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
