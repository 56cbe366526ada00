"""Where a sweep's runs live in MLflow: the store, the experiment, the runs found there.

`resolve_uri` picks the store (cluster profile, sweep, $MLFLOW_TRACKING_URI or
`sqlite:///mlflow.db`, made absolute); `ensure_experiment` creates the sweep's
experiment, safe when processes race; `find_runs` reads MLflow's view of a sweep, one
entry per run spec (tag `scaling.run_id`); `run_url` and `run_hint` say where to see a
run. Making MLflow reflect a run directory (`push`, `sync`, `read_state`) lives in
`scaling.run.mirror`. MLflow is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from scaling.errors import ScalingError
from scaling.run.locks import file_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from scaling.sweep.spec import Sweep

RUN_ID_TAG = "scaling.run_id"
PAGE_SIZE = 1000  # the most runs MLflow returns per search page
LOCK_TIMEOUT_S = 120.0
# MLflow's HTTP defaults retry an unreachable server for ~4 minutes per call (7 retries,
# backoff 2, 120 s timeout). A push is cheap to redo, so unless the user set these, a
# call gives up after one retry of a 5 s connect/read time-out (~11 s against a server
# that accepts and never answers; at once when nothing listens).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

# ----------------------------------------------------------------------------- URIs


def resolve_uri(sweep_uri: str | None, profile_uri: str | None = None) -> str:
    """The cluster profile's URI, else the sweep's, else MLflow's default.

    MLflow's default is $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working
    directory. SQLite and bare paths come back absolute, so that runs started as
    subprocesses in other directories write to the same store. Credentials in a server
    URI (`https://user:secret@host`) are moved to this process's environment
    (`without_credentials`): the URI every command shows, stores and hands on has none.
    """
    uri = profile_uri or sweep_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        uri = without_credentials(uri)
    if not uri:
        return sqlite_uri(Path.cwd() / "mlflow.db")
    db = _sqlite_path(uri)
    if db is not None:
        query = uri.partition("?")[2]
        return sqlite_uri(db) + (f"?{query}" if query else "")
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return os.path.abspath(uri)  # a bare path: MLflow's file store
    return uri


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_warned_credentials = False


def redact(text: str) -> str:
    """`text` with the user info of every URL in it (`user:secret@`) shown as `***@`."""
    return _USERINFO.sub(r"\1***@", text)


def without_credentials(uri: str) -> str:
    """A server URI without its user info, which moves to MLflow's own variables.

    MLflow sends MLFLOW_TRACKING_USERNAME/PASSWORD as HTTP basic auth; set here (unless
    already set) they reach every run this process starts through its environment, and
    are never written into mlflow.json, a submitit or Ray pickle, a log or the terminal.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    for name, value in zip(CREDENTIAL_VARS, (user, password), strict=True):
        if value and not os.environ.get(name):
            os.environ[name] = unquote(value)
    global _warned_credentials
    if not _warned_credentials:
        _warned_credentials = True
        print(
            "note: the tracking URI's credentials are used from MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD and never stored or shown; set those instead of "
            "putting them in the URI",
            file=sys.stderr,
        )
    return urlunsplit(parts._replace(netloc=host))


def sqlite_uri(path: str | Path) -> str:
    """`sqlite:///<absolute path>`, escaping only what SQLAlchemy would misread.

    A fully percent-encoded path (MLflow's own helper) makes MLflow 3.17 create a stray
    folder named with the escapes: it mkdirs the path without decoding it.
    """
    return "sqlite:///" + os.path.abspath(path).replace("%", "%25").replace("?", "%3F")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (SQLAlchemy decodes %xx), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///") :].partition("?")[0])
    return None if raw in ("", ":memory:") else Path(os.path.abspath(raw))


