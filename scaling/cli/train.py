"""`scaling train`: train and evaluate one run spec (what every backend calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
    from scaling.errors import ExitCode
    from scaling.run.entry import train_entry
    from scaling.run.processes import die_with_parent
    from scaling.run.tracking import without_credentials

    die_with_parent()  # started by the local backend: SIGTERM (checkpoint) if it dies

    tracking = (without_credentials(tracking_uri), experiment) if tracking_uri else None
    ending = train_entry(
        run_spec, run_dir, tracking, force=force, device=device, threads=threads, compile=compile
    )
    if ending.code is not ExitCode.OK:
        typer.echo(ending.message, err=True)
        raise SystemExit(ending.code)


def worker() -> None:
    """Train the runs the local backend sends on stdin, one after another (internal)."""
    from scaling.run.backends.worker import serve

    serve()
