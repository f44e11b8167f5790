"""A line's policy file, watched: an edit is validated on the tick; a good one is staged
and applied by the line's own thread between cycles, a bad one is refused (audited, with
its lines) and the last good policy stays."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Protocol

from controller.context import LineContext
from policies.loader import PolicyError, load_policy
from policies.model import Policy


class WatchedLine(Protocol):
    """What the watch needs of its line (`controller.line.ProductionLine`)."""

    ctx: LineContext
    busy: threading.Event
    requests: queue.Queue[tuple[str, str]]

    @property
    def name(self) -> str: ...

    def say(self, message: str) -> None: ...

    def adopt(self, policy: Policy) -> None: ...


class PolicyWatch:
    def __init__(self, path: Path, policy: Policy) -> None:
        self.path = path
        try:
            self._mtime: float | None = path.stat().st_mtime
        except OSError:
            self._mtime = None
        self._staged: Policy | None = None
        self._lock = threading.Lock()

    def check(self, line: WatchedLine) -> None:
        """Tick thread: validate an edited file; stage a good policy, refuse a bad one."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        ctx = line.ctx
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self._refuse(
                line,
                f"{self.path} has errors; keeping policy {ctx.policy.version}: "
                + "; ".join(str(p) for p in exc.problems),
                {"problems": [p.__dict__ for p in exc.problems]},
            )
            line.say(f"[policy] refused, keeping the last good policy:\n{exc}")
            return
        if policy.version == ctx.policy.version:
            with self._lock:
                self._staged = None
            return
        if policy.name != ctx.policy.name:
            self._refuse(
                line,
                f"policy name changed from {ctx.policy.name} to {policy.name}; "
                "a running line keeps its name (add a new line to the factory)",
                {},
            )
            return
        with self._lock:
            self._staged = policy
        if not line.busy.is_set():
            line.requests.put(("policy", ""))

    def _refuse(self, line: WatchedLine, reason: str, figures: dict[str, object]) -> None:
        line.ctx.audit.append(
            agent="controller",
            action="reload_policy",
            outcome="refused",
            reason=reason,
            figures=figures | {"line": line.name},
            policy_version=line.ctx.policy.version,
        )

    def apply_staged(self, line: WatchedLine) -> None:
        """Line thread, between cycles: adopt the staged policy."""
        with self._lock:
            policy, self._staged = self._staged, None
        if policy is not None and policy.version != line.ctx.policy.version:
            line.adopt(policy)
