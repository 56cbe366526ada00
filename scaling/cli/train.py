"""`scaling train`: train and evaluate one run spec (what every backend calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_PREEMPTED = 143  # stopped by SIGTERM/SIGUSR1 after writing a checkpoint: resumable
EXIT_ALREADY_RUNNING = 75  # another process holds the run's lock (EX_TEMPFAIL)


def train(
    run_spec: Annotated[
        Path, typer.Argument(help="A run's spec.json (run spec, optional layout).")
    ],
    run_dir: Annotated[
        Path, typer.Option("--run-dir", help="The run directory (created if needed).")
    ],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for this run.")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(envvar="SCALING_TRACKING_URI", help="MLflow URI to mirror the run to."),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(envvar="SCALING_EXPERIMENT", help="MLflow experiment name.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train a finished run again, from scratch.")
    ] = False,
) -> None:
    """Train and evaluate one run; resumes from the run directory's newest checkpoint."""
    from scaling.run.locks import AlreadyRunning
    from scaling.run.tracked import read_run_file, run_tracked
    from scaling.train.trainer import Preempted

    spec, layout = read_run_file(run_spec)
    from scaling.run.tracking import without_credentials

    tracking = None
    if tracking_uri:
        tracking = (without_credentials(tracking_uri), experiment or spec.sweep or "scaling")
    try:
        run_tracked(spec, run_dir, layout, tracking, force=force, device=device, threads=threads,
                    compile=compile)  # fmt: skip
    except Preempted as exc:
        typer.echo(str(exc), err=True)
        raise SystemExit(EXIT_PREEMPTED) from None
    except AlreadyRunning as exc:
        typer.echo(str(exc), err=True)
        raise SystemExit(EXIT_ALREADY_RUNNING) from None


def worker() -> None:
    """Train the runs the local backend sends on stdin, one after another (internal)."""
    from scaling.run.backends.worker import serve

    serve()
