"""Typed options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SweepArg = Annotated[Path, typer.Argument(help="Sweep spec (YAML), e.g. sweeps/quickstart.yaml.")]
ClusterOpt = Annotated[
    Path | None,
    typer.Option("--cluster", "-c", help="Cluster profile (YAML); default: this machine."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a sweep field: key.path=value (YAML value). Repeatable."),
]
OnlyOpt = Annotated[
    str | None,
    typer.Option(
        "--only", help="Filter runs: method=simclr,depth=18,width=0.5 (columns of the plan)."
    ),
]
