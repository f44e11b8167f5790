"""Clients' feedback on served answers: one row per rated answer, the version that gave it
(the store side of `adapters.serving_feedback.FeedbackSink`).

Keyed by the completion id, so a client that sends the same rating twice (a retry) or
changes its mind leaves one row, never two. Read by the canary (ratings of champion and
challenger since the rollout began), the evaluator (corrections, as data the models are
scored on) and `aifactory feedback`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from adapters.serving_feedback import Feedback
from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import FeedbackRow


@dataclass(frozen=True)
class VersionFeedback:
    """A version's feedback so far: how many answers were rated, their mean, corrections."""

    line: str
    version: int
    ratings: int
    mean_rating: float
    corrections: int


class FeedbackLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, fb: Feedback) -> float | None:
        """Store a rating; returns the rating it replaced (None when the answer is new)."""
        now = utcnow_iso()
        for _ in range(3):
            with self.store.session() as s:
                row = s.exec(
                    select(FeedbackRow).where(FeedbackRow.completion_id == fb.completion_id)
                ).first()
                if row is not None:
                    previous = row.rating
                    row.rating, row.updated_at = fb.rating, now
                    if fb.correction is not None:
                        row.correction = fb.correction
                    s.add(row)
                    s.commit()
                    return previous
                s.add(
                    FeedbackRow(
                        completion_id=fb.completion_id,
                        line=fb.line,
                        version=fb.version,
                        rating=fb.rating,
                        correction=fb.correction,
                        routed=fb.routed,
                        created_at=now,
                        updated_at=now,
                    )
                )
                try:
                    s.commit()
                    return None
                except IntegrityError:
                    s.rollback()  # the same answer rated at once elsewhere: update theirs
        raise RuntimeError(f"could not store feedback for {fb.completion_id}")

    def ratings(self, line: str, versions: list[int], since: str) -> dict[int, list[float]]:
        """Ratings, since an ISO time, of the given versions' answers that the line's routing
        chose (a version a client pinned is no evidence about a canary's split), per version."""
        out: dict[int, list[float]] = {v: [] for v in versions}
        with self.store.session() as s:
            rows = s.exec(
                select(FeedbackRow.version, FeedbackRow.rating).where(
                    FeedbackRow.line == line,
                    col(FeedbackRow.version).in_(versions),
                    FeedbackRow.updated_at >= since,
                    col(FeedbackRow.routed).is_(True),
                )
            ).all()
        for version, rating in rows:
            out[version].append(rating)
        return out

    def corrections(self, line: str, limit: int = 1000) -> list[str]:
        """The line's newest corrections (what users said answers should have been)."""
        with self.store.session() as s:
            rows = s.exec(
                select(FeedbackRow.correction)
                .where(FeedbackRow.line == line, col(FeedbackRow.correction).is_not(None))
                .order_by(col(FeedbackRow.updated_at).desc())
                .limit(limit)
            ).all()
        return [r for r in rows if r]

    def rows(self, line: str | None = None, limit: int = 100) -> list[FeedbackRow]:
        """Newest first."""
        query = select(FeedbackRow).order_by(col(FeedbackRow.id).desc()).limit(limit)
        if line is not None:
            query = query.where(FeedbackRow.line == line)
        with self.store.session() as s:
            return list(s.exec(query).all())

    def summary(self, line: str | None = None) -> list[VersionFeedback]:
        """Per line and version: answers rated, mean rating, corrections."""
        query = select(
            FeedbackRow.line,
            FeedbackRow.version,
            func.count(),
            func.avg(FeedbackRow.rating),
            func.count(FeedbackRow.correction),
        ).group_by(FeedbackRow.line, FeedbackRow.version)
        if line is not None:
            query = query.where(FeedbackRow.line == line)
        with self.store.session() as s:
            rows = s.exec(query).all()
        return [
            VersionFeedback(name, version, int(n), float(mean), int(fixes))
            for name, version, n, mean, fixes in sorted(rows, key=lambda r: (r[0], r[1]))
        ]
