"""The daemon: schedules production cycles, ticks telemetry between them, serves the champion.

APScheduler (3.x) only *requests* work: the cycle job fires on the policy's schedule, the
watch tick notices new data, policy edits, approvals and alias moves. Cycles run on the
main thread, one at a time, so a signal sets a stop flag that every long step checks;
the interrupted cycle stays checkpointed and resumes at the next start.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from langgraph.types import Command
from rich.console import Console
from rich.table import Table

from adapters.cluster.local import LocalProcessCluster
from adapters.data_sources import make_source
from adapters.energy import probe_energy_meter
from adapters.gpu.guard import GpuSettingsGuard
from adapters.gpu.probe import probe_gpus
from adapters.llm import make_advisor
from adapters.serving import ServedModel, ServingError, ServingServer
from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store, utcnow_iso
from adapters.store.gpu_settings import SqlSettingsJournal
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry, ModelVersion
from adapters.store.rollouts import ACTIVE as ROLLOUT_ACTIVE
from adapters.store.rollouts import RolloutBook
from adapters.telemetry import HostTelemetry
from adapters.workload.protocol import load_workload
from agents.energy import PowerRequest, allocate_power_limits
from controller.cycle import CycleInterrupted, FactoryContext, ProductionCycle
from controller.ingest import Ingestor
from controller.progress import ProgressReporter
from controller.rollout import FINAL as ROLLOUT_FINAL
from controller.rollout import roll_back
from controller.settings import Settings
from policies.loader import PolicyError, load_policy
from policies.model import Policy

BACKOFF_S = (1.0, 2.0, 3.0, 5.0, 8.0)
#: LangGraph counts every node run; a canary loops over its steps (and their extensions).
RECURSION_LIMIT = 1000


@dataclass
class CycleRun:
    cycle_id: str
    trigger: str
    status: str
    stage_s: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    candidate: int | None = None
    blessed: bool | None = None
    ended_after_s: float = 0.0


class Daemon:
    def __init__(self, settings: Settings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console()
        self.stop_event = threading.Event()
        self.requests: queue.Queue[tuple[str, str]] = queue.Queue()
        self.runs: list[CycleRun] = []
        self._serve_lock = threading.Lock()
        self._busy = threading.Event()
        self._policy_mtime: float | None = None
        self._refused_policy: str | None = None
        self.server: ServingServer | None = None
        self.started = time.monotonic()
        self._staged: Policy | None = None
        self._attempts: dict[str, int] = {}
        self._signal_name: str | None = None
        self._served: dict[int, int] = {}
        self.max_attempts = 3

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    # setup ----------------------------------------------------------------------------

    def _build(self, policy: Policy) -> FactoryContext:
        s = self.settings
        store = Store(s.resolved_db_url)
        store.create_all()
        audit = AuditLog(store)
        catalog = DataCatalog(store)
        ingestor = Ingestor(
            policy_name=policy.name,
            data_policy=policy.data,
            catalog=catalog,
            audit=audit,
            data_dir=s.state_dir / "data",
            quarantine_dir=s.state_dir / "quarantine",
        )
        return FactoryContext(
            policy=policy,
            store=store,
            audit=audit,
            registry=ModelRegistry(store, s.state_dir / "models"),
            ledger=Ledger(store),
            catalog=catalog,
            book=CycleBook(store),
            cluster=LocalProcessCluster(**policy.cluster.model_dump()),
            workload=load_workload(policy.workload),
            workload_spec=policy.workload,
            source=make_source(policy.data),
            ingestor=ingestor,
            trials_dir=s.state_dir / "trials",
            threads=s.threads,
            reporter=ProgressReporter(self.console),
            stop_event=self.stop_event,
            on_champion_changed=self.sync_serving,
            advisor=make_advisor(policy.advisor),
            rollouts=RolloutBook(store),
        )

    def _install_signals(self) -> None:
        """Only set a flag in the handler: printing or locking there could deadlock."""

        def handler(signum: int, _frame: Any) -> None:
            if self.stop_event.is_set():
                os._exit(130)  # second signal: the operator insists
            self._signal_name = signal.Signals(signum).name
            self.stop_event.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)

    # GPU ------------------------------------------------------------------------------

    def _setup_gpu(self, policy: Policy) -> None:
        """Probe the GPU adapter; restore any setting a crashed run left changed."""
        ctx = self.ctx
        cores = os.cpu_count() or 1
        ctx.max_power_w = cores * policy.energy.watts_per_core
        self.gpu: Any = None
        self.guard: GpuSettingsGuard | None = None
        nvml = (
            importlib.import_module(self.settings.nvml_module)
            if self.settings.nvml_module
            else None
        )
        prefer = policy.energy.gpu if policy.energy.prefer_gpu else "none"
        self.gpu, self.gpu_note = probe_gpus(prefer, nvml=nvml)
        if self.gpu is None:
            ctx.power_knob_problem = self.gpu_note
            return
        devices = self.gpu.devices()
        ctx.max_power_w = sum(d.power_limit_max_w for d in devices)
        if hasattr(self.gpu, "set_power_limit_w"):
            self.guard = GpuSettingsGuard(self.gpu, SqlSettingsJournal(ctx.store), devices)
            self._restore_gpu_settings("at start (a previous run did not restore it)")
        if not policy.energy.allow_power_limits:
            ctx.power_knob_problem = "the policy does not allow it (energy.allow_power_limits)"
        elif self.guard is None:
            ctx.power_knob_problem = f"{self.gpu_note}: read-only"
        else:
            ctx.power_knob_problem = None
            ctx.set_power_limit = self._set_power_limit

    def _restore_gpu_settings(self, when: str) -> None:
        if self.guard is None:
            return
        for result in self.guard.restore_all():
            self.ctx.audit.append(
                agent="energy",
                action="restore_gpu_setting",
                outcome="taken" if result.status in ("applied", "unchanged") else "failed",
                reason=f"GPU {result.index} {result.knob} back to {result.requested:g} {when}: "
                f"{result.status}",
                figures={
                    "index": result.index,
                    "knob": result.knob,
                    "previous": result.previous,
                    "restored": result.requested,
                },
                policy_version=self.ctx.policy.version,
            )

    def _set_power_limit(self, watts: float, key: str) -> str:
        """Apply a trial's power limit (within the facility cap), recorded before it is set."""
        ctx, guard = self.ctx, self.guard
        assert guard is not None
        device = self.gpu.devices()[0]
        requested = watts
        cap = ctx.policy.energy.facility_power_cap_w
        if cap is not None:
            limits = allocate_power_limits(
                cap,
                [PowerRequest(key, watts, device.power_limit_min_w, device.power_limit_max_w)],
            )
            if limits is None:
                status = f"refused: facility cap {cap:g} W is below the device minimum"
                ctx.audit.append(
                    agent="energy",
                    action="set_power_limit",
                    outcome="refused",
                    reason=status,
                    figures={"requested_w": watts, "cap_w": cap},
                    key=f"{key}:power",
                    policy_version=ctx.policy.version,
                )
                return status
            watts = limits[key]
        result = guard.apply_power_limit_w(device.index, watts, reason=key)
        ok = result.status in ("applied", "unchanged")
        status = f"{result.status}: {watts:g} W" + (
            f" (asked {requested:g} W, facility cap {cap:g} W)" if watts != requested else ""
        )
        ctx.audit.append(
            agent="energy",
            action="set_power_limit",
            outcome="taken" if ok else "refused",
            reason=f"GPU {device.index} power limit {status}"
            + ("" if ok else f"; planning without this knob ({result.message})"),
            figures={
                "index": device.index,
                "requested_w": requested,
                "applied_w": watts,
                "previous_w": result.previous,
                "status": result.status,
                "cap_w": cap,
            },
            key=f"{key}:power",
            policy_version=ctx.policy.version,
        )
        return status

    # serving --------------------------------------------------------------------------

    def sync_serving(self) -> None:
        """Make the server serve what the registry's champion alias and the active rollout
        say (reconcile): the champion, and during a canary the challenger at its weight."""
        if self.server is None:
            return
        ctx = self.ctx
        with self._serve_lock:
            champion = ctx.champion()
            current = self.server.current
            if champion is None:
                return
            if current is not None and current.version == champion.version:
                self._sync_canary(current)
                return
            served = self._load_served(
                champion,
                champion.version,
                f"v{champion.version} for serving",
                "still serving " + (f"v{current.version}" if current else "nothing"),
                key=f"serve-failed:{ctx.name}:{champion.version}:{champion.artefact_sha256}",
            )
            if served is None:
                return
            self.server.swap(served)
            ctx.audit.append(
                agent="deployer",
                action="serve",
                outcome="taken",
                reason=f"now serving v{champion.version} at {self.server.url}/v1",
                figures={
                    "version": champion.version,
                    "previous": current.version if current else None,
                    "url": self.server.url,
                },
                policy_version=ctx.policy.version,
            )
            self._say(f"[deployer] serving {ctx.name}:v{champion.version} at {self.server.url}/v1")
            new = self.server.current
            if new is not None:
                self._sync_canary(new)

    def _sync_canary(self, champion: ServedModel) -> None:
        """Route the active rollout's share of traffic to its challenger (or none)."""
        assert self.server is not None
        ctx = self.ctx
        rollout = ctx.rollouts.active(ctx.name) if ctx.rollouts else None
        want: tuple[int, float, float] | None = None
        if rollout is not None and rollout.champion_version == champion.version:
            want = (rollout.challenger_version, rollout.weight_pct, rollout.loss_sample_rate)
        have = self.server.challenger
        if want is None:
            if have is not None:
                self.server.swap(champion)
                self._say(f"[deployer] canary v{have[0].version} out of service")
            return
        version, weight, sample_rate = want
        if have is not None and have[0].version == version:
            if abs(have[1] - weight) > 1e-9:
                self.server.route(champion, have[0], weight, sample_rate)
                self._audit_weight(version, have[1], weight)
            return
        served = self._load_served(
            ctx.registry.get(ctx.name, version),
            version,
            f"canary v{version}",
            "its share stays on the champion",
            key=f"serve-failed:{ctx.name}:canary:{version}",
        )
        if served is None:
            return
        self.server.route(champion, served, weight, sample_rate)
        self._audit_weight(version, 0.0, weight)

    def _load_served(
        self, model: ModelVersion | None, version: int, what: str, otherwise: str, key: str
    ) -> ServedModel | None:
        """Load a registered version as serving runs it (checksum verified, one torch thread).
        A failure is audited once per ``key``, not on every tick, and serving keeps what it
        has (``otherwise`` says what that is)."""
        ctx = self.ctx
        try:
            assert model is not None, f"no model version {version}"
            generator = ctx.workload.load(ctx.registry.verified_path(model), threads=1)
        except Exception as exc:
            ctx.audit.append(
                agent="deployer",
                action="serve",
                outcome="failed",
                reason=f"cannot load {what}: {exc}; {otherwise}",
                figures={"version": version},
                policy_version=ctx.policy.version,
                key=key,
            )
            return None
        return ServedModel(f"{ctx.name}:v{version}", version, generator)

    def _audit_weight(self, version: int, before: float, after: float) -> None:
        ctx = self.ctx
        ctx.audit.append(
            agent="deployer",
            action="canary_weight",
            outcome="taken",
            reason=f"canary v{version}: {before:g}% -> {after:g}% of traffic",
            figures={"version": version, "from_pct": before, "to_pct": after},
            policy_version=ctx.policy.version,
        )
        self._say(f"[deployer] canary v{version} takes {after:g}% of traffic")

    # watch tick -----------------------------------------------------------------------

    def tick(self) -> None:
        """Between cycles: check the policy file, follow alias moves, notice data and approvals.

        Runs on the scheduler's thread; it only *requests* work from the main thread.
        """
        try:
            self._check_policy_file()
            self.sync_serving()
            ctx = self.ctx
            if not self._busy.is_set() and self.requests.empty():
                waiting = self._waiting_cycles()
                answered = self._answered(waiting) if waiting else []
                if answered:
                    self.requests.put(("resume", answered[0]))
                elif not waiting:
                    completed = ctx.book.completed_count(ctx.name)
                    if ctx.ingestor.pending(ctx.source, completed):
                        self.requests.put(("cycle", "new data"))
            self._book_served_tokens()
            sample = self.telemetry.sample().as_dict()
            if self.gpu is not None:
                gpus = self.gpu.sample()
                sample |= {
                    "gpu_power_w": round(sum(g.power_w for g in gpus), 1),
                    "gpu_util_pct": round(sum(g.util_gpu_pct for g in gpus) / len(gpus), 1),
                    "gpu_method": gpus[0].method if gpus else "",
                }
            self._publish(telemetry=sample)
        except Exception as exc:  # the tick must never take the daemon down
            self._say(f"[daemon] tick error: {type(exc).__name__}: {exc}")

    def _waiting_cycles(self) -> set[str]:
        """Cycles paused for a person (an approval or a paused canary step)."""
        recent = self.ctx.book.recent(self.ctx.name, 5)
        return {r.id for r in recent if r.status == "awaiting_approval"}

    def _awaiting(self) -> bool:
        return bool(self._waiting_cycles())

    def _answered(self, waiting: set[str]) -> list[str]:
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

    def _book_served_tokens(self) -> None:
        """Tokens served since the last tick go on the ledger, per model version."""
        if self.server is None:
            return
        for version, m in self.server.metrics().items():
            total = int(m.get("prompt_tokens", 0) + m.get("completion_tokens", 0))
            delta = total - self._served.get(version, 0)
            if delta > 0:
                self.ctx.ledger.record(
                    key=f"serve:{os.getpid()}:{version}:{total}",
                    policy_name=self.ctx.name,
                    kind="serve",
                    tokens=delta,
                    joules=0.0,
                    method="unmetered",
                    model_version=version,
                )
                self._served[version] = total

    def _check_policy_file(self) -> None:
        """Validate an edited policy file; stage a good one, refuse a bad one (audited).

        Staged policies are applied by the main thread between cycles, so a cycle never
        mixes two policy versions.
        """
        path = self.settings.policy
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._policy_mtime:
            return
        self._policy_mtime = mtime
        ctx = self.ctx
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            text = "; ".join(str(p) for p in exc.problems)
            ctx.audit.append(
                agent="controller",
                action="reload_policy",
                outcome="refused",
                reason=f"{path} has errors; keeping policy {ctx.policy.version}: {text}",
                figures={"problems": [p.__dict__ for p in exc.problems]},
                policy_version=ctx.policy.version,
            )
            self._say(f"[policy] refused, keeping the last good policy:\n{exc}")
            return
        if policy.version == ctx.policy.version:
            self._staged = None
            return
        if policy.name != ctx.policy.name:
            ctx.audit.append(
                agent="controller",
                action="reload_policy",
                outcome="refused",
                reason=f"policy name changed from {ctx.policy.name} to {policy.name}; "
                "a running daemon keeps its production line (restart to switch)",
                figures={},
                policy_version=ctx.policy.version,
            )
            return
        self._staged = policy
        if not self._busy.is_set():
            self.requests.put(("policy", ""))

    def _apply_staged_policy(self) -> None:
        """Main thread, between cycles: switch every part that depends on the policy."""
        policy, self._staged = self._staged, None
        if policy is None or policy.version == self.ctx.policy.version:
            return
        ctx = self.ctx
        ctx.book.save_policy(policy, str(self.settings.policy))
        old, old_workload = ctx.policy.version, ctx.policy.workload
        ctx.policy = policy
        ctx.advisor = make_advisor(policy.advisor)
        ctx.source = make_source(policy.data)
        ctx.ingestor.data_policy = policy.data
        ctx.workload = load_workload(policy.workload)
        ctx.workload_spec = policy.workload
        if isinstance(ctx.cluster, LocalProcessCluster):
            ctx.cluster.configure(**policy.cluster.model_dump())
        if policy.workload != old_workload:
            ctx.cluster.close()  # a waiting worker has the old workload's code imported
        if self.server is not None:
            self.server.max_tokens_limit = policy.serving.max_tokens
        ctx.audit.append(
            agent="controller",
            action="reload_policy",
            outcome="taken",
            reason=f"policy {old} -> {policy.version} from {self.settings.policy}",
            figures={"from": old, "to": policy.version},
            policy_version=policy.version,
        )
        self._say(f"[policy] now using {policy.name}@{policy.version}")
        self._schedule_cycles()

    def _publish(self, stopped: bool = False, telemetry: dict[str, Any] | None = None) -> None:
        job = self.scheduler.get_job("cycle") if getattr(self, "scheduler", None) else None
        nxt = job.next_run_time if job is not None and not stopped else None
        self.ctx.book.publish_state(
            self.ctx.name,
            pid=0 if stopped else os.getpid(),
            heartbeat_at=utcnow_iso(),
            next_cycle_at=nxt.astimezone(UTC).isoformat() if nxt else None,
            serving_url="" if stopped or self.server is None else self.server.url,
            served_version=(
                self.server.current.version
                if self.server and self.server.current and not stopped
                else None
            ),
            policy_version=self.ctx.policy.version,
            policy_path=str(self.settings.policy),
            **({"telemetry": json.dumps(telemetry)} if telemetry else {}),
        )

    def _schedule_retry_after(self, hours: float) -> None:
        """A deferred retraining comes back when its energy window opens."""
        if not getattr(self, "scheduler", None):
            return
        when = datetime.now(UTC) + timedelta(hours=hours)
        self.scheduler.add_job(
            lambda: self.requests.put(("cycle", "energy window")),
            DateTrigger(run_date=when),
            id="energy-window",
            replace_existing=True,
        )
        self._say(f"[energy] retraining deferred to {when.isoformat(timespec='minutes')}")

    def _schedule_cycles(self) -> None:
        if not getattr(self, "scheduler", None):
            return
        sched = self.ctx.policy.triggers.schedule
        trigger: Any
        if sched.cron:
            trigger = CronTrigger.from_crontab(sched.cron, timezone=UTC)
        else:
            trigger = IntervalTrigger(seconds=sched.every_s or 3600.0, timezone=UTC)
        self.scheduler.add_job(
            lambda: self.requests.put(("cycle", "schedule")),
            trigger,
            id="cycle",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    # cycles ---------------------------------------------------------------------------

    def run_cycle(self, graph: Any, trigger: str, resume_id: str | None = None) -> CycleRun | None:
        """Run (or resume) one cycle to its end, an approval pause, or an interruption."""
        ctx = self.ctx
        if resume_id is not None:
            row = ctx.book.get(resume_id)
            if row is None or row.status not in ("running", "awaiting_approval"):
                return None  # already finished: a duplicate request
            config: dict[str, Any] = {
                "configurable": {"thread_id": row.id},
                "recursion_limit": RECURSION_LIMIT,
            }
            snapshot = graph.get_state(config)
            if snapshot.next and snapshot.interrupts:
                answer = self._answer(row.id, snapshot.interrupts)
                if answer is None:
                    if row.status != "awaiting_approval":
                        ctx.book.finish(row.id, "awaiting_approval", {})
                    return CycleRun(row.id, trigger, "awaiting_approval")
                payload: Any = Command(resume=answer)
            elif snapshot.next:
                payload = None
            elif snapshot.values:
                # the graph ended but the daemon died before recording it
                return self._finish(row.id, row.trigger, dict(snapshot.values))
            else:
                payload = {"cycle_id": row.id, "trigger": row.trigger}
            self._say(f"[daemon] resuming cycle {row.id}")
            ctx.audit.append(
                agent="controller",
                action="resume_cycle",
                outcome="taken",
                reason=f"resuming {row.id} from its last checkpoint"
                + (f" before {', '.join(snapshot.next)}" if snapshot.next else ""),
                figures={"next": list(snapshot.next)},
                cycle_id=row.id,
                policy_version=ctx.policy.version,
            )
            if row.status != "running":
                ctx.book.finish(row.id, "running", {})
            trigger = row.trigger
        else:
            row = ctx.book.start(ctx.name, ctx.policy.version, trigger)
            config = {"configurable": {"thread_id": row.id}, "recursion_limit": RECURSION_LIMIT}
            payload = {"cycle_id": row.id, "trigger": trigger}
            ctx.audit.append(
                agent="controller",
                action="start_cycle",
                outcome="taken",
                reason=f"cycle {row.number} started ({trigger})",
                figures={"trigger": trigger},
                cycle_id=row.id,
                policy_version=ctx.policy.version,
                key=f"{row.id}:start",
            )
            self._say(
                f"[daemon] cycle {row.id} ({trigger}) at {time.monotonic() - self.started:.1f}s"
            )
        try:
            result = graph.invoke(payload, config, durability="sync")
        except CycleInterrupted:
            ctx.audit.append(
                agent="controller",
                action="interrupt_cycle",
                outcome="deferred",
                reason=f"daemon stopping; {row.id} is checkpointed and resumes on restart",
                figures={},
                cycle_id=row.id,
                policy_version=ctx.policy.version,
            )
            return None
        except Exception as exc:
            return self._cycle_failed(row.id, trigger, exc)
        self._attempts.pop(row.id, None)
        if result.get("__interrupt__"):
            ctx.book.finish(row.id, "awaiting_approval", {})
            self._say(f"[daemon] {row.id} awaits approval (aifactory status shows the id)")
            return CycleRun(row.id, trigger, "awaiting_approval")
        return self._finish(row.id, trigger, result)

    def _end_rollout_of_failed_cycle(self, cycle_id: str, error: str) -> None:
        """A canary nobody judges any more must not keep its share of traffic."""
        ctx = self.ctx
        row = ctx.rollouts.for_cycle(cycle_id) if ctx.rollouts else None
        if row is None or row.status not in ROLLOUT_ACTIVE:
            return
        reason = f"cycle {cycle_id} failed during the rollout: {error[:300]}"
        roll_back(
            ctx, cycle_id, row.challenger_version, reason, {"step": row.step}, by="controller"
        )

    def _answer(self, cycle_id: str, interrupts: Any) -> dict[str, Any] | None:
        """A person's answer to the cycle's pending interrupt: a promotion approval or a
        paused canary step (None while nobody has answered)."""
        ctx = self.ctx
        kinds = {getattr(i, "value", {}).get("kind", "approval") for i in interrupts}
        if "canary" in kinds:
            rollout = ctx.rollouts.for_cycle(cycle_id) if ctx.rollouts else None
            if rollout is None:
                return None
            if rollout.status in ROLLOUT_FINAL:
                # decided before a crash: the node finishes what the row says
                return {"approved": rollout.status == "promoted", "by": "", "reason": ""}
            if rollout.decision is None:
                return None
            return {
                "approved": rollout.decision == "continue",
                "by": rollout.decided_by,
                "reason": rollout.decision_reason,
            }
        answer = next(
            (
                a
                for a in ctx.book.approvals(ctx.name)
                if a.cycle_id == cycle_id and a.status in ("approved", "rejected")
            ),
            None,
        )
        if answer is None:
            return None
        return {
            "approved": answer.status == "approved",
            "by": answer.decided_by,
            "reason": answer.reason,
        }

    def _cycle_failed(self, cycle_id: str, trigger: str, exc: Exception) -> CycleRun | None:
        """A failed step is retried from its checkpoint with backoff; then the cycle fails."""
        ctx = self.ctx
        attempt = self._attempts.get(cycle_id, 0) + 1
        self._attempts[cycle_id] = attempt
        error = f"{type(exc).__name__}: {exc}"
        if attempt < self.max_attempts:
            delay = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
            ctx.audit.append(
                agent="controller",
                action="retry_cycle",
                outcome="deferred",
                reason=f"cycle {cycle_id} attempt {attempt} failed ({error}); retrying from its "
                f"last checkpoint in {delay:.0f}s",
                figures={"attempt": attempt, "error": error[:500]},
                cycle_id=cycle_id,
                policy_version=ctx.policy.version,
            )
            self._say(f"[daemon] cycle {cycle_id} attempt {attempt} failed: {error}; retrying")
            if not self.stop_event.wait(delay):
                self.requests.put(("resume", cycle_id))
            return None
        ctx.book.finish(cycle_id, "failed", {"error": error[:2000]})
        self._end_rollout_of_failed_cycle(cycle_id, error)
        ctx.audit.append(
            agent="controller",
            action="finish_cycle",
            outcome="failed",
            reason=f"cycle {cycle_id} failed after {attempt} attempts: {error}",
            figures={"attempts": attempt, "error": error[:2000]},
            cycle_id=cycle_id,
            policy_version=ctx.policy.version,
            key=f"{cycle_id}:finish",
        )
        self._say(f"[daemon] cycle {cycle_id} FAILED: {error}")
        run = CycleRun(cycle_id, trigger, "failed", ended_after_s=time.monotonic() - self.started)
        self.runs.append(run)
        return run

    def _finish(self, cycle_id: str, trigger: str, state: dict[str, Any]) -> CycleRun:
        ctx = self.ctx
        train = ctx.ledger.totals(ctx.name, cycle_id=cycle_id, kind="train")
        evals = ctx.ledger.totals(ctx.name, cycle_id=cycle_id, kind="eval")
        stage_s = dict(state.get("stage_s") or {})
        summary = {
            "trials": len(state.get("trials") or []),
            "candidate": state.get("candidate_version"),
            "blessed": state.get("blessed"),
            "promoted": bool(state.get("promoted")),
            "train_tokens": train.tokens,
            "train_joules": round(train.joules, 3),
            "eval_tokens": evals.tokens,
            "eval_joules": round(evals.joules, 3),
            "energy_method": train.method if train.tokens else evals.method,
            "stage_s": stage_s,
        }
        defer_h = state.get("defer_for_h")
        if defer_h:
            summary["deferred_for_h"] = round(defer_h, 3)
            self._schedule_retry_after(defer_h)
        ctx.book.finish(cycle_id, "completed", summary)
        ctx.audit.append(
            agent="controller",
            action="finish_cycle",
            outcome="taken",
            reason=f"cycle {cycle_id} completed",
            figures=summary,
            cycle_id=cycle_id,
            policy_version=ctx.policy.version,
            key=f"{cycle_id}:finish",
        )
        elapsed = time.monotonic() - self.started
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in _ordered(stage_s))
        self.console.print(
            f"[daemon] cycle {cycle_id} done at {elapsed:.1f}s since start; stages: {stages}",
            highlight=False,
            markup=False,
        )
        run = CycleRun(
            cycle_id,
            trigger,
            "completed",
            stage_s,
            bool(state.get("promoted")),
            state.get("candidate_version"),
            state.get("blessed"),
            elapsed,
        )
        self.runs.append(run)
        return run

    # main -----------------------------------------------------------------------------

    def run(self, cycles: int | None = None) -> int:
        s = self.settings
        # first of all: a SIGTERM during start-up must still run the clean exit below
        # (restore GPU settings, audit the stop), not kill the process mid-setup
        self._install_signals()
        s.ensure_dirs()
        try:
            policy = load_policy(s.policy)
        except PolicyError as exc:
            self._say(f"[policy] {exc}")
            return 2
        self.ctx = ctx = self._build(policy)
        self.telemetry = HostTelemetry(policy.energy.watts_per_core)
        self._setup_gpu(policy)
        self._policy_mtime = s.policy.stat().st_mtime
        ctx.book.save_policy(policy, str(s.policy))
        meter, energy_note = probe_energy_meter(
            prefer_gpu=policy.energy.prefer_gpu, watts_per_core=policy.energy.watts_per_core
        )
        with contextlib.suppress(Exception):
            meter.close()  # type: ignore[attr-defined]
        ctx.audit.append(
            agent="controller",
            action="start_daemon",
            outcome="taken",
            reason=f"daemon pid {os.getpid()} started with policy {policy.name}@{policy.version}",
            figures={
                "db": _redact(ctx.store.url),
                "state_dir": str(s.state_dir),
                "energy": energy_note,
                "gpu": self.gpu_note,
                "power_knob": ctx.power_knob_problem or "permitted",
                "cluster": ctx.cluster.description,
            },
            policy_version=policy.version,
        )
        self._say(
            f"[daemon] policy {policy.name}@{policy.version}; store {_redact(ctx.store.url)}; "
            f"energy: {energy_note}; GPU: {self.gpu_note}"
        )
        if s.serve:
            self.server = ServingServer(s.host, s.port, max_tokens_limit=policy.serving.max_tokens)
            try:
                self.server.start()
            except ServingError as exc:
                self._say(f"[serving] {exc}")
                return 3
            ctx.traffic = self.server
            self.sync_serving()
        ctx.book.publish_state(policy.name, started_at=utcnow_iso(), energy_source=energy_note)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_job(
            self.tick, IntervalTrigger(seconds=s.tick_s), id="tick", coalesce=True, max_instances=1
        )
        if cycles is None:
            self._schedule_cycles()
        self.scheduler.start()
        done = 0
        try:
            with ctx.store.checkpointer() as checkpointer:
                graph = ProductionCycle(ctx).build(checkpointer)
                pending = ctx.book.unfinished(ctx.name)
                if pending is not None:
                    self.requests.put(("resume", pending.id))
                elif cycles is None:
                    self.requests.put(("cycle", "start"))
                while not self.stop_event.is_set() and (cycles is None or done < cycles):
                    if self._staged is not None and not self._busy.is_set():
                        self._apply_staged_policy()
                    if cycles is not None and self.requests.empty() and not self._awaiting():
                        self.requests.put(("cycle", "cycles"))
                    try:
                        kind, arg = self.requests.get(timeout=1.0)
                    except queue.Empty:
                        continue
                    self._busy.set()  # before anything else: the tick must see us busy
                    try:
                        if kind == "policy":
                            continue
                        if kind == "resume":
                            run = self.run_cycle(graph, "resume", resume_id=arg)
                        elif self._awaiting():
                            continue
                        else:
                            run = self.run_cycle(graph, arg)
                    finally:
                        self._busy.clear()
                    if run is not None and run.status in ("completed", "failed"):
                        done += 1
                    self._drain_duplicates()
        finally:
            if self.stop_event.is_set():
                self._say(f"[daemon] {self._signal_name or 'stop'}: current step checkpointed")
            self.scheduler.shutdown(wait=False)
            with contextlib.suppress(Exception):
                self._publish(stopped=True)
            with contextlib.suppress(Exception):
                self._book_served_tokens()
            if self.server is not None:
                self.server.stop()
            with contextlib.suppress(Exception):
                ctx.cluster.close()  # a waiting trial worker holds memory (and a CUDA context)
            with contextlib.suppress(Exception):
                self._restore_gpu_settings("on exit")
            ctx.audit.append(
                agent="controller",
                action="stop_daemon",
                outcome="taken",
                reason=f"daemon pid {os.getpid()} stopped after {done} cycle(s)",
                figures={"cycles": done},
                policy_version=ctx.policy.version,
            )
            self.print_summary()
            ctx.store.dispose()
        failed = [r.cycle_id for r in self.runs if r.status == "failed"]
        if cycles is not None and failed:
            self._say(f"[daemon] failed cycle(s): {', '.join(failed)} (see `aifactory audit`)")
            return 1
        return 0

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

    # summary --------------------------------------------------------------------------

    def print_summary(self) -> None:
        ctx = self.ctx
        table = Table(title=f"aifactory run summary: {ctx.name}")
        for col in (
            "cycle",
            "trigger",
            "trials",
            "candidate",
            "verdict",
            "promoted",
            "eval bits/byte",
            "train tokens",
            "joules",
            "tokens/J",
            "stages (s)",
        ):
            table.add_column(col)
        all_tokens = 0
        all_joules = 0.0
        methods: set[str] = set()
        trained = promoted = 0
        for run in self.runs:
            row = ctx.book.get(run.cycle_id)
            summary = json.loads(row.summary) if row else {}
            cand = ctx.registry.get(ctx.name, run.candidate) if run.candidate else None
            bpb = cand.evaluation.get("candidate_recent_bpb") if cand else None
            tok = int(summary.get("train_tokens", 0)) + int(summary.get("eval_tokens", 0))
            joules = float(summary.get("train_joules", 0)) + float(summary.get("eval_joules", 0))
            method = summary.get("energy_method", "estimated")
            if tok:
                methods.add(method)
            all_tokens += tok
            all_joules += joules
            trained += int(summary.get("trials", 0))
            promoted += int(run.promoted)
            verdict = "-" if run.blessed is None else ("blessed" if run.blessed else "refused")
            table.add_row(
                run.cycle_id,
                run.trigger,
                str(summary.get("trials", 0)),
                f"v{run.candidate}" if run.candidate else "-",
                verdict,
                "yes" if run.promoted else "no",
                f"{bpb:.4f}" if bpb else "-",
                f"{int(summary.get('train_tokens', 0)):,}",
                f"{joules:,.0f} ({method})" if tok else "-",
                f"{tok / joules:,.0f}" if joules else "-",
                " ".join(f"{k}={v:.1f}" for k, v in _ordered(summary.get("stage_s") or {})),
            )
        self.console.print(table)
        champ = ctx.champion()
        label = "+".join(sorted(methods)) or "estimated"
        self.console.print(
            f"models trained: {trained}  promoted: {promoted}  champion: "
            f"{f'v{champ.version}' if champ else 'none'}  tokens: {all_tokens:,}  joules: "
            f"{all_joules:,.0f} ({label})  tokens/J: "
            f"{(all_tokens / all_joules if all_joules else 0):,.0f} ({label})",
            highlight=False,
            markup=False,
        )


STAGES = ("data", "energy", "trainer", "evaluator", "approval", "deployer", "report")


def _ordered(stage_s: dict[str, float]) -> list[tuple[str, float]]:
    """Stages in the order the graph runs them."""
    return sorted(stage_s.items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else 99)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