def run_url(uri: str, experiment_id: str, mlflow_run_id: str) -> str | None:
    """The run's page in the MLflow UI of a server URI; None for local stores."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"


def run_hint(uri: str, experiment_id: str, mlflow_run_id: str) -> str:
    """Where to see a run: its URL, or how to open a local store."""
    page = f"#/experiments/{experiment_id}/runs/{mlflow_run_id}"
    return run_url(uri, experiment_id, mlflow_run_id) or f"`scaling ui` ({uri}), then {page}"


# ----------------------------------------------------------------------------- experiments


def experiment_name(sweep: Sweep) -> str:
    return sweep.tracking.experiment or sweep.name


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if missing; safe when processes race to create it.

    With a SQLite store the artifacts go beside the database (`<db dir>/mlartifacts/
    <name>`), not MLflow's default `./mlruns` of whatever the working directory was
    (which would also shadow the default store of that directory).
    """
    return experiment_of(mlflow_client(uri), uri, name)


def experiment_of(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name` in `client`'s store, created if missing (see
    ensure_experiment)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artifacts_of(uri, name)))
        except MlflowException as exc:
            found = client.get_experiment_by_name(name)  # another process won the race
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ScalingError(
            f"MLflow experiment {name!r} (id {found.experiment_id}) at {uri} is deleted: "
            f"restore it (mlflow experiments restore --experiment-id {found.experiment_id}) "
            "or set another tracking.experiment in the sweep"
        )
    return str(found.experiment_id)


def _artifacts_of(uri: str, name: str) -> str | None:
    db = _sqlite_path(uri)
    if db is None:
        return None  # servers and file stores choose their own artifact root
    slug = name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        slug = (
            re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            + "-"
            + hashlib.sha256(name.encode()).hexdigest()[:8]
        )
    return str(db.parent / "mlartifacts" / slug)


_STORES_READY: set[str] = set()


def mlflow_client(uri: str) -> MlflowClient:
    """A client whose store exists; a new SQLite file gets its schema under a lock.

    MLflow 3.17 builds an empty database's tables without a lock: processes opening one
    new file at once fail ("table _alembic_tmp_... already exists"), half-migrated.
    """
    from mlflow import MlflowClient

    use_http_defaults()
    db = _sqlite_path(uri)
    if db is None or uri in _STORES_READY:
        return MlflowClient(tracking_uri=uri)
    # Made here: MLflow mkdirs the undecoded path, then retries "unable to open
    # database file" with backoff for ~100 s.
    db.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(db).encode()).hexdigest()[:16]
    with file_lock(Path(tempfile.gettempdir()) / f"scaling-mlflow-{key}.lock", LOCK_TIMEOUT_S):
        client = MlflowClient(tracking_uri=uri)  # builds the store (and a new file's schema)
    _STORES_READY.add(uri)
    return client


# ----------------------------------------------------------------------------- find


def find_runs(
    uri: str, experiment: str, *, page_size: int = PAGE_SIZE
) -> dict[str, dict[str, Any]]:
    """run_id -> {mlflow_run_id, status, tags, params, metrics, start_time, end_time}.

    Follows MLflow's page tokens (at most 1,000 runs a page). Runs without a
    `scaling.run_id` tag (a sweep-level report run) are left out; should two runs carry
    one run_id, the oldest wins. Raises ScalingError when the store cannot be read.
    """
    try:
        client = mlflow_client(uri)
        found = client.get_experiment_by_name(experiment)
        return {} if found is None else _all_runs(client, str(found.experiment_id), page_size)
    except Exception as exc:
        raise ScalingError(
            redact(f"could not read MLflow runs of {experiment!r} at {uri}: {exc}")
        ) from exc


def search_all(
    client: MlflowClient, experiment_id: str, query: str = "", page_size: int = PAGE_SIZE
) -> Iterator[Run]:
    """Every run of the experiment matching `query`, following MLflow's page tokens (at
    most 1,000 runs a page)."""
    token: str | None = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _all_runs(
    client: MlflowClient, experiment_id: str, page_size: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run in search_all(client, experiment_id, "", page_size):
        run_id = run.data.tags.get(RUN_ID_TAG)
        if run_id is None or (run_id in out and out[run_id]["start_time"] <= run.info.start_time):
            continue
        out[run_id] = {
            "mlflow_run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "status": run.info.status,
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
        }
    return out


# ----------------------------------------------------------------------------- helpers


def use_http_defaults() -> None:
    """MLflow's HTTP retries cut short for this process (HTTP_DEFAULTS), unless the user
    set their own: once, at the first MLflow client, and never removed (changing the
    environment around each call raced with the background pusher's own calls)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
