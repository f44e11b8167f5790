"""Lines an operator paused (`aifactory pause|resume`, the console's buttons): desired
state read by the watch tick, written by whoever acts for the operator."""

from __future__ import annotations

from sqlmodel import select

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import LinePauseRow


class LinePauses:
    def __init__(self, store: Store) -> None:
        self.store = store

    def pause(self, line: str, by: str, reason: str) -> LinePauseRow:
        """Pause ``line``; a line already paused stays paused as it was (ValueError)."""
        with self.store.session() as s:
            row = s.get(LinePauseRow, line)
            if row is not None:
                raise ValueError(f"line {line} is already paused (by {row.paused_by})")
            row = LinePauseRow(
                policy_name=line, paused_by=by, reason=reason, paused_at=utcnow_iso()
            )
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def resume(self, line: str) -> LinePauseRow:
        """Lift the pause; returns what it was (ValueError when the line was not paused)."""
        with self.store.session() as s:
            row = s.get(LinePauseRow, line)
            if row is None:
                raise ValueError(f"line {line} is not paused")
            s.delete(row)
            s.commit()
            return row

    def get(self, line: str) -> LinePauseRow | None:
        with self.store.session() as s:
            return s.get(LinePauseRow, line)

    def all(self) -> dict[str, LinePauseRow]:
        """Every paused line, in one query (the watch tick reads them all at once)."""
        with self.store.session() as s:
            return {row.policy_name: row for row in s.exec(select(LinePauseRow))}
