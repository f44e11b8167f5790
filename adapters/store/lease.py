"""The lease and the member list in PostgreSQL: the side effects of leader election.

`attempt` reads the lease under its row lock, asks `agents.leadership.decide_lease`, and
writes what it decided in the same transaction; times come from the database's clock.
A new term also moves `af_term`, which waits for every fenced write of the old term still
in flight (see `adapters.store.fencing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlmodel import select

from adapters.store.db import Store
from adapters.store.fencing import TERM
from adapters.store.tables import MemberRow
from agents.leadership import LeaseDecision, LeaseView, decide_lease

_NOW = "extract(epoch from clock_timestamp())"


@dataclass(frozen=True)
class LeaseOutcome:
    decision: LeaseDecision
    view: LeaseView
    epoch: int | None  # the term this member now leads (None: it follows)
    expires_at: float | None  # its lease's expiry on the database's clock


class LeaseTable:
    """Lease and member rows, through a store whose connections are never fenced."""

    def __init__(self, store: Store, name: str = TERM) -> None:
        self.store = store
        self.name = name

    def ensure(self) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO af_lease (name, holder, epoch, renewed_at, expires_at, reason) "
                    "VALUES (:n, '', 0, 0, 0, 'vacant') ON CONFLICT DO NOTHING"
                ),
                {"n": self.name},
            )
            conn.execute(
                text("INSERT INTO af_term (name, epoch) VALUES (:n, 0) ON CONFLICT DO NOTHING"),
                {"n": self.name},
            )

    def attempt(self, me: str, my_epoch: int | None, ttl_s: float) -> LeaseOutcome:
        """One round of the election, decided and written in one transaction."""
        with self.store.engine.begin() as conn:
            # a new term waits for the old term's writes in flight; never for ever
            conn.execute(text("SET LOCAL lock_timeout = '5s'"))
            conn.execute(text("SET LOCAL statement_timeout = '10s'"))
            row = conn.execute(
                text(
                    f"SELECT holder, epoch, expires_at, reason, {_NOW} AS now "
                    "FROM af_lease WHERE name = :n FOR UPDATE"
                ),
                {"n": self.name},
            ).one()
            view = LeaseView(
                holder=row.holder,
                epoch=int(row.epoch),
                expires_at=float(row.expires_at),
                now=float(row.now),
                released=row.reason == "released",
            )
            decision = decide_lease(view, me, my_epoch)
            if decision.action == "acquire":
                epoch = view.epoch + 1
                self._write(conn, me, epoch, ttl_s, decision.why)
                conn.execute(
                    text("UPDATE af_term SET epoch = :e WHERE name = :n"),
                    {"e": epoch, "n": self.name},
                )
                return LeaseOutcome(decision, view, epoch, view.now + ttl_s)
            if decision.action == "renew":
                self._write(conn, me, view.epoch, ttl_s, "renewed")
                return LeaseOutcome(decision, view, view.epoch, view.now + ttl_s)
            return LeaseOutcome(decision, view, None, None)

    def _write(self, conn: Any, me: str, epoch: int, ttl_s: float, reason: str) -> None:
        conn.execute(
            text(
                f"UPDATE af_lease SET holder = :me, epoch = :e, renewed_at = {_NOW}, "
                f"expires_at = {_NOW} + :ttl, reason = :r WHERE name = :n"
            ),
            {"me": me, "e": epoch, "ttl": ttl_s, "r": reason, "n": self.name},
        )

    def release(self, me: str, epoch: int) -> bool:
        """Hand the lease back (a clean stop): a follower takes over on its next round
        instead of waiting for the lease to expire."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                text(
                    f"UPDATE af_lease SET holder = '', expires_at = {_NOW}, reason = 'released' "
                    "WHERE name = :n AND holder = :me AND epoch = :e"
                ),
                {"n": self.name, "me": me, "e": epoch},
            )
            return bool(done.rowcount)

    def current(self) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                text(
                    f"SELECT holder, epoch, renewed_at, expires_at, reason, {_NOW} AS now "
                    "FROM af_lease WHERE name = :n"
                ),
                {"n": self.name},
            ).first()
        return dict(row._mapping) if row is not None else {}

    # members --------------------------------------------------------------------------

    def beat(self, member: dict[str, Any]) -> None:
        """Upsert this member's row, its heartbeat on the database's clock."""
        cols = list(member)
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
        with self.store.engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO af_member ({', '.join(cols)}, heartbeat_at, fenced_writes, "
                    f"fenced_seen) VALUES ({', '.join(':' + c for c in cols)}, {_NOW}, 0, 0) "
                    f"ON CONFLICT (id) DO UPDATE SET {sets}, heartbeat_at = {_NOW}"
                ),
                member,
            )

    def report_fenced(self, me: str, message: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE af_member SET fenced_writes = fenced_writes + 1, "
                    "fenced_detail = :d WHERE id = :me"
                ),
                {"d": message[:2000], "me": me},
            )

    def mark_seen(self, member_id: str, count: int) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE af_member SET fenced_seen = :c WHERE id = :m"),
                {"c": count, "m": member_id},
            )

    def members(self) -> list[MemberRow]:
        with self.store.session() as s:
            return list(s.exec(select(MemberRow).order_by(MemberRow.started_at)).all())

    def now(self) -> float:
        with self.store.engine.connect() as conn:
            return float(conn.execute(text(f"SELECT {_NOW}")).scalar_one())


def member_view(row: MemberRow, now: float, lease: dict[str, Any]) -> dict[str, Any]:
    """One member as `aifactory status` shows it."""
    leads = lease.get("holder") == row.id and float(lease.get("expires_at") or 0) > now
    return {
        "id": row.id,
        "host": row.host,
        "pid": row.pid,
        "role": "leader" if leads else row.role,
        "epoch": row.epoch,
        "heartbeat_age_s": round(now - row.heartbeat_at, 1),
        "lease_expires_in_s": round(float(lease["expires_at"]) - now, 1) if leads else None,
        "serving_url": row.serving_url,
        "fenced_writes": row.fenced_writes,
        "started_at": row.started_at,
    }
