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
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from rich.console import Console

from adapters.cluster import make_cluster, reconfigure
from adapters.cluster.base import Cluster, ClusterView
from adapters.cluster.slots import SlotPool, SlottedCluster
from adapters.data_sources import make_source
from adapters.llm import make_advisor
from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store, utcnow_iso
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook
from adapters.workload.loader import load_workload
from controller.context import LineContext
from controller.cycle_runner import CycleRun, CycleRunner
from controller.gpu import FactoryGpus
from controller.graph import build_cycle_graph
from controller.ingest import Ingestor
from controller.nodes.study import open_storage
from controller.overview import FactoryView
from controller.progress import ProgressReporter
from controller.settings import Settings
from controller.watch import PolicyWatch
from policies.factory import LineSpec
from policies.model import Policy

#: An idle line's thread wakes this often to look at its staged policy and drain state
#: (each of those also wakes it at once with a request of its own).
_IDLE_WAKE_S = 5.0
#: How long a line waits after trouble of its own (audited) before it tries again.
_TROUBLE_S = 5.0


@dataclass
class FactoryServices:
    """What every line shares, built once by the factory runner."""

    settings: Settings
    console: Console
    store: Store
    audit: AuditLog
    registry: ModelRegistry
    ledger: Ledger
    catalog: DataCatalog
    book: CycleBook
    rollouts: RolloutBook
    scheduler: BackgroundScheduler
    gpus: FactoryGpus
    slots: SlotPool
    started: float
    checkpointer: Any = None
    serving: Any = None  # ServingSync, when the factory serves
    budget: Any = None  # FactoryBudget, when the factory has shared limits
    energy_note: str = ""  # how energy is measured here (for `aifactory status`)
    many_lines: bool = False
    cycles: int | None = None  # --cycles/--once: each line stops after this many
    lines: dict[str, ProductionLine] = field(default_factory=dict)
    measuring: threading.Lock = field(default_factory=threading.Lock)
    _optuna: Any = None
    _optuna_lock: threading.Lock = field(default_factory=threading.Lock)

    def study_storage(self) -> Any:
        """The factory's one Optuna storage, made on first use (by the first trainer)."""
        with self._optuna_lock:
            if self._optuna is None:
                self._optuna = open_storage(self.store.url)
            return self._optuna

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)


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
        self.ctx = self._build(policy)
        self.graph: Any = None
        self.cycles: CycleRunner | None = None
        self.done = 0  # cycles completed or failed
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.ctx.name

    def say(self, message: str) -> None:
        prefix = f"[{self.name}] " if self.services.many_lines else ""
        self.services.say(prefix + message)

    # set-up ---------------------------------------------------------------------------

    def _build(self, policy: Policy) -> LineContext:
        s = self.services
        st = s.settings
        audit = s.audit.for_line(policy.name)
        ingestor = Ingestor(
            policy_name=policy.name,
            data_policy=policy.data,
            catalog=s.catalog,
            audit=audit,  # type: ignore[arg-type]
            data_dir=st.state_dir / "data",
            quarantine_dir=st.state_dir / "quarantine",
        )
        ctx = LineContext(
            policy=policy,
            store=s.store,
            audit=audit,
            registry=s.registry,
            ledger=s.ledger,
            catalog=s.catalog,
            book=s.book,
            cluster=self._cluster(policy),
            workload=load_workload(policy.workload),
            workload_spec=policy.workload,
            source=make_source(policy.data),
            ingestor=ingestor,
            trials_dir=st.state_dir / "trials",
            threads=st.threads,
            reporter=ProgressReporter(s.console, prefix=self._prefix(policy)),
            stop_event=self.stop_event,
            on_champion_changed=lambda: self.sync_serving(),
            advisor=make_advisor(policy.advisor),
            rollouts=s.rollouts,
            runtime=st.runtime,
            study_storage=s.study_storage,
            trial_slots=lambda: s.slots.slots,
            measuring=s.measuring,
        )
        self._wire_gpu(ctx)
        if s.serving is not None:
            ctx.traffic = s.serving.server.line(policy.name)
        if s.budget is not None:
            ctx.budget = s.budget.line(policy.name)
        return ctx

    def _prefix(self, policy: Policy) -> str:
        return f"[{policy.name}] " if self.services.many_lines else ""

    def _cluster(self, policy: Policy) -> Cluster:
        return SlottedCluster(make_cluster(policy.cluster), self.services.slots, policy.name)

    def _wire_gpu(self, ctx: LineContext) -> None:
        gpus = self.services.gpus
        ctx.max_power_w = gpus.max_power_w(ctx.policy)
        ctx.power_knob_problem = gpus.knob_problem(ctx.policy)
        ctx.gpu_count = gpus.trial_devices()
        if ctx.policy.cluster.kind != "local":  # trials run elsewhere: this GPU is not theirs
            ctx.power_knob_problem = "trials run on a Ray cluster, not on this machine's GPU"
        if ctx.power_knob_problem is None:
            ctx.set_power_limit = lambda watts, key: gpus.set_power_limit(ctx.policy, watts, key)
            ctx.power_limit_released = gpus.trial_ended

    def start(self) -> None:
        """Save the policy version, schedule the line's jobs, start its thread."""
        ctx = self.ctx
        ctx.book.save_policy(ctx.policy, str(self.path))
        ctx.book.publish_state(ctx.name, started_at=utcnow_iso())
        self.sync_serving()
        self._thread = threading.Thread(target=self._loop, name=f"line-{self.name}", daemon=True)
        self._thread.start()

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
            self.ctx, self.graph, self.say, self._retry_later, self._retry_after, s.started
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

    def undrain(self) -> None:
        """Listed in the factory file again before its drain ended: it goes on as before."""
        self.draining.clear()
        if self.alive:
            self.schedule_cycles()
            self.requests.put(("wake", ""))
        else:  # its thread had just ended
            self.cycles = None
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
            if kind == "resume":
                run = self.cycles.run("resume", resume_id=arg) if self.cycles else None
            elif self.awaiting():
                return
            else:
                run = self.cycles.run(arg) if self.cycles else None
        finally:
            self.busy.clear()
        if run is not None and run.status in ("completed", "failed"):
            self.done += 1
        self._drain_duplicates()

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
        if self._serving_differs(view):
            self.sync_serving()
        if self.busy.is_set() or not self.requests.empty():
            return
        waiting = view.awaiting.get(self.name, set())
        answered = self.answered(waiting) if waiting else []
        if answered:  # a draining line too: its paused cycle must end for it to go
            self.requests.put(("resume", answered[0]))
        elif not waiting and not self.draining.is_set():
            ctx = self.ctx
            completed = view.completed.get(self.name, 0)
            if ctx.ingestor.pending(ctx.source, completed, view.known.get(self.name, set())):
                self.requests.put(("cycle", "new data"))

    def _serving_differs(self, view: FactoryView) -> bool:
        """Does the endpoint serve something other than the registry and rollout say?"""
        serving = self.services.serving
        if serving is None:
            return False
        endpoint = serving.server.line(self.name)
        current, challenger = endpoint.current, endpoint.challenger
        champion = view.champions.get(self.name)
        rollout = view.rollouts.get(self.name)
        if (current.version if current else None) != champion:
            return champion is not None
        if rollout is None or rollout.champion_version != champion:
            return challenger is not None
        return challenger is None or (
            challenger[0].version != rollout.challenger_version
            or abs(challenger[1] - rollout.weight_pct) > 1e-9
        )

    def sync_serving(self) -> None:
        """A draining line still serves (its champion, its canary) until it is removed."""
        serving = self.services.serving
        if serving is not None:
            serving.sync(self.ctx)

    def heartbeat(self, stopped: bool = False) -> dict[str, Any]:
        """What `aifactory status` shows of this line (the runner writes every line's at once)."""
        s = self.services
        job = s.scheduler.get_job(self.job_id("cycle")) if s.scheduler.running else None
        nxt = job.next_run_time if job is not None and not stopped else None
        endpoint = s.serving.server.line(self.name) if s.serving is not None else None
        served = endpoint.current if endpoint is not None and not stopped else None
        stopped = stopped or not self.alive  # a line whose thread ended is not running
        return {
            "pid": 0 if stopped else os.getpid(),
            "heartbeat_at": utcnow_iso(),
            "next_cycle_at": nxt.astimezone(UTC).isoformat() if nxt else None,
            "serving_url": "" if stopped or s.serving is None else s.serving.server.url,
            "served_version": served.version if served is not None else None,
            "policy_version": self.ctx.policy.version,
            "policy_path": str(self.path),
            "owner": self.spec.owner,
            "energy_source": s.energy_note,
            "cluster": json.dumps(self._cluster_view(stopped), sort_keys=True, default=str),
        }

    def _cluster_view(self, stopped: bool) -> dict[str, Any]:
        """Where this line's trials run: the cluster's nodes and trials running where."""
        cluster = self.ctx.cluster
        if stopped or not isinstance(cluster, ClusterView):
            return {}
        try:
            return cluster.status()
        except Exception as exc:  # a view is never worth a failed heartbeat
            return {"error": f"{type(exc).__name__}: {exc}"}

    # scheduling ---------------------------------------------------------------------------

    def job_id(self, what: str) -> str:
        return f"{self.name}:{what}"

    def schedule_cycles(self) -> None:
        s = self.services
        if s.cycles is not None or self.draining.is_set():
            return  # --cycles/--once: the loop asks for cycles itself; a drain asks for none
        sched = self.ctx.policy.triggers.schedule
        trigger: Any
        if sched.cron:
            trigger = CronTrigger.from_crontab(sched.cron, timezone=UTC)
        else:
            trigger = IntervalTrigger(seconds=sched.every_s or 3600.0, timezone=UTC)
        s.scheduler.add_job(
            lambda: self.requests.put(("cycle", "schedule")),
            trigger,
            id=self.job_id("cycle"),
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    def _retry_after(self, hours: float) -> None:
        """A deferred retraining comes back when its energy window opens."""
        when = datetime.now(UTC) + timedelta(hours=hours)
        self.services.scheduler.add_job(
            lambda: self.requests.put(("cycle", "energy window")),
            DateTrigger(run_date=when),
            id=self.job_id("energy-window"),
            replace_existing=True,
        )
        self.say(f"[energy] retraining deferred to {when.isoformat(timespec='minutes')}")

    def _retry_later(self, cycle_id: str, delay_s: float) -> None:
        """Resume a failed cycle after its retry delay, unless the line stops first."""
        if not self.stop_event.wait(delay_s):
            self.requests.put(("resume", cycle_id))

    def unschedule(self) -> None:
        for what in ("cycle", "energy-window"):
            job = self.services.scheduler.get_job(self.job_id(what))
            if job is not None:
                job.remove()

    # a staged policy, applied by the line's thread ------------------------------------

    def adopt(self, policy: Policy) -> None:
        """Switch every part that depends on the policy (between cycles). What can fail
        (the workload's import, the data source, the advisor) is built first: a failure
        leaves the line on its last good policy (audited by the line's trouble handler)."""
        ctx = self.ctx
        old = ctx.policy
        workload = load_workload(policy.workload)
        source, advisor = make_source(policy.data), make_advisor(policy.advisor)
        ctx.book.save_policy(policy, str(self.path))
        ctx.policy, ctx.advisor, ctx.source = policy, advisor, source
        ctx.ingestor.data_policy = policy.data
        ctx.workload, ctx.workload_spec = workload, policy.workload
        if policy.workload != old.workload:
            ctx.cluster.close()  # a waiting worker has the old workload's code imported
        ctx.cluster = reconfigure(ctx.cluster, policy.cluster)
        self._wire_gpu(ctx)
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
