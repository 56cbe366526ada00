"""`scaling ui` starts the real MLflow UI on the sweep's store, on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write

SWEEP = "name: uisweep\ndataset: {name: synthetic, image_size: 8, size: 32}\nmodel: {depth: 10, width: 0.125}\nmethods: {supervised: {batch_size: 32, epochs: 1}}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ui_serves_the_sweeps_experiment(tmp_path: Path) -> None:
    from scaling.run.tracking import ensure_experiment

    write(tmp_path / "sweep.yaml", SWEEP)
    ensure_experiment(f"sqlite:///{tmp_path}/mlflow.db", "uisweep")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaling", "ui", "sweep.yaml", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline().decode()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in first and "uisweep" in first
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=uisweep"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert proc.poll() is None, "the UI exited"
                assert time.monotonic() < deadline, "the UI did not answer in 90 s"
                time.sleep(0.5)
        assert body["experiment"]["name"] == "uisweep"
    finally:
        import os

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_on_a_public_address_warns_that_it_has_no_authentication(tmp_path: Path) -> None:
    write(tmp_path / "sweep.yaml", SWEEP)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scaling",
            "ui",
            "sweep.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline().decode()  # type: ignore[union-attr]
        assert "warning: the MLflow UI has no authentication" in first
    finally:
        import os

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _wait_for_the_ui(proc: subprocess.Popen[bytes], port: int) -> None:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert proc.poll() is None, "the UI exited"
            assert time.monotonic() < deadline, "the UI did not answer in 120 s"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_its_whole_server_tree_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """The process tree before and after: `scaling ui` stopped by a signal (to it alone,
    as `kill` or a terminal's Ctrl-C sends it) leaves none of MLflow's processes (uvicorn,
    its workers, the job runner, huey consumers) running, and the port free."""
    from scaling.run.processes import _alive, descendants

    write(tmp_path / "sweep.yaml", SWEEP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaling", "ui", "sweep.yaml", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_the_ui(proc, port)
        tree = descendants(proc.pid)
        commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in tree]
        assert len(tree) >= 2 and any(b"mlflow" in c or b"uvicorn" in c for c in commands)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in tree if _alive(p)], "processes left after the UI stopped"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free again
    finally:
        import os

        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
