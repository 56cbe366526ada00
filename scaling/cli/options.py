"""Typed options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SweepArg = Annotated[Path, typer.Argument(help="Sweep spec (YAML), e.g. sweeps/quickstart.yaml.")]
ClusterOpt = Annotated[
    Optional[Path],
    typer.Option("--cluster", "-c", help="Cluster profile (YAML); default: this machine."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a sweep field: key.path=value (YAML value). Repeatable."),
]
OnlyOpt = Annotated[
    Optional[str],
    typer.Option("--only", help="Filter runs: method=simclr,depth=18,width=0.5 (columns of the plan)."),
]
