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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from controller.line_view import serving_differs
from controller.membership import Membership, RoleChange
from controller.overview import FactoryView
from controller.services import FactoryServices
from controller.settings import Settings

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
        if membership is not None:
            membership.may_lead = self.may_lead

    def may_lead(self) -> bool:
        """Ask for the lease only once every line of our last term has ended: a thread
        still running would otherwise write in the new term."""
        self._retired = [line for line in self._retired if line.alive]
        return not self._retired

    @property
    def services(self) -> FactoryServices:
        services = self.host.services
        assert services is not None
        return services

    def begin(self) -> None:
        """Build every line; act now when alone, else as soon as the lease is ours."""
        self._build_lines()
        if self.membership is None:
            self._start_lines()
        else:
            self.membership.start()
            self.poll()

    def poll(self) -> None:
        """The runner's main thread: apply role changes the membership thread reported,
        then finish what an outage left undone (lines to build or to start)."""
        if self.membership is None:
            self._start_lines()  # alone: a line whose start failed is tried again
            return
        self.membership.check_clock()
        while True:
            try:
                change = self.membership.changes.get_nowait()
            except queue.Empty:
                break
            if change.role == "leader" and not self.leading:
                self.leading = True
                self._say(f"[member] leading term {change.epoch}: starting the lines")
            elif change.role == "follower" and self.leading:
                self._follow(change)
        if self.leading:
            self._start_lines()
        else:
            self._build_lines()

    def _build_lines(self) -> None:
        """Each line of the factory not built yet (one that fails is tried again later)."""
        for entry in self.host.watch.factory.lines:
            if entry.name in self.services.lines:
                continue
            try:
                line = self.host.build_line(entry.spec, entry.policy, entry.path)
                if line is not None:
                    self.services.lines[line.name] = line
                    line.sync_serving()
            except Exception as exc:  # the database away: next poll
                self._say(f"[member] line {entry.name} not ready: {type(exc).__name__}: {exc}")

    def _start_lines(self) -> None:
        """Each built line not started yet (one whose start failed is tried again)."""
        for line in list(self.services.lines.values()):
            if line.started:
                continue
            try:
                self.host.start_line(line)
            except Exception as exc:
                self._say(f"[member] line {line.name} not started: {type(exc).__name__}: {exc}")

    def _follow(self, change: RoleChange) -> None:
        """Stop acting at once, then serve with fresh, idle lines."""
        self.leading = False
        services = self.services
        self._say(f"[member] term {change.epoch} over ({change.why}): stopping the lines")
        with self.host.watch.lock:  # no factory edit adds a line meanwhile
            lines = list(services.lines.values())
            services.lines.clear()
        for line in lines:
            line.stop()
        deadline = time.monotonic() + self.host.settings.runtime.line_join_s
        for line in lines:
            line.join(max(0.1, deadline - time.monotonic()))
            line.unschedule()  # after the thread ended: it cannot schedule again
            with contextlib.suppress(Exception):
                line.ctx.cluster.close()
        self._retired += [line for line in lines if line.alive]
        if self._retired:
            names = ", ".join(line.name for line in self._retired)
            self._say(f"[member] line(s) {names} still ending: not asking for the lease yet")
        with contextlib.suppress(Exception):
            services.gpus.restore("on losing the lease", None)
        self._build_lines()

    def follower_tick(self, view: FactoryView) -> None:
        """A follower's tick: serve what the registry says, nothing else."""
        for line in list(self.services.lines.values()):
            if serving_differs(line, view):
                line.sync_serving()

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
