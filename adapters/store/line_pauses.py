"""Lines an operator paused (`aifactory pause|resume`, the console's buttons): desired
state read by the watch tick, written by whoever acts for the operator."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import LinePauseRow


class LinePauses:
    def __init__(self, store: Store) -> None:
        self.store = store

    def pause(self, line: str, by: str, reason: str) -> LinePauseRow:
        """Pause ``line``; a line already paused stays paused as it was (ValueError), also
        when two operators ask at the same instant."""
        row = LinePauseRow(policy_name=line, paused_by=by, reason=reason, paused_at=utcnow_iso())
        with self.store.session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                held = s.get(LinePauseRow, line)
                who = held.paused_by if held is not None else "someone else"
                raise ValueError(f"line {line} is already paused (by {who})") from None
            s.refresh(row)
            return row

    def resume(self, line: str) -> LinePauseRow:
        """Lift the pause; returns what it was (ValueError when the line was not paused).
        Of two operators resuming at once, one lifts it and the other is told so."""
        with self.store.session() as s:
            row = s.get(LinePauseRow, line)
            if row is None:
                raise ValueError(f"line {line} is not paused")
            s.expunge(row)
            gone = s.exec(delete(LinePauseRow).where(col(LinePauseRow.policy_name) == line))
            s.commit()
            if gone.rowcount != 1:
                raise ValueError(f"line {line} is not paused")
            return row

    def get(self, line: str) -> LinePauseRow | None:
        with self.store.session() as s:
            return s.get(LinePauseRow, line)

    def all(self) -> dict[str, LinePauseRow]:
        """Every paused line, in one query (the watch tick reads them all at once)."""
        with self.store.session() as s:
            return {row.policy_name: row for row in s.exec(select(LinePauseRow))}
