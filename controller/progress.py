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
        self._tasks: dict[str, TaskID] = {}  # trial key -> its bar (parallel trials: several)
        self._labels: dict[str, str] = {}
        self._last_line: dict[str, float] = {}

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(self.prefix + message, highlight=False, markup=False)

    def trial_started(self, label: str, total_tokens: int, key: str = "") -> None:
        self._labels[key] = label
        self._last_line[key] = time.monotonic()
        if self.quiet:
            return
        if self.console.is_terminal and not self.prefix:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.fields[stats]}"),
                    TimeElapsedColumn(),
                    console=self.console,
                    transient=True,
                )
                self._progress.start()
            self._tasks[key] = self._progress.add_task(label, total=total_tokens, stats="")
        else:
            self.info(f"  {label}: started")

    def trial_progress(self, p: TrainProgress, key: str = "") -> None:
        stats = f"{p.tokens:,} tok  loss {p.loss:.3f}  {p.tokens_per_s:,.0f} tok/s"
        task = self._tasks.get(key)
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=p.tokens, stats=stats)
        elif not self.quiet and time.monotonic() - self._last_line.get(key, 0.0) > 10:
            self._last_line[key] = time.monotonic()
            self.info(f"  {self._labels.get(key, '')}: {stats}")

    def trial_finished(self, message: str, key: str = "") -> None:
        task = self._tasks.pop(key, None)
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)
        if self._progress is not None and not self._tasks:
            self._progress.stop()
            self._progress = None
        self._labels.pop(key, None)
        self._last_line.pop(key, None)
        self.info(f"  {message}")
