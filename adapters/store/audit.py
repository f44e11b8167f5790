"""The audit log: an append-only, hash-chained record of every agent decision.

Each event's hash is SHA-256 over its canonical JSON and the previous event's hash, so an
edited, deleted or reordered event breaks the chain at a place `verify` can name. Appends
carry an idempotency key: a resumed cycle re-appending the same decision gets the original
event back instead of a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import AuditEventRow, AuditHeadRow

Outcome = Literal["taken", "refused", "deferred", "failed"]
OUTCOMES: tuple[str, ...] = ("taken", "refused", "deferred", "failed")
GENESIS = "0" * 64


def _clean(value: Any) -> Any:
    """JSON-safe figures: NaN and infinities become strings so the hash is portable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def canonical(value: Any) -> str:
    return json.dumps(_clean(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(row: AuditEventRow) -> str:
    body = {
        "ts": row.ts,
        "cycle_id": row.cycle_id,
        "agent": row.agent,
        "action": row.action,
        "outcome": row.outcome,
        "reason": row.reason,
        "figures": json.loads(row.figures),
        "policy_version": row.policy_version,
        "idem_key": row.idem_key,
        "prev_hash": row.prev_hash,
    }
    if row.line is not None:  # events from before lines existed keep their hashes
        body["line"] = row.line
    return hashlib.sha256(canonical(body).encode()).hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: str
    cycle_id: str | None
    agent: str
    action: str
    outcome: str
    reason: str
    figures: dict[str, Any]
    policy_version: str | None
    hash: str
    line: str | None = None

    @classmethod
    def from_row(cls, row: AuditEventRow) -> AuditEvent:
        assert row.seq is not None
        return cls(
            seq=row.seq,
            ts=row.ts,
            cycle_id=row.cycle_id,
            agent=row.agent,
            action=row.action,
            outcome=row.outcome,
            reason=row.reason,
            figures=json.loads(row.figures),
            policy_version=row.policy_version,
            hash=row.hash,
            line=row.line,
        )


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str = ""


class AuditLog:
    """Append and read decisions; safe for several writer processes (retry on a lost race)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(
        self,
        *,
        agent: str,
        action: str,
        outcome: Outcome,
        reason: str,
        figures: Mapping[str, Any] | None = None,
        cycle_id: str | None = None,
        policy_version: str | None = None,
        key: str | None = None,
        line: str | None = None,
    ) -> AuditEvent:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        figures_text = canonical(figures or {})
        for _attempt in range(50):
            with self.store.session() as s:
                if key is not None:
                    existing = s.exec(
                        select(AuditEventRow).where(AuditEventRow.idem_key == key)
                    ).first()
                    if existing is not None:
                        return AuditEvent.from_row(existing)
                last = s.exec(
                    select(AuditEventRow).order_by(col(AuditEventRow.seq).desc()).limit(1)
                ).first()
                head = s.exec(
                    select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
                ).first()
                if head is None:
                    count = s.exec(select(func.count()).select_from(AuditEventRow)).one()
                    head = AuditHeadRow(id=1, count=count, last_hash=last.hash if last else GENESIS)
                row = AuditEventRow(
                    ts=utcnow_iso(),
                    cycle_id=cycle_id,
                    agent=agent,
                    action=action,
                    outcome=outcome,
                    reason=reason,
                    figures=figures_text,
                    policy_version=policy_version,
                    idem_key=key,
                    line=line,
                    prev_hash=last.hash if last is not None else GENESIS,
                    hash="",
                )
                row.hash = event_hash(row)
                head.count += 1
                head.last_hash = row.hash
                s.add(row)
                s.add(head)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()  # another writer extended the chain first: go again
                    continue
                s.refresh(row)
                return AuditEvent.from_row(row)
        raise RuntimeError("audit append kept losing the race to other writers")

    def has_key(self, key: str) -> bool:
        with self.store.session() as s:
            return (
                s.exec(select(AuditEventRow.seq).where(AuditEventRow.idem_key == key)).first()
                is not None
            )

    def events(
        self,
        *,
        agent: str | None = None,
        cycle_id: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        line: str | None = None,
        action: str | None = None,
    ) -> list[AuditEvent]:
        """Matching events, oldest first; with ``limit``, only the newest that many."""
        stmt = select(AuditEventRow)
        for column, value in (
            (AuditEventRow.line, line),
            (AuditEventRow.agent, agent),
            (AuditEventRow.cycle_id, cycle_id),
            (AuditEventRow.action, action),
        ):
            if value:
                stmt = stmt.where(column == value)
        if since:
            stmt = stmt.where(AuditEventRow.ts >= since)
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must not be negative")
            stmt = stmt.order_by(col(AuditEventRow.seq).desc()).limit(limit)
        else:
            stmt = stmt.order_by(col(AuditEventRow.seq))
        with self.store.session() as s:
            rows = list(s.exec(stmt))
        if limit is not None:
            rows.reverse()
        return [AuditEvent.from_row(r) for r in rows]

    def for_line(self, line: str) -> LineAudit:
        """The same chain, with every event this handle appends carrying `line`."""
        return LineAudit(self, line)

    def verify(self) -> ChainReport:
        """Walk the chain in order; name the first event that was edited, removed or moved."""
        with self.store.session() as s:
            rows = list(s.exec(select(AuditEventRow).order_by(col(AuditEventRow.seq))))
            head = s.get(AuditHeadRow, 1)
        prev = GENESIS
        prev_seq = 0
        for row in rows:
            assert row.seq is not None
            if row.hash != event_hash(row):
                return ChainReport(False, len(rows), row.seq, f"event {row.seq} was edited")
            if row.prev_hash != prev:
                if row.seq != prev_seq + 1:
                    problem = (
                        f"event(s) {prev_seq + 1}..{row.seq - 1} were deleted before "
                        f"event {row.seq}"
                    )
                else:
                    problem = f"event {row.seq} does not follow event {prev_seq} (reordered?)"
                return ChainReport(False, len(rows), row.seq, problem)
            prev = row.hash
            prev_seq = row.seq
        if head is not None and (head.count != len(rows) or head.last_hash != prev):
            missing = head.count - len(rows)
            return ChainReport(
                False,
                len(rows),
                prev_seq + 1,
                f"the chain ends at event {prev_seq} but its head records {head.count} events "
                f"({missing} missing at the end: deleted after event {prev_seq}?)",
            )
        return ChainReport(True, len(rows))


class LineAudit:
    """One production line's view of the factory's audit chain: what it appends names the
    line (one chain for the whole factory, so `verify` covers every line at once)."""

    def __init__(self, log: AuditLog, line: str) -> None:
        self.log, self.line = log, line
        self.store = log.store

    def append(self, **event: Any) -> AuditEvent:
        event.setdefault("line", self.line)
        return self.log.append(**event)

    def has_key(self, key: str) -> bool:
        return self.log.has_key(key)

    def events(self, **filters: Any) -> list[AuditEvent]:
        return self.log.events(**filters)

    def verify(self) -> ChainReport:
        return self.log.verify()
