"""Production cycles, their trial side effects, policy versions and the daemon's heartbeat."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from adapters.store.audit import canonical
from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import (
    ApprovalRow,
    CycleRow,
    DaemonStateRow,
    ParetoPointRow,
    PolicyVersionRow,
    TrialRunRow,
)
from policies.model import Policy


class CycleBook:
    def __init__(self, store: Store) -> None:
        self.store = store

    # policy versions ------------------------------------------------------------------

    def save_policy(self, policy: Policy, source: str) -> str:
        version = policy.version
        with self.store.session() as s:
            if s.get(PolicyVersionRow, version) is None:
                s.add(
                    PolicyVersionRow(
                        version=version,
                        name=policy.name,
                        body=policy.canonical_json(),
                        source=source,
                        created_at=utcnow_iso(),
                    )
                )
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
        return version

    def policy(self, version: str) -> Policy | None:
        """The policy version as stored when a daemon adopted it (what it runs, not the
        file on disk, which may have been edited since)."""
        with self.store.session() as s:
            row = s.get(PolicyVersionRow, version)
        return Policy.model_validate_json(row.body) if row is not None else None

    # cycles ---------------------------------------------------------------------------

    def start(self, policy_name: str, policy_version: str, trigger: str) -> CycleRow:
        for _ in range(20):
            with self.store.session() as s:
                n = s.exec(
                    select(func.count())
                    .select_from(CycleRow)
                    .where(CycleRow.policy_name == policy_name)
                ).one()
                row = CycleRow(
                    id=f"{policy_name}-c{n + 1:04d}",
                    policy_name=policy_name,
                    number=n + 1,
                    policy_version=policy_version,
                    trigger=trigger,
                    status="running",
                    started_at=utcnow_iso(),
                    summary="{}",
                )
                s.add(row)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                    continue
                return row
        raise RuntimeError("could not allocate a cycle id")

    def unfinished(self, policy_name: str) -> CycleRow | None:
        with self.store.session() as s:
            return s.exec(
                select(CycleRow)
                .where(CycleRow.policy_name == policy_name, CycleRow.status == "running")
                .order_by(col(CycleRow.number))
                .limit(1)
            ).first()

    def get(self, cycle_id: str) -> CycleRow | None:
        with self.store.session() as s:
            return s.get(CycleRow, cycle_id)

    def finish(self, cycle_id: str, status: str, summary: dict[str, Any]) -> None:
        with self.store.session() as s:
            row = s.get(CycleRow, cycle_id)
            if row is None:
                return
            row.status = status
            row.finished_at = utcnow_iso()
            row.summary = canonical(summary)
            s.add(row)
            s.commit()

    def completed_count(self, policy_name: str) -> int:
        with self.store.session() as s:
            return s.exec(
                select(func.count())
                .select_from(CycleRow)
                .where(CycleRow.policy_name == policy_name, CycleRow.status == "completed")
            ).one()

    def tick_counts(self) -> tuple[dict[str, int], dict[str, set[str]]]:
        """Every line's completed cycles and the cycles waiting for a person, in two
        queries (the factory's watch tick)."""
        with self.store.session() as s:
            done = s.exec(
                select(CycleRow.policy_name, func.count())
                .where(CycleRow.status == "completed")
                .group_by(CycleRow.policy_name)
            ).all()
            waiting = s.exec(
                select(CycleRow.policy_name, CycleRow.id).where(
                    CycleRow.status == "awaiting_approval"
                )
            ).all()
        awaiting: dict[str, set[str]] = {}
        for name, cid in waiting:
            awaiting.setdefault(name, set()).add(cid)
        return {name: int(n) for name, n in done}, awaiting

    def recent(self, policy_name: str, limit: int = 10) -> list[CycleRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(CycleRow)
                    .where(CycleRow.policy_name == policy_name)
                    .order_by(col(CycleRow.number).desc())
                    .limit(limit)
                ).all()
            )

    # trials ---------------------------------------------------------------------------

    def trial(self, key: str) -> TrialRunRow | None:
        with self.store.session() as s:
            return s.get(TrialRunRow, key)

    def trials(self, cycle_id: str) -> list[TrialRunRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(TrialRunRow)
                    .where(TrialRunRow.cycle_id == cycle_id)
                    .order_by(col(TrialRunRow.key))
                ).all()
            )

    def put_trial(self, row: TrialRunRow) -> None:
        with self.store.session() as s:
            s.merge(row)
            s.commit()

    # daemon state -----------------------------------------------------------------------

    def publish_state(self, policy_name: str, **fields: Any) -> None:
        with self.store.session() as s:
            row = s.get(DaemonStateRow, policy_name) or DaemonStateRow(policy_name=policy_name)
            for k, v in fields.items():
                setattr(row, k, v)
            s.add(row)
            s.commit()

    def publish_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Every line's heartbeat in one transaction."""
        if not states:
            return
        with self.store.session() as s:
            rows = {
                r.policy_name: r
                for r in s.exec(
                    select(DaemonStateRow).where(col(DaemonStateRow.policy_name).in_(states))
                )
            }
            for policy_name, fields in states.items():
                row = rows.get(policy_name) or DaemonStateRow(policy_name=policy_name)
                for k, v in fields.items():
                    setattr(row, k, v)
                s.add(row)
            s.commit()

    def daemon_state(self, policy_name: str) -> DaemonStateRow | None:
        with self.store.session() as s:
            return s.get(DaemonStateRow, policy_name)

    def policy_names(self) -> list[str]:
        with self.store.session() as s:
            return sorted(set(s.exec(select(PolicyVersionRow.name)).all()))

    # approvals --------------------------------------------------------------------------

    def request_approval(self, policy_name: str, cycle_id: str, version: int) -> ApprovalRow:
        with self.store.session() as s:
            row = s.exec(select(ApprovalRow).where(ApprovalRow.cycle_id == cycle_id)).first()
            if row is None:
                row = ApprovalRow(
                    policy_name=policy_name,
                    cycle_id=cycle_id,
                    version=version,
                    requested_at=utcnow_iso(),
                )
                s.add(row)
                s.commit()
                s.refresh(row)
            return row

    def approvals(
        self, policy_name: str | None = None, status: str | None = None
    ) -> list[ApprovalRow]:
        stmt = select(ApprovalRow)
        if policy_name:
            stmt = stmt.where(ApprovalRow.policy_name == policy_name)
        if status:
            stmt = stmt.where(ApprovalRow.status == status)
        with self.store.session() as s:
            return list(s.exec(stmt.order_by(col(ApprovalRow.id))).all())

    def decide_approval(
        self, approval_id: int, approved: bool, by: str, reason: str
    ) -> ApprovalRow:
        with self.store.session() as s:
            row = s.get(ApprovalRow, approval_id)
            if row is None:
                raise KeyError(f"no approval request {approval_id}")
            if row.status != "pending":
                raise ValueError(f"approval {approval_id} is already {row.status}")
            row.status = "approved" if approved else "rejected"
            row.decided_at, row.decided_by, row.reason = utcnow_iso(), by, reason
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    # pareto fronts -----------------------------------------------------------------------

    def save_pareto(self, cycle_id: str, trials: list[Any], front_keys: set[str]) -> None:
        """Store every usable trial of the cycle with its place on the front (idempotent)."""
        with self.store.session() as s:
            for t in trials:
                if not getattr(t, "usable", False):
                    continue
                row = s.exec(
                    select(ParetoPointRow).where(ParetoPointRow.trial_key == t.key)
                ).first() or ParetoPointRow(cycle_id=cycle_id, trial_key=t.key, params="{}")
                row.optuna_number = t.number
                row.valid_bpb = t.valid_bpb
                row.energy_cost = t.energy_cost
                row.on_front = t.key in front_keys
                row.params = canonical(t.params)
                s.add(row)
            s.commit()

    def pareto(self, cycle_id: str) -> list[ParetoPointRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(ParetoPointRow)
                    .where(ParetoPointRow.cycle_id == cycle_id)
                    .order_by(col(ParetoPointRow.valid_bpb))
                ).all()
            )
