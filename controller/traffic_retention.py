"""Kept traffic older than the line's `capture.retention_days` is deleted, and audited.

Checked from the line's watch tick, at most once a minute and only while the line is idle
(no cycle is reading the batch files it may delete)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from adapters.traffic_source import TrafficSource, find_traffic
from agents.actions import Action
from controller.context import LineContext

CHECK_EVERY_S = 60.0


class TrafficRetention:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx
        self._checked_at = 0.0

    def check(self, now: float | None = None) -> Action | None:
        """Delete what expired; the audited action, or None when nothing was due."""
        now = time.time() if now is None else now
        if now - self._checked_at < CHECK_EVERY_S:
            return None
        self._checked_at = now
        traffic = find_traffic(self.ctx.source)
        if traffic is None:
            return None
        return self._expire(traffic, now)

    def _expire(self, traffic: TrafficSource, now: float) -> Action | None:
        days = self.ctx.policy.data.capture.retention_days
        cutoff = datetime.fromtimestamp(now - days * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        gone = traffic.expire(cutoff)
        if not gone.rows:
            return None
        action = Action(
            "data",
            "expire_traffic",
            "taken",
            f"deleted {gone.rows} kept prompts ({gone.bytes} bytes) captured before {cutoff} "
            f"(retention {days:g} days) and {len(gone.files)} data files that held them",
            {
                "rows": gone.rows,
                "bytes": gone.bytes,
                "files": list(gone.files),
                "cutoff": cutoff,
                "retention_days": days,
            },
        )
        self.ctx.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
            figures=action.figures,
            policy_version=self.ctx.policy.version,
            key=f"{self.ctx.name}:expire_traffic:{cutoff}",
        )
        return action
