"""The energy and token ledger: what each side effect cost, per cycle and per day.

Rows are keyed by the side effect that produced them, so a resumed cycle cannot count
the same trial twice. Measured (NVML) and estimated (host CPU) joules are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import LedgerRow


def today_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass
class LedgerTotals:
    tokens: int = 0
    joules: float = 0.0
    measured_joules: float = 0.0
    estimated_joules: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def method(self) -> str:
        if self.measured_joules and self.estimated_joules:
            return "measured+estimated"
        return "measured" if self.measured_joules else "estimated"

    @property
    def tokens_per_joule(self) -> float | None:
        return self.tokens / self.joules if self.joules > 0 else None


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self,
        *,
        key: str,
        policy_name: str,
        kind: str,
        tokens: int,
        joules: float,
        method: str,
        cycle_id: str | None = None,
        day: str | None = None,
        model_version: int | None = None,
        node: str | None = None,
    ) -> bool:
        """Record once; returns False when this key was already on the books. ``node``:
        where a trial ran (the node its energy was measured on)."""
        row = LedgerRow(
            key=key,
            policy_name=policy_name,
            cycle_id=cycle_id,
            day=day or today_utc(),
            kind=kind,
            tokens=tokens,
            joules=joules,
            method=method,
            created_at=utcnow_iso(),
            model_version=model_version,
            node=node,
        )
        with self.store.session() as s:
            if s.get(LedgerRow, key) is not None:
                return False
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        return True

    def rows(self, policy_name: str) -> list[LedgerRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(LedgerRow)
                    .where(LedgerRow.policy_name == policy_name)
                    .order_by(LedgerRow.created_at)
                ).all()
            )

    def all_rows(self) -> list[LedgerRow]:
        """Every line's rows (the factory's chargeback)."""
        with self.store.session() as s:
            return list(s.exec(select(LedgerRow).order_by(LedgerRow.created_at)).all())

    def totals(
        self,
        policy_name: str,
        *,
        day: str | None = None,
        cycle_id: str | None = None,
        kind: str | None = None,
    ) -> LedgerTotals:
        stmt = select(LedgerRow).where(LedgerRow.policy_name == policy_name)
        if day:
            stmt = stmt.where(LedgerRow.day == day)
        if cycle_id:
            stmt = stmt.where(LedgerRow.cycle_id == cycle_id)
        if kind:
            stmt = stmt.where(LedgerRow.kind == kind)
        out = LedgerTotals()
        with self.store.session() as s:
            for r in s.exec(stmt):
                out.tokens += r.tokens
                out.joules += r.joules
                if r.method == "measured":
                    out.measured_joules += r.joules
                else:
                    out.estimated_joules += r.joules
                out.by_kind[r.kind] = out.by_kind.get(r.kind, 0) + r.tokens
        return out


def day_totals_by_line(ledger: Ledger, day: str) -> dict[str, tuple[int, float]]:
    """(training tokens, joules of every kind) per line for one day: what the factory's
    shared daily budgets count, lines since removed included."""
    out: dict[str, tuple[int, float]] = {}
    with ledger.store.session() as s:
        for r in s.exec(select(LedgerRow).where(LedgerRow.day == day)):
            tokens, joules = out.get(r.policy_name, (0, 0.0))
            out[r.policy_name] = (
                tokens + (r.tokens if r.kind == "train" else 0),
                joules + r.joules,
            )
    return out
