"""The factory file, watched: a line added to it starts, a line removed drains (no new
cycles; its champion serves until its last cycle has ended, then it leaves serving), and
new priorities, guarantees, owners or limits apply to the next allocation. The file is
applied whole or not at all: an edit with any problem, or a new line that cannot be built,
is refused (audited) and the factory goes on as it was."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from controller.budget import FactoryBudget
from controller.line import ProductionLine
from controller.services import FactoryServices
from policies.factory import Factory, LineSpec, load_factory
from policies.loader import PolicyError
from policies.model import Policy


class LineHost(Protocol):
    """What the watch needs of the factory runner (`controller.runner.FactoryRunner`)."""

    services: FactoryServices | None

    @property
    def acting(self) -> bool:
        """Whether this daemon runs the lines (alone, or leading its members)."""
        ...

    def add_line(self, spec: LineSpec, policy: Policy, path: Path) -> ProductionLine | None: ...


class FactoryWatch:
    def __init__(self, runner: LineHost, factory: Factory) -> None:
        self.runner = runner
        self.factory = factory
        self._mtime = self._stat()
        self.lock = threading.Lock()  # the tick applies edits, the runner removes lines

    @property
    def services(self) -> FactoryServices:
        services = self.runner.services
        assert services is not None
        return services

    def _stat(self) -> float | None:
        path = self.factory.path
        try:
            return path.stat().st_mtime if path is not None else None
        except OSError:
            return None

    def check(self) -> None:
        if self.factory.path is None:
            return  # --policy: a factory of one line, nothing to watch
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            new = load_factory(self.factory.path)
        except PolicyError as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            self._refuse(
                f"{self.factory.path} has errors; the factory goes on as it was: {problems}"
            )
            self.services.say(f"[factory] refused:\n{exc}")
            return
        with self.lock:
            if self.runner.acting:
                self._apply(new)
            else:  # a follower serves the lines listed; whoever leads acts on the edit
                self.factory = new

    def _apply(self, new: Factory) -> None:
        services = self.services
        fresh = [ln for ln in new.lines if ln.name not in services.lines]
        built: list[ProductionLine] = []
        for line in fresh:  # build every new line first: all of them, or none
            try:
                built.append(ProductionLine(services, line.spec, line.policy, line.path))
            except Exception as exc:
                self._refuse(
                    f"line {line.name} ({line.path}) cannot start: "
                    f"{type(exc).__name__}: {exc}; the factory goes on as it was"
                )
                return
        gone = set(self.factory.names) - set(new.names)
        self.factory = new
        services.slots.resize(new.spec.limits.slots, timeout_s=0)  # running trials finish
        services.gpus.facility_cap_w = new.spec.limits.facility_power_cap_w
        self._update_budget(new)
        self._update_lines(new)
        for line in built:
            self._start(line)
        for name in gone:
            line = services.lines.get(name)
            if line is not None and not line.draining.is_set():
                self._drain(line)
        self._audit(
            "taken",
            f"factory {new.spec.name}@{new.spec.version}: lines {', '.join(new.names)}",
            {"lines": list(new.names), "slots": new.spec.limits.slots},
        )

    def _update_budget(self, new: Factory) -> None:
        """Limits added to a factory without any start the shared budgets now."""
        services = self.services
        limits = new.spec.limits
        if services.budget is None and (
            limits.energy_kwh_per_day is not None or limits.training_tokens_per_day is not None
        ):
            services.budget = FactoryBudget(new.spec, services.ledger, services.audit)
            for name, line in services.lines.items():
                services.budget.set_line(name, line.spec, line.ctx.policy)
                line.ctx.budget = services.budget.line(name)
        if services.budget is not None:
            services.budget.set_spec(new.spec)

    def _update_lines(self, new: Factory) -> None:
        """Owners, priorities, guarantees and weights of running lines; a line removed and
        listed again before its drain ended goes on as before."""
        services = self.services
        for entry in new.lines:
            line = services.lines.get(entry.name)
            if line is None:
                continue
            line.spec = entry.spec
            if services.budget is not None:
                services.budget.set_line(entry.name, entry.spec, line.ctx.policy)
            if line.draining.is_set():
                line.undrain()
                self._audit(
                    "taken",
                    f"line {entry.name} is listed again: no longer draining",
                    {},
                    "add_line",
                    entry.name,
                )

    def _start(self, line: ProductionLine) -> None:
        services = self.services
        services.lines[line.name] = line
        if services.budget is not None:
            services.budget.set_line(line.name, line.spec, line.ctx.policy)
            line.ctx.budget = services.budget.line(line.name)
        line.start()
        self._audit(
            "taken",
            f"line {line.name} added ({line.path}, owner {line.spec.owner}, "
            f"priority {line.spec.priority})",
            {},
            "add_line",
            line.name,
        )

    def _drain(self, line: ProductionLine) -> None:
        line.drain()
        self._audit(
            "taken",
            f"line {line.name} removed from the factory file: draining (no new "
            "cycles; it serves until its last cycle has ended)",
            {},
            "drain_line",
            line.name,
        )

    def remove(self, line: ProductionLine) -> None:
        """A drained line's thread has ended: it leaves serving, the budgets and the factory."""
        with self.lock:
            if line.alive or not line.draining.is_set():
                return  # listed again meanwhile
            self._remove(line)

    def _remove(self, line: ProductionLine) -> None:
        services = self.services
        line.unschedule()
        line.demo.stop()  # its demo users go with it
        if services.serving is not None:
            services.serving.book_served_tokens()  # its last tokens are its own
            services.serving.server.remove_line(line.name)
        if services.budget is not None:
            services.budget.drop_line(line.name)
        services.lines.pop(line.name, None)
        line.ctx.cluster.close()
        self._audit("taken", f"line {line.name} drained and gone", {}, "remove_line", line.name)

    def _refuse(self, reason: str) -> None:
        self._audit("refused", reason, {})

    def _audit(
        self,
        outcome: str,
        reason: str,
        figures: dict[str, object],
        action: str = "reload_factory",
        line: str | None = None,
    ) -> None:
        self.services.audit.append(
            agent="controller",
            action=action,
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            figures=figures | {"factory": self.factory.spec.name},
            line=line,
        )
