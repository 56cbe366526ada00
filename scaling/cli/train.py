"""`scaling train`: train and evaluate one run spec (what every backend calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from scaling.errors import SpecError


def train(
    run_spec: Annotated[Path, typer.Argument(help="A run's spec.json (run spec, optional layout).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run directory (created if needed).")],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for this run.")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network.")] = False,
) -> None:
    """Train and evaluate one run; resumes from the run directory's newest checkpoint."""
    from scaling.layout import Layout
    from scaling.spec import RunSpec
    from scaling.train import Preempted, run

    try:
        data = json.loads(run_spec.read_text())
    except OSError:
        raise SpecError("file not found", file=str(run_spec)) from None
    except ValueError as exc:
        raise SpecError(f"invalid JSON: {exc}", file=str(run_spec)) from None
    spec = RunSpec.from_dict(data, file=str(run_spec))
    layout = Layout.from_dict(data["layout"]) if "layout" in data else None
    try:
        run(spec, run_dir, layout, device=device, threads=threads, compile=compile)
    except Preempted as exc:
        typer.echo(str(exc), err=True)
        raise SystemExit(143) from None
