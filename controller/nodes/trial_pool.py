"""Trials of one cycle running at once (``tuning.parallel_trials``).

Each running trial has a thread of its own that does nothing but wait on
``ctx.cluster.run``; everything else (Optuna, the store, the audit log, pruning decisions)
stays on the trainer's thread, fed through one event queue. So the study keeps a single
owner, and a trial's progress is judged against the other trials' curves as they stand.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from adapters.cluster.base import TrialOutcome
from controller.context import LineContext
from controller.nodes.trial_run import LiveTrial, TrialRunner


class TrialPool:
    """Contract: :meth:`next_done` is called from one thread (the trainer's); a trial's
    thread never raises (a cluster that breaks its contract fails that trial). :meth:`abort`
    stops and collects whatever still runs, so no trial outlives the node that started it."""

    def __init__(
        self, ctx: LineContext, runner: TrialRunner, before: list[list[tuple[int, float]]]
    ) -> None:
        self.ctx, self.runner = ctx, runner
        self.live: dict[str, LiveTrial] = {}
        self.finished = list(before)  # curves of finished, unpruned trials of the cycle
        self._threads: dict[str, threading.Thread] = {}
        self._events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._abort = threading.Event()

    def __len__(self) -> int:
        return len(self.live)

    def start(self, live: LiveTrial) -> None:
        key = live.plan.key
        self.live[key] = live
        thread = threading.Thread(target=self._run, args=(live,), name=f"trial-{key}", daemon=True)
        self._threads[key] = thread
        thread.start()

    def _run(self, live: LiveTrial) -> None:
        key, ctx = live.plan.key, self.ctx
        try:
            outcome = ctx.cluster.run(
                live.job,
                on_progress=lambda p: self._events.put(("progress", key, p)),
                should_stop=lambda: (
                    ctx.stop_event.is_set() or live.prune_now or self._abort.is_set()
                ),
            )
        except Exception as exc:  # the cluster's contract says it never raises: fail the trial
            outcome = TrialOutcome("failed", error=f"cluster error: {type(exc).__name__}: {exc}")
        self._events.put(("done", key, outcome))

    def next_done(self) -> tuple[LiveTrial, TrialOutcome]:
        """Handle progress until a trial ends; that trial and its outcome."""
        while True:
            kind, key, payload = self._events.get()
            live = self.live.get(key)
            if live is None:
                continue
            if kind == "progress":
                if not self._abort.is_set():  # judging progress is moot once stopping
                    self.runner.progress(live, payload, self._others(key))
                continue
            del self.live[key]
            self._threads.pop(key).join()
            if payload.status == "ok" and not live.prune_now:
                self.finished.append(live.curve)
            return live, payload

    def _others(self, key: str) -> list[list[tuple[int, float]]]:
        """What a trial's progress is compared with: the cycle's finished trials and the
        ones running beside it (neither pruned), each where it has reached that far."""
        running = [t.curve for k, t in self.live.items() if k != key and not t.prune_now]
        return [*self.finished, *running]

    def abort(self) -> list[LiveTrial]:
        """Stop every running trial and wait for it (the cluster kills a worker that does
        not stop within its grace); their energy is booked, their rows stay `running` and
        run again on resume. Returns the trials it stopped."""
        stopped = []
        self._abort.set()
        while self.live:
            live, outcome = self.next_done()
            stopped.append(live)
            try:  # every trial is collected, whatever booking one of them does
                self.ctx.power_limit_released(live.plan.key)
                self.runner.book_abandoned(live.plan, outcome)
                self.ctx.reporter.trial_finished(f"{live.text}: abandoned", live.plan.key)
            except Exception as exc:
                self.ctx.reporter.info(f"  [trainer] {live.plan.key}: not booked: {exc}")
        return stopped
