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
        """The runner's main thread: apply role changes the membership thread reported."""
        if self.membership is None:
            return
        while True:
            try:
                change = self.membership.changes.get_nowait()
            except queue.Empty:
                return
            if change.role == "leader" and not self.leading:
                self.leading = True
                self._say(f"[member] leading term {change.epoch}: starting the lines")
                self._start_lines()
            elif change.role == "follower" and self.leading:
                self._follow(change)

    def _build_lines(self) -> None:
        for entry in self.host.watch.factory.lines:
            line = self.host.build_line(entry.spec, entry.policy, entry.path)
            if line is not None:
                self.services.lines[line.name] = line
                line.sync_serving()

    def _start_lines(self) -> None:
        for line in list(self.services.lines.values()):
            self.host.start_line(line)

    def _follow(self, change: RoleChange) -> None:
        """Stop acting at once, then serve with fresh, idle lines."""
        self.leading = False
        services = self.services
        self._say(f"[member] term {change.epoch} over ({change.why}): stopping the lines")
        lines = list(services.lines.values())
        for line in lines:
            line.unschedule()
            line.stop()
        deadline = time.monotonic() + self.host.settings.runtime.line_join_s
        for line in lines:
            line.join(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                line.ctx.cluster.close()
        with contextlib.suppress(Exception):
            services.gpus.restore("on losing the lease", None)
        services.lines.clear()
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
