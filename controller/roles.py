"""Whether this daemon acts, and the switch between acting and only serving.

On SQLite the daemon is alone (its lock saw to that) and acts from the start. On
PostgreSQL it is a member: it builds its lines at once, so that it serves every line's
champion, and starts them (their cycles, resumed from checkpoints exactly as after a
restart) only while it leads. Told to follow, it stops its lines at once (a running
trial is told to stop; the cycle stays checkpointed, and a write refused by the fence
changes nothing), and builds them afresh, idle, to go on serving.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from controller.line_view import serving_differs
from controller.membership import Membership, RoleChange
from controller.overview import FactoryView
from controller.services import FactoryServices
from controller.settings import Settings

#: How long a line that failed to build waits before it is tried again.
_REBUILD_S = 30.0

if TYPE_CHECKING:
    from controller.factory_watch import FactoryWatch
    from controller.line import ProductionLine
    from policies.factory import LineSpec
    from policies.model import Policy


class RoleHost(Protocol):
    """What the roles need of the factory runner (`controller.runner.FactoryRunner`)."""

    settings: Settings
    services: FactoryServices | None
    watch: FactoryWatch

    def build_line(self, spec: LineSpec, policy: Policy, path: Any) -> ProductionLine | None: ...

    def start_line(self, line: ProductionLine) -> None: ...


class Roles:
    def __init__(
        self, host: RoleHost, membership: Membership | None, say: Callable[[str], None]
    ) -> None:
        self.host = host
        self.membership = membership
        self._say = say
        self.leading = membership is None
        self._retired: list[ProductionLine] = []  # a past term's lines not yet ended
        self._lock = threading.Lock()  # `_retired` and `leading`: main and member threads
        self._build_after: dict[str, float] = {}  # a line that failed to build: not before
        if membership is not None:
            membership.may_lead = self.may_lead

    def may_lead(self) -> bool:
        """Ask for the lease only once our last term is fully over: the runner has stopped
        its lines (none is still running: it would write in the new term) and no change of
        role waits to be applied."""
        assert self.membership is not None
        with self._lock:
            self._retired = [line for line in self._retired if line.alive]
            return not self.leading and not self._retired and self.membership.changes.empty()

    @property
    def services(self) -> FactoryServices:
        services = self.host.services
        assert services is not None
        return services

    def begin(self) -> None:
        """Build every line; act now when alone, else as soon as the lease is ours."""
        with self.host.watch.lock:
            self._build_lines()
            if self.membership is None:
                self._start_lines()
        if self.membership is not None:
            self.membership.start()
            self.poll()

    def poll(self) -> None:
        """The runner's main thread: apply role changes the membership thread reported,
        then finish what an outage left undone (lines to build or to start)."""
        if self.membership is None:
            with self.host.watch.lock:  # alone: a line whose start failed is tried again
                self._start_lines()
            return
        self.membership.check_clock()
        while True:
            try:
                change = self.membership.changes.get_nowait()
            except queue.Empty:
                break
            if change.role == "leader" and not self.leading:
                with self._lock:
                    self.leading = True
                self._say(f"[member] leading term {change.epoch}: starting the lines")
            elif change.role == "follower" and self.leading:
                self._follow(change)
        with self.host.watch.lock:  # never beside a factory edit adding or removing lines
            self._build_lines()
            if self.leading:
                self._start_lines()

    def _build_lines(self) -> None:
        """Each line of the factory not built yet; one that failed is tried again after a
        while (its refusal is audited once per policy version and error)."""
        now = time.monotonic()
        for entry in self.host.watch.factory.lines:
            if entry.name in self.services.lines or self._build_after.get(entry.name, 0) > now:
                continue
            try:
                line = self.host.build_line(entry.spec, entry.policy, entry.path)
            except Exception as exc:  # the database away
                self._say(f"[member] line {entry.name} not ready: {type(exc).__name__}: {exc}")
                line = None
            if line is None:
                self._build_after[entry.name] = now + _REBUILD_S
                continue
            self._build_after.pop(entry.name, None)
            self.services.lines[line.name] = line
            with contextlib.suppress(Exception):  # serving retries on its own ticks
                line.sync_serving()

    def _start_lines(self) -> None:
        """Each built line of the factory not started yet (one whose start failed is tried
        again); a line no longer listed, never started, leaves serving instead."""
        listed = set(self.host.watch.factory.names)
        for line in list(self.services.lines.values()):
            if line.started:
                continue
            if line.name not in listed:
                self.services.lines.pop(line.name, None)
                if self.services.serving is not None:
                    self.services.serving.server.remove_line(line.name)
                continue
            try:
                self.host.start_line(line)
            except Exception as exc:
                self._say(f"[member] line {line.name} not started: {type(exc).__name__}: {exc}")

    def _follow(self, change: RoleChange) -> None:
        """Stop acting at once, then serve with fresh, idle lines."""
        services = self.services
        self._say(f"[member] term {change.epoch} over ({change.why}): stopping the lines")
        with self.host.watch.lock:  # no factory edit adds a line meanwhile
            lines = list(services.lines.values())
            services.lines.clear()
            with self._lock:  # until these end, the lease is not asked for
                self.leading = False
                self._retired += lines
        for line in lines:
            line.stop()
        deadline = time.monotonic() + self.host.settings.runtime.line_join_s
        for line in lines:
            line.join(max(0.1, deadline - time.monotonic()))
            line.unschedule()  # after the thread ended: it cannot schedule again
            with contextlib.suppress(Exception):
                line.ctx.cluster.close()
        still = [line.name for line in lines if line.alive]
        if still:
            self._say(f"[member] line(s) {', '.join(still)} still ending: no lease asked yet")
        with contextlib.suppress(Exception):
            services.gpus.restore("on losing the lease", None)
        with self.host.watch.lock:
            self._build_lines()

    def follower_tick(self, view: FactoryView) -> None:
        """A follower's tick: serve what the registry says, and keep of its clients' traffic
        what the line's policy file says now (a follower does not adopt policies)."""
        for line in list(self.services.lines.values()):
            try:  # one line's trouble never skips the others
                if serving_differs(line, view):
                    line.sync_serving()
                line.follow_capture()
            except Exception as exc:
                line.say(f"[daemon] follower tick of line {line.name}: {type(exc).__name__}: {exc}")

    def publish(self) -> None:
        """This member's role on `/healthz` and `/metrics`, its URL on its member row."""
        serving = self.services.serving
        if self.membership is not None and serving is not None:
            serving.server.member = self.membership.role
            self.membership.serving_url = serving.server.url

    def stop(self) -> None:
        """A leader audits its stop in its own term and hands the lease back."""
        if self.membership is not None:
            self.membership.stop()
