"""The factory file, watched: a line added to it starts, a line removed drains (no new
cycles; its champion serves until its last cycle has ended, then it leaves serving), and
new priorities, guarantees or limits apply to the next allocation. The file is applied
whole or not at all: an edit with any problem is refused (audited) and the factory goes
on as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from controller.line import FactoryServices, ProductionLine
from policies.factory import Factory, FactoryLine, LineSpec, load_factory
from policies.loader import PolicyError
from policies.model import Policy


class LineHost(Protocol):
    """What the watch needs of the factory runner (`controller.runner.FactoryRunner`)."""

    services: FactoryServices | None

    def add_line(self, policy: Policy, path: Path, owner: str) -> ProductionLine: ...


class FactoryWatch:
    def __init__(self, runner: LineHost, factory: Factory) -> None:
        self.runner = runner
        self.factory = factory
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        path = self.factory.path
        try:
            return path.stat().st_mtime if path is not None else None
        except OSError:
            return None

    def line_specs(self) -> dict[str, tuple[LineSpec, Policy]]:
        """Each running line's spec and the policy it runs now."""
        services = self.runner.services
        assert services is not None
        specs = {line.name: line.spec for line in self.factory.lines}
        return {
            name: (specs[name], line.ctx.policy)
            for name, line in services.lines.items()
            if name in specs
        }

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
            self._audit(
                "refused",
                f"{self.factory.path} has errors; the factory goes on as "
                f"it was: " + "; ".join(str(p) for p in exc.problems),
                {},
            )
            self.runner.services.say(f"[factory] refused:\n{exc}")  # type: ignore[union-attr]
            return
        self._apply(new)

    def _apply(self, new: Factory) -> None:
        services = self.runner.services
        assert services is not None
        old_names = set(self.factory.names)
        self.factory = new
        services.slots.resize(new.spec.limits.slots)
        services.gpus.facility_cap_w = new.spec.limits.facility_power_cap_w
        for line in new.lines:
            if line.name not in services.lines:
                self._start(line)
        for name in old_names - set(new.names):
            self._drain(services.lines[name])
        if services.budget is not None:
            services.budget.set_lines(self.line_specs(), new.spec)
        self._audit(
            "taken",
            f"factory {new.spec.name}@{new.spec.version}: lines {', '.join(new.names)}",
            {"lines": list(new.names), "slots": new.spec.limits.slots},
        )

    def _start(self, line: FactoryLine) -> None:
        self.runner.add_line(line.policy, line.path, line.spec.owner)
        self._audit(
            "taken",
            f"line {line.name} added ({line.path}, owner {line.spec.owner}, "
            f"priority {line.spec.priority})",
            {"line": line.name},
            "add_line",
        )

    def _drain(self, line: ProductionLine) -> None:
        line.drain()
        self._audit(
            "taken",
            f"line {line.name} removed from the factory file: draining (no new "
            "cycles; it serves until its last cycle has ended)",
            {"line": line.name},
            "drain_line",
        )

    def remove(self, line: ProductionLine) -> None:
        """A drained line's thread has ended: it leaves serving and the factory."""
        services = self.runner.services
        assert services is not None
        services.lines.pop(line.name, None)
        if services.serving is not None:
            services.serving.server.remove_line(line.name)
        line.ctx.cluster.close()
        self._audit(
            "taken", f"line {line.name} drained and gone", {"line": line.name}, "remove_line"
        )

    def _audit(
        self, outcome: str, reason: str, figures: dict[str, object], action: str = "reload_factory"
    ) -> None:
        services = self.runner.services
        assert services is not None
        services.audit.append(
            agent="controller",
            action=action,
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            figures=figures | {"factory": self.factory.spec.name},
        )
