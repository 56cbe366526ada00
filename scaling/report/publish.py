"""The report folder logged to MLflow: one sweep-level run per sweep, reused.

`publish` uploads a report folder as the artifacts of ONE sweep-level run (tag
`scaling.kind=report`), reused by every later report of the sweep, so the latest report
is one click away in the MLflow UI; the gap table also goes up as an MLflow table, the
run counts by state as metrics, the answer as the run's note, and every run of the sweep
is tagged with its report run (`scaling.report_run`). MLflow is a copy here too: a store
that cannot be written only warns (the folder on disk is complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.run.locks import file_lock
from scaling.run.state import STATES
from scaling.run.tracking import LOCK_TIMEOUT_S, RUN_ID_TAG

if TYPE_CHECKING:
    from scaling.sweep.spec import Sweep

log = logging.getLogger(__name__)

KIND_TAG, SWEEP_TAG = "scaling.kind", "scaling.sweep"
REPORT_TAG = "scaling.report_run"  # on every run of a sweep: its report run
ARTIFACT_PATH = "report"  # the folder's place among the MLflow run's artifacts


def publish(
    uri: str, experiment: str, out_dir: Path, sweep: Sweep, states: list[str]
) -> str | None:
    """Upload `out_dir` to the sweep's report run; where to see it, or None (warned)."""
    from scaling.run import tracking

    try:
        with _lock(uri, experiment, sweep.name):
            experiment_id = tracking.ensure_experiment(uri, experiment)
            run_id = _upload(uri, experiment_id, out_dir, sweep, states)
        return tracking.run_hint(uri, experiment_id, run_id)
    except Exception as exc:  # the report on disk is complete; MLflow is a copy
        log.debug("report logging failed", exc_info=True)
        print(
            f"warning: the report was not logged to MLflow at {uri} ({type(exc).__name__}: "
            f"{exc}); it is complete in {out_dir}",
            file=sys.stderr,
        )
        return None


def _upload(uri: str, experiment_id: str, out_dir: Path, sweep: Sweep, states: list[str]) -> str:
    from mlflow.entities import Metric, RunTag

    from scaling.run.tracking import mlflow_client

    client = mlflow_client(uri)
    query = f"tags.`{KIND_TAG}` = 'report' and tags.`{SWEEP_TAG}` = '{sweep.name}'"
    found = client.search_runs(
        [experiment_id], query, max_results=10, order_by=["attributes.start_time ASC"]
    )
    if found:  # one report run per sweep: the oldest, should a race have made two
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {KIND_TAG: "report", SWEEP_TAG: sweep.name}
        run_id = client.create_run(
            experiment_id, tags=tags, run_name=f"{sweep.name}-report"
        ).info.run_id
    client.log_artifacts(run_id, str(out_dir), artifact_path=ARTIFACT_PATH)
    # The gap table as an MLflow table (the UI's Evaluation/Artifacts view can query it);
    # fits.json and every figure are under ARTIFACT_PATH.
    import pandas as pd

    client.log_table(run_id, data=pd.read_csv(out_dir / "gaps.csv"), artifact_file="gaps.json")
    _link_runs(client, experiment_id, sweep.name, run_id)
    now = int(time.time() * 1000)
    counts = {f"runs_{s}": float(states.count(s)) for s in STATES}
    note = _note(out_dir, sweep, counts)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in counts.items()],
        tags=[
            RunTag("mlflow.note.content", note),
            RunTag("scaling.report_dir", str(out_dir.resolve())),
            RunTag("scaling.report_time", time.strftime("%Y-%m-%d %H:%M:%S %z")),
        ],
    )
    client.set_terminated(run_id, status="FINISHED")
    return str(run_id)


def _link_runs(client: Any, experiment_id: str, sweep: str, report_run_id: str) -> None:
    """Tag every run of the sweep with its report run (`scaling.report_run`), once."""
    from mlflow.entities import RunTag

    from scaling.run import tracking

    query = f"tags.`{SWEEP_TAG}` = '{sweep}'"  # the report run itself has no RUN_ID_TAG
    for run in tracking.search_all(client, experiment_id, query):
        if run.data.tags.get(REPORT_TAG) != report_run_id and RUN_ID_TAG in run.data.tags:
            client.log_batch(run.info.run_id, tags=[RunTag(REPORT_TAG, report_run_id)])


def _note(out_dir: Path, sweep: Sweep, counts: dict[str, float]) -> str:
    """The run's description in the MLflow UI: the answer and where the page is."""
    fits = json.loads((out_dir / "fits.json").read_text())
    lines = [
        f"**{sweep.name}**: {sweep.description}".rstrip(": "),
        "",
        ", ".join(f"{int(v)} {k.removeprefix('runs_')}" for k, v in counts.items()) + " runs.",
        "",
    ]
    lines += [f"- {g['statement']}" for g in fits["gaps"] if g["headline"]]
    lines += ["", f"Open `{ARTIFACT_PATH}/report.html` under Artifacts for figures and tables."]
    return "\n".join(lines)


def _lock(uri: str, experiment: str, sweep: str) -> AbstractContextManager[None]:
    """Serialise report uploads of one sweep on this machine, so that two racing reports
    never create two report runs (across machines the oldest run is reused)."""
    key = hashlib.sha256(f"{uri}\0{experiment}\0{sweep}".encode()).hexdigest()[:16]
    return file_lock(Path(tempfile.gettempdir()) / f"scaling-report-{key}.lock", LOCK_TIMEOUT_S)
