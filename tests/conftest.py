from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class HungServer:
    """A tracking "server" that accepts connections and never answers (counts them)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn)  # held open, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.connections:
            conn.close()  # type: ignore[attr-defined]
        self.sock.close()


@pytest.fixture
def hung_server() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


class RecordingServer:
    """An HTTP server that answers 503 to everything and records each request's headers."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        headers: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                headers.append(dict(self.headers))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.headers = headers
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


# A real SQLite MLflow store for the tracking tests.


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose name has spaces and quotes, to catch URI quoting bugs."""
    return tmp_path_factory.mktemp("store") / "sp ace 'q' \"x\""


@pytest.fixture(scope="module")
def store(store_dir: Path) -> str:
    """One SQLite store per module: a new file costs ~1.7 s of schema creation."""
    from scaling.run.tracking import ensure_experiment, sqlite_uri

    uri = sqlite_uri(store_dir / "mlflow.db")
    ensure_experiment(uri, "warm-up")
    return uri


@pytest.fixture
def client(store: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(store)
