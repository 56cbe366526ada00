"""The `scaling` application: only assembles the command modules.

Commands import torch, MLflow and Ray lazily inside their bodies so `scaling --help`
stays instant.
"""

from __future__ import annotations

import typer

from scaling.cli import advise as advise_cmd
from scaling.cli import plan as plan_cmd
from scaling.cli import report as report_cmd
from scaling.cli import runs as runs_cmd
from scaling.cli import tracking as tracking_cmd
from scaling.cli import train as train_cmd
from scaling.cli.errors import guarded

app = typer.Typer(
    name="scaling",
    help="Plan, run and analyse scaling studies of SimCLR against supervised training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Plan, run and analyse scaling studies of SimCLR against supervised training."""
    if version:
        from scaling import __version__

        typer.echo(__version__)
        raise typer.Exit()


app.command("plan")(guarded(plan_cmd.plan))
app.command("submit")(guarded(runs_cmd.submit))
app.command("status")(guarded(runs_cmd.status))
app.command("cancel")(guarded(runs_cmd.cancel))
app.command("report")(guarded(report_cmd.report))
app.command("advise")(guarded(advise_cmd.advise))
app.command("ui")(guarded(tracking_cmd.ui))
app.command("sync")(guarded(tracking_cmd.sync))
app.command("train")(guarded(train_cmd.train))
app.command("worker", hidden=True)(guarded(train_cmd.worker))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
