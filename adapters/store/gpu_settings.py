"""The GPU settings journal: original values of changed GPU settings, until restored.

Where it sits in the loop: the *record* side of :class:`adapters.gpu.guard.GpuSettingsGuard`.
The guard writes a row here *before* it changes a device, so a daemon that crashes with a
lowered power limit finds the original at its next start and puts it back. Rows are never
deleted once a change happened; ``restored_at`` marks them done, so the table doubles as
the history of every setting the controller changed, and why. The table itself
(``GpuSettingRow``, ``af_gpu_setting``) lives in ``adapters.store.tables`` with the others.
"""

from __future__ import annotations

from sqlmodel import col, select

from adapters.gpu.guard import SettingsEntry
from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import GpuSettingRow

__all__ = ["SqlSettingsJournal"]


def _entry(row: GpuSettingRow) -> SettingsEntry:
    assert row.id is not None  # rows come back from the database, so they have ids
    return SettingsEntry(
        id=row.id,
        device_uuid=row.device_uuid,
        knob=row.knob,
        original_value=row.original_value,
        applied_value=row.applied_value,
        applied_at=row.applied_at,
        reason=row.reason,
        restored_at=row.restored_at,
    )


class SqlSettingsJournal:
    """:class:`adapters.gpu.guard.SettingsJournal` on the project's store (SQLite/PostgreSQL).

    Each call is one short transaction, committed before it returns, so the entry is on
    disk before the guard touches the device.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_original(
        self, device_uuid: str, knob: str, original: float, applied: float, reason: str
    ) -> int:
        """Insert, or keep the pending entry's original and update what was applied."""
        with self.store.session() as s:
            row = s.exec(
                select(GpuSettingRow)
                .where(GpuSettingRow.device_uuid == device_uuid)
                .where(GpuSettingRow.knob == knob)
                .where(col(GpuSettingRow.restored_at).is_(None))
                .order_by(col(GpuSettingRow.id))
            ).first()
            if row is None:
                row = GpuSettingRow(
                    device_uuid=device_uuid,
                    knob=knob,
                    original_value=float(original),
                    applied_value=float(applied),
                    applied_at=utcnow_iso(),
                    reason=reason,
                )
            else:
                row.applied_value = float(applied)
                row.applied_at = utcnow_iso()
                row.reason = reason
            s.add(row)
            s.commit()
            assert row.id is not None
            return row.id

    def pending(self) -> list[SettingsEntry]:
        """Changes not yet undone, oldest first."""
        with self.store.session() as s:
            rows = s.exec(
                select(GpuSettingRow)
                .where(col(GpuSettingRow.restored_at).is_(None))
                .order_by(col(GpuSettingRow.id))
            ).all()
            return [_entry(r) for r in rows]

    def history(self, device_uuid: str | None = None) -> list[SettingsEntry]:
        """Every recorded change, restored or not (for status and audit figures)."""
        with self.store.session() as s:
            query = select(GpuSettingRow).order_by(col(GpuSettingRow.id))
            if device_uuid is not None:
                query = query.where(GpuSettingRow.device_uuid == device_uuid)
            return [_entry(r) for r in s.exec(query).all()]

    def mark_restored(self, entry_id: int) -> None:
        """Stamp the entry restored; a second call keeps the first stamp."""
        with self.store.session() as s:
            row = s.get(GpuSettingRow, entry_id)
            if row is None:
                raise KeyError(f"no GPU setting entry {entry_id}")
            if row.restored_at is None:
                row.restored_at = utcnow_iso()
                s.add(row)
                s.commit()

    def discard(self, entry_id: int) -> None:
        """Delete an entry whose write was refused (the device never changed)."""
        with self.store.session() as s:
            row = s.get(GpuSettingRow, entry_id)
            if row is not None:
                s.delete(row)
                s.commit()
