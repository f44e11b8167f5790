"""Canary rollouts: the traffic split the server follows, and the answers of people.

The rollout row is *desired state*: the rollout node writes the step and weight, the
daemon's serving reconciler routes that share of requests to the challenger, and
`aifactory rollout continue|abort` records a person's answer to a paused step.
"""

from __future__ import annotations

import json

from sqlmodel import col, select

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import RolloutRow

ACTIVE = ("running", "paused")


class RolloutBook:
    def __init__(self, store: Store) -> None:
        self.store = store

    def start(
        self,
        policy_name: str,
        cycle_id: str,
        *,
        champion: int | None,
        challenger: int,
        steps: list[float],
        loss_sample_rate: float,
    ) -> RolloutRow:
        """The cycle's rollout, created once (a resumed node finds the same row)."""
        with self.store.session() as s:
            row = s.exec(select(RolloutRow).where(RolloutRow.cycle_id == cycle_id)).first()
            if row is None:
                now = utcnow_iso()
                # one rollout at a time per line: an older one still open is superseded
                for old in s.exec(
                    select(RolloutRow).where(
                        RolloutRow.policy_name == policy_name, col(RolloutRow.status).in_(ACTIVE)
                    )
                ).all():
                    old.status, old.weight_pct, old.updated_at = "aborted", 0.0, now
                    old.reason = f"superseded by the rollout of cycle {cycle_id}"
                    s.add(old)
                row = RolloutRow(
                    policy_name=policy_name,
                    cycle_id=cycle_id,
                    champion_version=champion,
                    challenger_version=challenger,
                    steps=json.dumps(steps),
                    loss_sample_rate=loss_sample_rate,
                    started_at=now,
                    updated_at=now,
                )
                s.add(row)
                s.commit()
                s.refresh(row)
            return row

    def for_cycle(self, cycle_id: str) -> RolloutRow | None:
        with self.store.session() as s:
            return s.exec(select(RolloutRow).where(RolloutRow.cycle_id == cycle_id)).first()

    def active(self, policy_name: str) -> RolloutRow | None:
        """The rollout serving should follow now, if any."""
        with self.store.session() as s:
            return s.exec(
                select(RolloutRow)
                .where(RolloutRow.policy_name == policy_name, col(RolloutRow.status).in_(ACTIVE))
                .order_by(col(RolloutRow.id).desc())
            ).first()

    def all_active(self) -> dict[str, RolloutRow]:
        """Every line's active rollout in one query (the newest per line)."""
        with self.store.session() as s:
            rows = s.exec(
                select(RolloutRow)
                .where(col(RolloutRow.status).in_(ACTIVE))
                .order_by(col(RolloutRow.id))
            ).all()
        return {r.policy_name: r for r in rows}

    def recent(self, policy_name: str, limit: int = 10) -> list[RolloutRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(RolloutRow)
                    .where(RolloutRow.policy_name == policy_name)
                    .order_by(col(RolloutRow.id).desc())
                    .limit(limit)
                ).all()
            )

    def update(
        self,
        cycle_id: str,
        *,
        step: int | None = None,
        weight_pct: float | None = None,
        status: str | None = None,
        reason: str | None = None,
        clear_decision: bool = False,
    ) -> RolloutRow:
        with self.store.session() as s:
            row = s.exec(select(RolloutRow).where(RolloutRow.cycle_id == cycle_id)).one()
            if step is not None:
                row.step = step
            if weight_pct is not None:
                row.weight_pct = weight_pct
            if status is not None:
                row.status = status
            if reason is not None:
                row.reason = reason
            if clear_decision:
                row.decision, row.decided_by, row.decision_reason = None, "", ""
            row.updated_at = utcnow_iso()
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def decide(self, policy_name: str, decision: str, by: str, reason: str) -> RolloutRow:
        """A person's answer to the policy's paused rollout: continue or abort."""
        if decision not in ("continue", "abort"):
            raise ValueError(f"decision must be continue or abort, not {decision!r}")
        with self.store.session() as s:
            row = s.exec(
                select(RolloutRow)
                .where(RolloutRow.policy_name == policy_name, col(RolloutRow.status).in_(ACTIVE))
                .order_by(col(RolloutRow.id).desc())
                .with_for_update()
            ).first()
            if row is None:
                raise LookupError(f"no rollout in progress for {policy_name}")
            if decision == "continue" and row.status != "paused":
                raise ValueError(
                    f"the rollout of v{row.challenger_version} is not paused (it is {row.status} "
                    f"at {row.weight_pct:g}%); `abort` stops it at any time"
                )
            row.decision, row.decided_by, row.decision_reason = decision, by, reason
            row.updated_at = utcnow_iso()
            s.add(row)
            s.commit()
            s.refresh(row)
            return row
