"""Progress for people watching a run: a live bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from adapters.workload.protocol import TrainProgress


class ProgressReporter:
    def __init__(
        self, console: Console | None = None, quiet: bool = False, prefix: str = ""
    ) -> None:
        self.console = console or Console(stderr=False)
        self.quiet = quiet
        self.prefix = prefix  # the line's name in a factory of several: plain lines only
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = 0.0
        self._label = ""

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(self.prefix + message, highlight=False, markup=False)

    def trial_started(self, label: str, total_tokens: int) -> None:
        self._label = label
        if self.quiet:
            return
        if self.console.is_terminal and not self.prefix:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=total_tokens, stats="")
        else:
            self.info(f"  {label}: started")
        self._last_line = time.monotonic()

    def trial_progress(self, p: TrainProgress) -> None:
        stats = f"{p.tokens:,} tok  loss {p.loss:.3f}  {p.tokens_per_s:,.0f} tok/s"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=p.tokens, stats=stats)
        elif not self.quiet and time.monotonic() - self._last_line > 10:
            self._last_line = time.monotonic()
            self.info(f"  {self._label}: {stats}")

    def trial_finished(self, message: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
        self.info(f"  {message}")
