"""One production line inside the factory: its context, its staged policy, its jobs on the
factory's scheduler, and a thread of its own that runs its cycles one at a time.

Lines never wait for each other: each has its own request queue and thread; what they
share (slots, budgets, GPUs, the serving endpoint, the store) is shared through the
factory's services. A line only *requests* work from the tick and the scheduler; its
thread runs it, and applies a staged policy between cycles, so no running stretch of a
cycle mixes two policy versions.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import Any

from adapters.cluster import reconfigure
from adapters.data_sources import make_source
from adapters.llm import make_advisor
from adapters.store.db import utcnow_iso
from adapters.store.line_pauses import LinePauses
from adapters.workload.loader import load_workload
from controller.cycle_runner import CycleRun, CycleRunner
from controller.demo_traffic import DemoTraffic
from controller.graph import build_cycle_graph
from controller.line_schedule import LineSchedule
from controller.line_setup import (
    build_context,
    offered,
    traffic_source,
    wire_capture,
    wire_gpu,
)
from controller.line_view import heartbeat, serving_differs
from controller.live_watch import LiveWatch
from controller.overview import FactoryView
from controller.services import FactoryServices
from controller.traffic_retention import TrafficRetention
from controller.watch import PolicyWatch
from policies.factory import LineSpec
from policies.loader import PolicyError, load_policy
from policies.model import Policy

#: An idle line's thread wakes this often to look at its staged policy and drain state
#: (each of those also wakes it at once with a request of its own).
_IDLE_WAKE_S = 5.0
#: How long a line waits after trouble of its own (audited) before it tries again.
_TROUBLE_S = 5.0
_FOLLOW_CAPTURE_S = 10.0


class ProductionLine:
    def __init__(
        self, services: FactoryServices, spec: LineSpec, policy: Policy, path: Path
    ) -> None:
        self.services = services
        self.spec = spec  # the factory file's entry: owner, priority, guarantee, weight
        self.path = path
        self.stop_event = threading.Event()
        self.draining = threading.Event()
        self.requests: queue.Queue[tuple[str, str]] = queue.Queue()
        self.busy = threading.Event()
        self.watch = PolicyWatch(path, policy)
        self.ctx = build_context(services, policy, self.stop_event, lambda: self.sync_serving())
        self.schedule = LineSchedule(
            services.scheduler, policy.name, self.requests, self.stop_event, self.say
        )
        self.graph: Any = None
        self.cycles: CycleRunner | None = None
        self.done = 0  # cycles completed or failed
        self.skipped: str | None = None  # the trigger of a cycle a pause held back
        self.retention = TrafficRetention(self.ctx)
        self.live = LiveWatch(self.ctx, lambda why: self.requests.put(("cycle", why)))
        self.demo = DemoTraffic(self.ctx, self._serving_url)
        self._capture_read_at = 0.0
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()  # the factory's watch and the roles both start lines

    @property
    def name(self) -> str:
        return self.ctx.name

    def say(self, message: str) -> None:
        prefix = f"[{self.name}] " if self.services.many_lines else ""
        self.services.say(prefix + message)

    def start(self) -> None:
        """Save the policy version, schedule the line's jobs, start its thread (once)."""
        with self._starting:
            if self._thread is not None:
                return
            ctx = self.ctx
            ctx.book.save_policy(ctx.policy, str(self.path))
            ctx.book.publish_state(ctx.name, started_at=utcnow_iso())
            self.sync_serving()
            thread = threading.Thread(target=self._loop, name=f"line-{self.name}", daemon=True)
            thread.start()
            self._thread = thread

    @property
    def started(self) -> bool:
        """Its thread was started (it may have ended since: drained, or its cycles done)."""
        return self._thread is not None

    # the line's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.cycles is None:
                    self._prepare()
                if not self._step():
                    return
            except Exception as exc:  # a line's own trouble never ends its thread
                self._trouble(exc)

    def _prepare(self) -> None:
        """The line's graph and its first request: resume an unfinished cycle, or start."""
        s = self.services
        self.graph = build_cycle_graph(self.ctx, s.checkpointer)
        self.cycles = CycleRunner(
            self.ctx,
            self.graph,
            self.say,
            self.schedule.retry_later,
            self.schedule.retry_after,
            s.started,
        )
        pending = self.ctx.book.unfinished(self.name)
        if pending is not None:
            self.requests.put(("resume", pending.id))
        elif s.cycles is None:
            self.requests.put(("cycle", "start"))
        self.schedule_cycles()

    def _step(self) -> bool:
        """One turn of the loop; False when the line is done (drained, or --cycles reached)."""
        s = self.services
        if self.draining.is_set() and not self.busy.is_set() and self._settled():
            return False
        self.watch.apply_staged(self)
        if s.cycles is not None and self.requests.empty() and not self.awaiting():
            if self.done >= s.cycles:
                return False
            if not self._paused("cycles"):  # held: said once, asked again when resumed
                self.requests.put(("cycle", "cycles"))
        try:  # stop, drain and a staged policy wake the line with a request of their own
            kind, arg = self.requests.get(timeout=_IDLE_WAKE_S)
        except queue.Empty:
            return True
        self._handle(kind, arg)
        return True

    def _trouble(self, exc: Exception) -> None:
        """Audited, then a pause: the line tries again (a failing store, an unloadable
        workload in a valid edit), the others never notice."""
        error = f"{type(exc).__name__}: {exc}"
        self.say(f"[daemon] line {self.name}: {error}; trying again in {_TROUBLE_S:g}s")
        with contextlib.suppress(Exception):
            self.ctx.audit.append(
                agent="controller",
                action="line_error",
                outcome="failed",
                reason=f"line {self.name}: {error}; trying again in {_TROUBLE_S:g}s",
                figures={"error": error[:2000]},
                policy_version=self.ctx.policy.version,
            )
        self.stop_event.wait(_TROUBLE_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.requests.put(("wake", ""))
        self.demo.stop()

    def undrain(self) -> None:
        """Listed in the factory file again before its drain ended: it goes on as before."""
        self.draining.clear()
        if self.alive:
            self.schedule_cycles()
            self.requests.put(("wake", ""))
        else:  # its thread had just ended
            self.cycles = None
            self._thread = None
            self.start()

    def drain(self) -> None:
        """No new cycles; the thread ends once nothing of the line is running or waiting."""
        self.draining.set()
        self.unschedule()
        self.requests.put(("wake", ""))

    def _handle(self, kind: str, arg: str) -> None:
        self.busy.set()  # before anything else: the tick must see us busy
        try:
            if kind in ("policy", "wake") or (kind == "cycle" and self.draining.is_set()):
                return
            if kind == "live":
                if not self.awaiting() and not self.draining.is_set():
                    self.live.check()
                return
            if kind == "resume":
                run = self.cycles.run("resume", resume_id=arg) if self.cycles else None
            elif self.awaiting() or self._paused(arg) or self._enough():
                return
            else:
                self.skipped = None  # whatever a pause held back, this cycle does it
                run = self.cycles.run(arg) if self.cycles else None
        finally:
            self.busy.clear()
        if run is not None and run.status in ("completed", "failed"):
            self.done += 1
        self._drain_duplicates()

    def _paused(self, trigger: str) -> bool:
        """An operator paused the line: the cycle it would start is held back, audited
        once per pause (the trigger is asked again once the line is resumed)."""
        row = LinePauses(self.ctx.book.store).get(self.name)
        if row is None:
            return False
        if self.skipped is not None:
            return True
        self.skipped = trigger
        reason = (
            f"line paused by {row.paused_by} ({row.reason}): the {trigger} cycle is held "
            "back until the line is resumed"
        )
        self.say(f"[daemon] {self.name}: {reason}")
        self.ctx.audit.append(
            agent="controller",
            action="cycle_skipped",
            outcome="deferred",
            reason=reason,
            figures={"trigger": trigger, "paused_by": row.paused_by, "paused_at": row.paused_at},
            policy_version=self.ctx.policy.version,
        )
        return True

    def _enough(self) -> bool:
        """--cycles/--once reached: a cycle asked by the tick meanwhile is not one more."""
        limit = self.services.cycles
        return limit is not None and self.done >= limit

    def _settled(self) -> bool:
        """Nothing of this line is running or waiting (a draining line may then go)."""
        return self.ctx.book.unfinished(self.name) is None

    def _drain_duplicates(self) -> None:
        """Drop repeated cycle requests that piled up while a cycle ran."""
        kept: list[tuple[str, str]] = []
        while True:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item[0] != "cycle" or not any(k == "cycle" for k, _ in kept):
                kept.append(item)
        for item in kept:
            self.requests.put(item)

    def join(self, timeout_s: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # cycles paused for a person ------------------------------------------------------------

    def waiting_cycles(self) -> set[str]:
        """Cycles paused for a person (an approval or a paused canary step)."""
        recent = self.ctx.book.recent(self.name, 5)
        return {r.id for r in recent if r.status == "awaiting_approval"}

    def awaiting(self) -> bool:
        return bool(self.waiting_cycles())

    def answered(self, waiting: set[str]) -> list[str]:
        """Which of the waiting cycles a person has answered."""
        ctx = self.ctx
        rollout = ctx.rollouts.active(ctx.name) if ctx.rollouts else None
        answered = [
            row.cycle_id
            for row in ctx.book.approvals(ctx.name)
            if row.status in ("approved", "rejected")
            and row.cycle_id in waiting
            and (rollout is None or rollout.cycle_id != row.cycle_id)  # consumed
        ]
        if rollout is not None and rollout.decision and rollout.cycle_id in waiting:
            answered.append(rollout.cycle_id)
        return answered

    # the watch tick (scheduler thread) --------------------------------------------------

    def tick(self, view: FactoryView) -> None:
        """Check the policy file, follow alias moves, notice data and answered pauses; from
        the factory's view of every line, so an idle line costs no query of its own."""
        self.watch.check(self)
        if serving_differs(self, view):
            self.sync_serving()
        self.demo.sync()
        if self.busy.is_set() or not self.requests.empty():
            return
        self.retention.check()  # idle: no cycle reads the files it may delete
        waiting = view.awaiting.get(self.name, set())
        answered = self.answered(waiting) if waiting else []
        if answered:  # a draining line too: its paused cycle must end for it to go
            self.requests.put(("resume", answered[0]))
        elif not waiting and not self.draining.is_set() and self.name not in view.paused:
            if self.skipped is not None:  # resumed: the cycle the pause held back starts now
                self.requests.put(("cycle", f"{self.skipped}, after a pause"))
                self.skipped = None
                return
            ctx = self.ctx
            completed = view.completed.get(self.name, 0)
            if ctx.ingestor.pending(ctx.source, completed, view.known.get(self.name, set())):
                self.requests.put(("cycle", "new data"))
            elif self.live.due():  # scored on the line's thread, not the factory's tick
                self.requests.put(("live", ""))

    def follow_capture(self) -> None:
        """A follower's lines: the capture settings of the policy file as it is now (at
        most every 10 s; an invalid file keeps the last good settings)."""
        now = time.monotonic()
        if now - self._capture_read_at < _FOLLOW_CAPTURE_S:
            return
        self._capture_read_at = now
        try:
            policy = load_policy(self.path)
        except PolicyError:
            return
        if policy.name == self.name:
            wire_capture(self.services, policy)

    def _serving_url(self) -> str | None:
        serving = self.services.serving
        return serving.server.url if serving is not None else None

    def sync_serving(self) -> None:
        """A draining line still serves (its champion, its canary) until it is removed."""
        serving = self.services.serving
        if serving is not None:
            serving.sync(self.ctx)

    def heartbeat(self, stopped: bool = False) -> dict[str, Any]:
        """What `aifactory status` shows of this line (the runner writes every line's at once)."""
        return heartbeat(self, stopped)

    # scheduling ---------------------------------------------------------------------------

    def schedule_cycles(self) -> None:
        if self.services.cycles is None and not self.draining.is_set():
            self.schedule.cycles(self.ctx.policy)  # --cycles/--once and a drain ask for none

    def unschedule(self) -> None:
        self.schedule.remove()

    # a staged policy, applied by the line's thread ------------------------------------

    def adopt(self, policy: Policy) -> None:
        """Switch every part that depends on the policy (between cycles). What can fail
        (the workload's import, the data source, the advisor) is built first: a failure
        leaves the line on its last good policy (audited by the line's trouble handler)."""
        ctx = self.ctx
        old = ctx.policy
        workload = load_workload(policy.workload)
        traffic = traffic_source(self.services, policy)
        source = make_source(policy.data, offered(traffic))
        advisor = make_advisor(policy.advisor)
        ctx.book.save_policy(policy, str(self.path))
        ctx.policy, ctx.advisor, ctx.source = policy, advisor, source
        ctx.kept_traffic = traffic
        wire_capture(self.services, policy)
        ctx.ingestor.data_policy = policy.data
        ctx.workload, ctx.workload_spec = workload, policy.workload
        if policy.workload != old.workload:
            ctx.cluster.close()  # a waiting worker has the old workload's code imported
        ctx.cluster = reconfigure(ctx.cluster, policy.cluster)
        wire_gpu(self.services.gpus, ctx)
        serving = self.services.serving
        if serving is not None:
            serving.server.line(self.name).max_tokens_limit = policy.serving.max_tokens
        if self.services.budget is not None:
            self.services.budget.set_line(self.name, self.spec, policy)
        if not self.services.many_lines:  # a factory of one line: its slots are its own
            self.services.slots.resize(policy.tuning.parallel_trials, timeout_s=0)
        ctx.audit.append(
            agent="controller",
            action="reload_policy",
            outcome="taken",
            reason=f"policy {old.version} -> {policy.version} from {self.path}",
            figures={"from": old.version, "to": policy.version, "line": self.name},
            policy_version=policy.version,
        )
        self.say(f"[policy] now using {policy.name}@{policy.version}")
        if not self.draining.is_set():
            self.schedule_cycles()

    @property
    def runs(self) -> list[CycleRun]:
        return self.cycles.runs if self.cycles is not None else []
