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
