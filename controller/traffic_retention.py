"""Kept traffic older than the line's `capture.retention_days` is deleted, and audited.

Wherever the text went on this member: the kept prompts, the batch files gathered from
them, and the training and held-out splits ingested from those files (here and in the
shared artefact store); such files are marked expired first, read by nothing again, and
the next dataset version leaves them out. The cutoff moves in whole hours (a 24th of a
shorter retention), so every step is keyed by it: the audit event is written first (once
per line and cutoff), then the deletions, each of which is safe to repeat, and a daemon
killed midway finishes the same expiry when it comes back. It runs whatever the policy says
about capture now (an earlier policy may have kept text). Each check also sweeps this
member's leftovers: batch files no kept row names, interrupted writes, and local copies of
splits expired while another member led.

Checked from the line's watch tick, at most once a minute and only while the line is idle
(no cycle is reading the files it deletes): text is gone within an hour of expiring.
Not reached: copies a Ray node cached for its trials, and other members' state directories
until they lead (their own sweep).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from adapters.traffic_source import LABEL, Expired, TrafficSource
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
        traffic: TrafficSource | None = self.ctx.kept_traffic
        if traffic is None:
            return None
        action = self._expire(traffic, now)
        traffic.sweep()
        self._sweep_expired_splits()
        return action

    def _expire(self, traffic: TrafficSource, now: float) -> Action | None:
        days = traffic.spec.retention_days
        step = min(3600.0, days * 86400 / 24)  # an hour, or less for a short retention
        edge = (now - days * 86400) // step * step
        cutoff = datetime.fromtimestamp(edge, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        due = traffic.expiring(cutoff)
        if not due.rows:
            return None
        ingested = self.ctx.catalog.from_sources(self.ctx.name, LABEL, set(due.batches))
        action = self._audit(due, cutoff, days, len(ingested))
        for row in ingested:
            self._forget(row.sha256, row.status, row.blob_path, cutoff)
        traffic.expire(cutoff, due.batches)
        return action

    def _forget(self, sha256: str, status: str, blob_path: str, cutoff: str) -> None:
        """An ingested batch's splits (or its quarantined copy), here and in the share;
        marked expired first, so no reader is ever sent to a deleted file."""
        ctx = self.ctx
        ctx.catalog.mark_expired(ctx.name, sha256, f"captured text expired (before {cutoff})")
        paths = list(ctx.ingestor.blob_paths(sha256)) if status != "quarantined" else []
        if status == "quarantined" and blob_path:
            paths.append(Path(blob_path))
        for path in paths:
            if ctx.files is not None:
                ctx.files.remove(path)
            else:
                Path(path).unlink(missing_ok=True)

    def _sweep_expired_splits(self) -> None:
        """Local copies of splits that expired while another member led."""
        ctx = self.ctx
        for row in ctx.catalog.with_status(ctx.name, "expired"):
            for path in ctx.ingestor.blob_paths(row.sha256):
                Path(path).unlink(missing_ok=True)

    def _audit(self, due: Expired, cutoff: str, days: float, ingested: int) -> Action:
        action = Action(
            "data",
            "expire_traffic",
            "taken",
            f"deleting {due.rows} kept prompts ({due.bytes} bytes) captured before {cutoff} "
            f"(retention {days:g} days), {len(due.batches)} data files that held them and "
            f"the {ingested} ingested from those",
            {
                "rows": due.rows,
                "bytes": due.bytes,
                "files": list(due.batches),
                "ingested_files": ingested,
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
