"""Captured traffic in the store (the `adapters.traffic_capture.CaptureSink` of the daemon):
kept prompts, the data files they were gathered into, and their deletion when expired."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select, update

from adapters.store.db import Store
from adapters.store.tables import CaptureRow
from adapters.traffic_capture import Captured


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CaptureLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, rows: list[Captured]) -> int:
        """Store kept prompts; a text the line already holds is skipped. Returns how many
        were new."""
        new = 0
        with self.store.session() as s:
            seen = set(
                s.exec(
                    select(CaptureRow.line, CaptureRow.sha256).where(
                        col(CaptureRow.sha256).in_({r.sha256 for r in rows})
                    )
                ).all()
            )
        for r in rows:
            if (r.line, r.sha256) in seen:
                continue
            seen.add((r.line, r.sha256))
            new += self._insert(r)
        return new

    def _insert(self, r: Captured) -> int:
        row = CaptureRow(
            line=r.line,
            version=r.version,
            completion_id=r.completion_id,
            sha256=r.sha256,
            text=r.text,
            size=len(r.text.encode("utf-8")),
            day=r.day,
            captured_at=_iso(r.captured_at),
        )
        with self.store.session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # another member kept the same text at once
                s.rollback()
                return 0
        return 1

    def bytes_on(self, line: str, day: str) -> int:
        with self.store.session() as s:
            total = s.exec(
                select(func.coalesce(func.sum(CaptureRow.size), 0)).where(
                    CaptureRow.line == line, CaptureRow.day == day
                )
            ).one()
        return int(total)

    def pending(self, line: str, since: str = "") -> list[CaptureRow]:
        """Kept prompts captured since an ISO time not yet gathered into a data file,
        oldest first."""
        with self.store.session() as s:
            return list(
                s.exec(
                    select(CaptureRow)
                    .where(
                        CaptureRow.line == line,
                        col(CaptureRow.batch).is_(None),
                        CaptureRow.captured_at >= since,
                    )
                    .order_by(col(CaptureRow.id))
                ).all()
            )

    def pending_bytes(self, line: str, since: str = "") -> int:
        with self.store.session() as s:
            total = s.exec(
                select(func.coalesce(func.sum(CaptureRow.size), 0)).where(
                    CaptureRow.line == line,
                    col(CaptureRow.batch).is_(None),
                    CaptureRow.captured_at >= since,
                )
            ).one()
        return int(total)

    def claim(self, ids: list[int], batch: str) -> bool:
        """Name the batch these rows go into, all of them or none: False (nothing changed)
        when some were claimed by someone else meanwhile."""
        with self.store.session() as s:
            result = s.exec(
                update(CaptureRow)  # type: ignore[call-overload]
                .where(col(CaptureRow.id).in_(ids), col(CaptureRow.batch).is_(None))
                .values(batch=batch)
            )
            if result.rowcount != len(ids):
                s.rollback()
                return False
            s.commit()
        return True

    def expiring(self, line: str, before: str) -> tuple[int, int, list[str]]:
        """What expiring the line's text captured before an ISO time would delete: (rows,
        bytes, the data files that hold some of it)."""
        where = (CaptureRow.line == line, CaptureRow.captured_at < before)
        with self.store.session() as s:
            rows, size = s.exec(
                select(func.count(), func.coalesce(func.sum(CaptureRow.size), 0)).where(*where)
            ).one()
            batches = s.exec(
                select(CaptureRow.batch)
                .where(*where, col(CaptureRow.batch).is_not(None))
                .distinct()
            ).all()
        return int(rows), int(size), sorted(b for b in batches if b)

    def expire(self, line: str, before: str) -> int:
        """Delete the line's text captured before an ISO time; returns the rows deleted."""
        with self.store.session() as s:
            result = s.exec(
                delete(CaptureRow).where(  # type: ignore[call-overload]
                    CaptureRow.line == line, CaptureRow.captured_at < before
                )
            )
            s.commit()
        return int(result.rowcount or 0)

    def count(self, line: str) -> int:
        with self.store.session() as s:
            return int(s.exec(select(func.count()).where(CaptureRow.line == line)).one())

    def unbatch(self, line: str, batch: str) -> int:
        """Send a deleted file's remaining prompts back to the pending pool."""
        with self.store.session() as s:
            rows = s.exec(
                select(CaptureRow).where(CaptureRow.line == line, CaptureRow.batch == batch)
            ).all()
            for row in rows:
                row.batch = None
                s.add(row)
            s.commit()
        return len(rows)

    def batches(self, line: str) -> list[str]:
        with self.store.session() as s:
            names = s.exec(
                select(CaptureRow.batch)
                .where(CaptureRow.line == line, col(CaptureRow.batch).is_not(None))
                .distinct()
            ).all()
        return sorted(n for n in names if n)

    def rows_of(self, line: str, batch: str) -> list[CaptureRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(CaptureRow)
                    .where(CaptureRow.line == line, CaptureRow.batch == batch)
                    .order_by(col(CaptureRow.id))
                ).all()
            )
