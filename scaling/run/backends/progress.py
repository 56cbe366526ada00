"""The live view of `submit`: one bar per running run (epochs), overall counts, ETA.

On a terminal a rich progress display; elsewhere (CI, a log file) one line per event.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from scaling.run.backends.base import Job, Outcome

COLORS = {"finished": "green", "failed": "red", "preempted": "yellow", "already-running": "yellow"}


class LiveView:
    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.overall = self.progress.add_task("[bold]runs", total=total)
        self.counts: dict[str, int] = {}

    def __enter__(self) -> LiveView:
        self.progress.__enter__()
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.progress.__exit__(None, None, None)

    def start(self, job: Job) -> Any:
        spec = job.spec
        model, batch = spec.model, spec.config["batch_size"]
        label = f"{spec.run_id} {spec.method} d{model['depth']} w{model['width']} b{batch}"
        if not self.live:
            self.console.print(f"start  {label} ({job.epochs} epochs)", highlight=False)
        return self.progress.add_task(f"  {label}", total=job.epochs)

    def update(self, task: Any, epochs: int) -> None:
        self.progress.update(task, completed=epochs)

    def finish(self, task: Any, outcome: Outcome) -> None:
        self.progress.remove_task(task)
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
        self.progress.advance(self.overall)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        self.progress.update(self.overall, description=f"[bold]runs[/bold] ({summary})")
        color = COLORS.get(outcome.state, "white")
        self.console.print(
            f"[{color}]{outcome.state:<9}[/{color}] {outcome.run_id} {outcome.detail}",
            highlight=False,
        )

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)
