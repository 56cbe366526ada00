"""`scaling ui` and `scaling sync`: the MLflow side of a sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated, Any

import typer

from scaling.cli.options import ClusterOpt, SetOpt, SweepArg
from scaling.errors import ScalingError


def ui(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on the sweep's tracking store and print its URL."""
    from scaling.run.submission import make_context
    from scaling.sweep.cluster import load_profile
    from scaling.sweep.spec import load_sweep

    ctx = make_context(load_sweep(sweep, set_ or []), load_profile(cluster))
    uri = ctx.tracking_uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the sweep logs to a tracking server: open {uri} (experiment {ctx.experiment})")
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: the MLflow UI has no authentication: anyone who reaches {host}:{port} "
            "can read and change every run of this store",
            err=True,
        )
    typer.echo(
        f"MLflow UI for {uri} at http://{host}:{port}  "
        f"(experiment {ctx.experiment}; Ctrl-C stops it)"
    )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    code = _serve(cmd)
    if code not in (0, -2, 130):
        raise ScalingError(f"the MLflow UI exited with code {code}; is port {port} free? (--port)")


def _serve(cmd: list[str]) -> int:
    """Run the MLflow UI until it exits or this command is stopped (Ctrl-C, SIGTERM,
    SIGHUP); either way its whole tree (uvicorn, its workers, the job runner and huey
    consumers) stops with it, none left holding the port. Its exit code (0 when stopped)."""
    import signal

    from scaling.run.processes import stop_tree

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # A session of its own: its tree is one process group to stop, and the terminal's
    # Ctrl-C reaches this command, which stops it in order.
    proc = subprocess.Popen(cmd, env={**os.environ}, start_new_session=True)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C
        stop_tree(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def sync(
    sweep: SweepArg,
    cluster: ClusterOpt = None,
    set_: SetOpt = None,
) -> None:
    """Push run directories to MLflow (after an outage, or runs that never reached it)."""
    from scaling.run.mirror import sync as sync_runs
    from scaling.run.submission import make_context
    from scaling.run.tracking import ensure_experiment
    from scaling.sweep.cluster import load_profile
    from scaling.sweep.spec import load_sweep

    ctx = make_context(load_sweep(sweep, set_ or []), load_profile(cluster))
    folder = ctx.workdir / ctx.sweep
    run_dirs = (
        sorted(p for p in folder.iterdir() if (p / "spec.json").exists()) if folder.is_dir() else []
    )
    if not run_dirs:
        typer.echo(f"no run directories under {folder}")
        return
    ensure_experiment(ctx.tracking_uri, ctx.experiment)
    pushed, failed = sync_runs(run_dirs, ctx.tracking_uri, ctx.experiment)
    from scaling.run.wandb_mirror import push as wandb_push

    failed += sum(wandb_push(d, final=True) is False for d in run_dirs)  # W&B, where asked
    typer.echo(
        f"synced {pushed} of {len(run_dirs)} runs to {ctx.tracking_uri} "
        f"(experiment {ctx.experiment})"
        + (f"; {failed} failed, run `scaling sync` again" if failed else "")
    )
    if failed:
        raise typer.Exit(1)
