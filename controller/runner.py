"""The factory runner: set up what the lines share, start every line, tick, follow the
factory file (a new line starts, a removed one drains), and shut down in layers.

Shutdown: a signal sets the stop flag; every line is told to stop (a running trial is
asked to stop, the cycle stays checkpointed); the runner waits for the lines, then stops
the scheduler, serving, the clusters and restores GPU settings, each step on its own so a
failing one never skips the next, all within `runtime.shutdown_deadline_s`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from rich.console import Console
from sqlalchemy.engine import make_url

from adapters.cluster.slots import SlotPool
from adapters.completion_ids import CompletionIds
from adapters.energy import probe_energy_meter
from adapters.serving import ServingError, ServingServer
from adapters.serving_feedback import FeedbackDesk
from adapters.store.audit import AuditLog
from adapters.store.captures import CaptureLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store, normalise_db_url
from adapters.store.factory_secret import factory_secret
from adapters.store.feedback import FeedbackLog
from adapters.store.fencing import Fence, install_fencing
from adapters.store.lease import LeaseTable
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook
from adapters.store.shared_files import SharedFiles, make_share
from adapters.store.state_lock import StateLock, StateLockedError
from adapters.telemetry import HostTelemetry
from adapters.traffic_capture import TrafficCapture
from controller.budget import FactoryBudget
from controller.console.server import RunningConsole, open_console
from controller.console.tokens import TokenError
from controller.factory_watch import FactoryWatch
from controller.gpu import FactoryGpus
from controller.line import ProductionLine
from controller.membership import Membership
from controller.overview import read_view
from controller.roles import Roles
from controller.services import FactoryServices
from controller.serving_sync import ServingSync
from controller.settings import Settings
from controller.summary import print_summary
from policies.factory import Factory, LineSpec, load_factory, single_line_factory
from policies.loader import PolicyError
from policies.model import Policy


class FactoryRunner:
    def __init__(self, settings: Settings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console()
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self._signal_name: str | None = None
        self.services: FactoryServices | None = None
        self.server: ServingServer | None = None
        self.console_server: RunningConsole | None = None
        self.factory: Factory | None = None
        self._last_beat = 0.0
        # ends the process if a clean shutdown takes longer than the deadline
        self._watchdog = threading.Timer(settings.runtime.shutdown_deadline_s, os._exit, (1,))
        self._watchdog.daemon = True
        self._shown: dict[str, dict[str, Any]] = {}  # each line's last published heartbeat
        self._lock: StateLock | None = None  # SQLite: held while this daemon runs

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

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

    def _load(self) -> Factory:
        s = self.settings
        return load_factory(s.factory) if s.factory else single_line_factory(s.policy)

    # set-up ---------------------------------------------------------------------------

    def _services(self, factory: Factory, cycles: int | None) -> FactoryServices:
        s = self.settings
        # shared (PostgreSQL): what the daemon does as leader is fenced by its term
        idle = s.lease.ttl_s / 2 if s.shared else None
        store = Store(s.resolved_db_url, Fence() if s.shared else None, idle)
        store.create_all()
        if s.shared:
            install_fencing(store.engine)
        audit = AuditLog(store)
        gpus = FactoryGpus(store, audit, s.nvml_module)
        first = factory.lines[0].policy
        # a follower's record of restoring its GPU's settings waits until it leads
        _guarded(
            self._say,
            "GPU",
            lambda: gpus.probe(first.energy.gpu if first.energy.prefer_gpu else "none"),
        )
        limits = factory.spec.limits
        gpus.facility_cap_w = limits.facility_power_cap_w
        ledger = Ledger(store)
        files = SharedFiles(s.state_dir, make_share(s.artefact_share, store))
        member_store = Store(s.resolved_db_url, None, idle) if s.shared else store
        services = FactoryServices(
            settings=s,
            console=self.console,
            store=store,
            audit=audit,
            registry=ModelRegistry(store, s.state_dir / "models", files),
            ledger=ledger,
            catalog=DataCatalog(store),
            book=CycleBook(store),
            rollouts=RolloutBook(store),
            scheduler=BackgroundScheduler(timezone="UTC"),
            gpus=gpus,
            slots=SlotPool(limits.slots),
            started=self.started,
            many_lines=len(factory.lines) > 1 or s.factory is not None,
            cycles=cycles,
            member_store=member_store,
            member_audit=AuditLog(member_store) if s.shared else audit,
            member_ledger=Ledger(member_store) if s.shared else ledger,
            files=files,
        )
        if limits.energy_kwh_per_day is not None or limits.training_tokens_per_day is not None:
            services.budget = FactoryBudget(factory.spec, ledger, audit)
        return services

    def _start_serving(self, services: FactoryServices) -> bool:
        s = self.settings
        if not s.serve:
            return True
        max_tokens = max(line.policy.serving.max_tokens for line in self.factory.lines)
        assert services.member_store is not None
        # clients' data (ratings, kept prompts) is no leader's act: a follower takes it too,
        # through connections of no term and a pool of its own (a flood of it never delays
        # the lease's renewals)
        clients = services.member_store
        if s.shared:
            clients = services.clients_store = Store(s.resolved_db_url, None, s.lease.ttl_s / 2)
        try:
            self.server = ServingServer(
                s.host,
                s.port,
                max_tokens_limit=max_tokens,
                feedback=_feedback_desk(clients),
                capture=TrafficCapture(CaptureLog(clients)),
                api_keys=serving_api_keys(s.serving.api_keys_env, os.environ),
                max_body_bytes=s.serving.max_body_bytes,
                max_prompt_bytes=s.serving.max_prompt_bytes,
            )
            self.server.start()
        except (ServingError, ValueError) as exc:
            self._say(f"[serving] {exc}")
            return False
        assert services.member_ledger is not None and services.member_audit is not None
        services.serving = ServingSync(
            self.server, services.member_ledger, services.member_audit, self._say
        )
        return True

    def _audit_start(self, services: FactoryServices, energy_note: str) -> None:
        factory = self.factory
        assert factory is not None and services.member_audit is not None
        services.member_audit.append(  # the member's own event: written whatever its role
            agent="controller",
            action="start_daemon",
            outcome="taken",
            reason=f"daemon pid {os.getpid()} started factory {factory.spec.name}@"
            f"{factory.spec.version} with line(s) {', '.join(factory.names)}",
            figures={
                "db": _redact(services.store.url),
                "state_dir": str(self.settings.state_dir),
                "energy": energy_note,
                "gpu": services.gpus.note,
                "lines": list(factory.names),
                "slots": factory.spec.limits.slots,
                "power_knob": {
                    ln.name: services.gpus.knob_problem(ln.policy) or "permitted"
                    for ln in factory.lines
                },
                "cluster": {ln.name: ln.policy.cluster.kind for ln in factory.lines},
                "factory": str(factory.path) if factory.path else None,
            },
            policy_version=factory.lines[0].policy.version,
        )
        self._say(
            f"[daemon] factory {factory.spec.name} ({len(factory.lines)} line(s): "
            f"{', '.join(factory.names)}); store {_redact(services.store.url)}; "
            f"energy: {energy_note}; GPU: {services.gpus.note}"
        )

    # main -----------------------------------------------------------------------------

    def run(self, cycles: int | None = None) -> int:
        s = self.settings
        # first of all: a SIGTERM during start-up must still run the clean exit below
        self._install_signals()
        s.ensure_dirs()
        try:
            self.factory = self._load()
        except PolicyError as exc:
            self._say(f"[policy] {exc}")
            return 2
        if not self._lock_store():
            return 4
        self.services = services = self._services(self.factory, cycles)
        first = self.factory.lines[0].policy
        meter, energy_note = probe_energy_meter(
            prefer_gpu=first.energy.prefer_gpu, watts_per_core=first.energy.watts_per_core
        )
        with contextlib.suppress(Exception):
            meter.close()  # type: ignore[attr-defined]
        services.energy_note = energy_note
        self._audit_start(services, energy_note)
        if not self._start_serving(services):
            return self._abandon(services, "serving could not start")
        try:
            self.console_server = open_console(s, self.server, self._say)
        except TokenError as exc:
            self._say(f"[console] {exc}")
            return self._abandon(services, f"the console's tokens are unusable: {exc}")
        services.console_url = self.console_server.url if self.console_server else ""
        self.telemetry = HostTelemetry(first.energy.watts_per_core)
        self.watch = FactoryWatch(self, self.factory)
        self.roles = self._roles(services)
        services.scheduler.add_job(
            self.tick, IntervalTrigger(seconds=s.tick_s), id="tick", coalesce=True, max_instances=1
        )
        try:
            with services.store.checkpointer() as checkpointer:
                services.checkpointer = checkpointer
                try:
                    self.roles.begin()
                    services.scheduler.start()
                    self._wait(cycles)
                finally:
                    self._stop_lines()  # while the checkpointer is open: steps end checkpointed
        finally:
            self._shutdown()
        return self._exit_code(cycles)

    @property
    def acting(self) -> bool:
        return self.roles.leading

    def _lock_store(self) -> bool:
        """SQLite: one daemon per store. A second is refused, naming the one running."""
        url = make_url(normalise_db_url(self.settings.resolved_db_url))
        if self.settings.shared or not url.database or url.database == ":memory:":
            return True
        self._lock = StateLock(url.database)
        try:
            self._lock.acquire(note=f"serving on {self.settings.host}:{self.settings.port}")
        except StateLockedError as exc:
            self._lock = None
            self._say(f"[daemon] refused to start: {exc}")
            return False
        return True

    def _roles(self, services: FactoryServices) -> Roles:
        """Alone on SQLite (none other may start: the lock); a member on PostgreSQL."""
        membership = None
        if self.settings.shared:
            assert services.member_store is not None and services.store.fence is not None
            membership = Membership(
                LeaseTable(services.member_store),
                services.store.fence,
                services.audit,
                self.settings.lease,
                self._say,
            )
        return Roles(self, membership, self._say)

    def add_line(self, spec: LineSpec, policy: Policy, path: Path) -> ProductionLine | None:
        """Build and start a line (a factory file's new line, while leading)."""
        line = self.build_line(spec, policy, path)
        if line is not None:
            self.services.lines[line.name] = line  # type: ignore[union-attr]
            self.start_line(line)
        return line

    def start_line(self, line: ProductionLine) -> None:
        services = self.services
        assert services is not None
        if services.budget is not None:
            services.budget.set_line(line.name, line.spec, line.ctx.policy)
        line.start()

    def build_line(self, spec: LineSpec, policy: Policy, path: Path) -> ProductionLine | None:
        """Build a line; one that cannot be built (its workload does not import, its data
        source is unusable) is audited and left out, and the others go on."""
        services = self.services
        assert services is not None and services.member_audit is not None
        try:
            line = ProductionLine(services, spec, policy, path)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            services.member_audit.append(
                agent="controller",
                action="add_line",
                outcome="failed",
                reason=f"line {policy.name} ({path}) cannot start: {error}",
                figures={"error": error[:2000]},
                policy_version=policy.version,
                line=policy.name,
                # a member tries again later: each refusal once
                key=f"add_line:{policy.name}:{policy.version}:{zlib.crc32(error.encode()):08x}",
            )
            self._say(f"[daemon] line {policy.name} cannot start: {error}")
            return None
        return line

    def _wait(self, cycles: int | None) -> None:
        services = self.services
        assert services is not None
        while not self.stop_event.wait(0.5):
            _guarded(self._say, "member", self.roles.poll)
            if not self.roles.leading:
                continue
            lines = list(services.lines.values())
            for line in lines:
                if not line.alive and line.draining.is_set():
                    self.watch.remove(line)
            if cycles is not None and not any(line.alive for line in lines):
                return

    def tick(self) -> None:
        """Between cycles: each line's watch, serving, served tokens, telemetry, heartbeat.
        Runs on the scheduler's thread and never takes the daemon down."""
        services = self.services
        if services is None:
            return
        try:
            self.roles.publish()
            leading = self.roles.leading
            self.watch.check()
            lines = list(services.lines.values())
            view = read_view(services.registry, services.rollouts, services.book, services.catalog)
            if not leading:
                self.roles.follower_tick(view)
            for line in lines if leading else []:
                _guarded(self._say, f"line {line.name}", lambda ln=line: ln.tick(view))
            if services.serving is not None:
                services.serving.book_served_tokens()
            if leading:
                self._heartbeats(lines)
        except Exception as exc:
            self._say(f"[daemon] tick error: {type(exc).__name__}: {exc}")

    def _heartbeats(self, lines: list[ProductionLine]) -> None:
        """Every line's heartbeat in one write: at once when what it shows changed, else
        every `runtime.heartbeat_s` (an idle factory of many lines writes little)."""
        services = self.services
        assert services is not None
        now = time.monotonic()
        due = now - self._last_beat >= self.settings.runtime.heartbeat_s
        states = {ln.name: ln.heartbeat() for ln in lines}
        shown = {
            n: {k: v for k, v in st.items() if k != "heartbeat_at"} for n, st in states.items()
        }
        changed = {n: st for n, st in states.items() if shown[n] != self._shown.get(n)}
        if not due and not changed:
            return
        if due:
            sample = self.telemetry.sample().as_dict() | services.gpus.sample()
            changed = {n: st | {"telemetry": json.dumps(sample)} for n, st in states.items()}
            self._last_beat = now
        services.book.publish_states(changed)
        self._shown.update({n: shown[n] for n in changed})

    # shutdown -------------------------------------------------------------------------

    def _stop_lines(self) -> None:
        """The scheduler first (no tick adds a line now), then every line is told to stop and
        awaited, all under the shutdown deadline's watchdog."""
        services = self.services
        assert services is not None
        self._watchdog.start()
        _guarded(self._say, "scheduler", lambda: services.scheduler.shutdown(wait=True))
        if self.stop_event.is_set():
            self._say(f"[daemon] {self._signal_name or 'stop'}: current steps checkpointed")
        lines = list(services.lines.values())
        for line in lines:
            line.stop()
        deadline = time.monotonic() + self.settings.runtime.line_join_s
        for line in lines:
            line.join(max(0.1, deadline - time.monotonic()))

    def _shutdown(self) -> None:
        """Every step on its own: one that fails never skips the rest; a watchdog ends the
        process if the whole takes longer than the deadline."""
        services = self.services
        if services is None:
            return
        with contextlib.suppress(RuntimeError):
            self._watchdog.start()  # already running unless the lines never started
        lines = list(services.lines.values())
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.console_server is not None:  # first: no operator is told "within a tick"
            console = self.console_server
            steps.append(("console", lambda: _report(self._say, "console", console.stop())))
        steps.append(("stop lines", lambda: [ln.stop() for ln in lines]))
        if self.roles.leading:
            steps.append(
                (
                    "heartbeat",
                    lambda: services.book.publish_states(
                        {ln.name: ln.heartbeat(stopped=True) for ln in lines}
                    ),
                )
            )
        steps.append(("lease", self.roles.stop))
        if services.serving is not None:
            steps.append(("served tokens", services.serving.book_served_tokens))
        if self.server is not None:
            server = self.server
            steps.append(("serving", lambda: _report(self._say, "serving", server.stop())))
            if server.capture is not None:  # what was kept so far is written, not lost
                steps.append(("capture", server.capture.close))
        # a waiting trial worker holds memory (and a CUDA context)
        steps += [(f"cluster {ln.name}", ln.ctx.cluster.close) for ln in lines]
        steps.append(("GPU settings", lambda: services.gpus.restore("on exit", None)))
        for what, step in steps:
            _guarded(self._say, what, step)
        done = sum(ln.done for ln in lines)
        audit = services.member_audit or services.audit
        _guarded(
            self._say,
            "audit",
            lambda: audit.append(
                agent="controller",
                action="stop_daemon",
                outcome="taken",
                reason=f"daemon pid {os.getpid()} stopped after {done} cycle(s)",
                figures={"cycles": done, "lines": [ln.name for ln in lines]},
                policy_version=lines[0].ctx.policy.version if lines else None,
            ),
        )
        _guarded(self._say, "summary", lambda: print_summary(self.console, lines))
        _guarded(self._say, "store", services.store.dispose)
        if services.member_store is not None and services.member_store is not services.store:
            _guarded(self._say, "store", services.member_store.dispose)
        if services.clients_store is not None:
            _guarded(self._say, "store", services.clients_store.dispose)
        if self._lock is not None:
            self._lock.release()
        self._watchdog.cancel()

    def _abandon(self, services: FactoryServices, why: str) -> int:
        """A start that cannot go on: what was opened is closed and the stop audited (exit 3)."""
        server = self.server
        if server is not None:
            _guarded(self._say, "serving", lambda: _report(self._say, "serving", server.stop()))
        audit = services.member_audit or services.audit
        _guarded(
            self._say,
            "audit",
            lambda: audit.append(
                agent="controller",
                action="stop_daemon",
                outcome="failed",
                reason=f"daemon pid {os.getpid()} could not start: {why}",
            ),
        )
        for store in {
            id(x): x for x in (services.store, services.member_store, services.clients_store) if x
        }.values():
            _guarded(self._say, "store", store.dispose)
        if self._lock is not None:
            self._lock.release()
        return 3

    def _exit_code(self, cycles: int | None) -> int:
        services = self.services
        if services is None:
            return 0
        failed = [
            r.cycle_id for ln in services.lines.values() for r in ln.runs if r.status == "failed"
        ]
        if cycles is not None and failed:
            self._say(f"[daemon] failed cycle(s): {', '.join(failed)} (see `aifactory audit`)")
            return 1
        return 0


def serving_api_keys(env_name: str | None, environ: Mapping[str, str]) -> list[str]:
    """The clients' API keys from the variable the settings name (comma-separated). A
    variable named but empty is an error: starting open would be the silent failure."""
    if env_name is None:
        return []
    keys = [k.strip() for k in environ.get(env_name, "").split(",") if k.strip()]
    if not keys:
        raise ValueError(
            f"serving.api_keys_env names ${env_name}, which holds no API key; set it "
            "(keys separated by commas) or unset serving.api_keys_env"
        )
    return keys


def _report(say: Callable[[str], None], what: str, problem: str | None) -> None:
    if problem:
        say(f"[daemon] {what}: {problem}")


def _guarded(say: Callable[[str], None], what: str, step: Callable[[], Any]) -> None:
    try:
        step()
    except Exception as exc:
        say(f"[daemon] {what}: {type(exc).__name__}: {exc}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _feedback_desk(store: Store) -> FeedbackDesk:
    """Completion ids signed with the factory's key (any member reads any member's), and
    ratings kept in the store through the member's own connection (a follower takes them
    too: feedback is the clients' data, not a leader's act)."""
    return FeedbackDesk(CompletionIds(factory_secret(store, "completion-ids")), FeedbackLog(store))
