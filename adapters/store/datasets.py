"""Ingested files and dataset versions (content-addressed, each file ingested once)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from adapters.store.audit import canonical
from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import DataFileRow, DatasetVersionRow


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    parent: str | None
    file_hashes: tuple[str, ...]
    new_file_hashes: tuple[str, ...]
    n_files: int
    n_bytes: int
    byte_hist: tuple[int, ...]
    created_at: str
    cycle_id: str | None

    @classmethod
    def from_row(cls, r: DatasetVersionRow) -> DatasetVersion:
        return cls(
            version=r.version,
            parent=r.parent,
            file_hashes=tuple(json.loads(r.file_hashes)),
            new_file_hashes=tuple(json.loads(r.new_file_hashes)),
            n_files=r.n_files,
            n_bytes=r.n_bytes,
            byte_hist=tuple(json.loads(r.byte_hist)),
            created_at=r.created_at,
            cycle_id=r.cycle_id,
        )


class DataCatalog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def known_hashes(self, policy_name: str) -> set[str]:
        with self.store.session() as s:
            rows = s.exec(
                select(DataFileRow.sha256).where(DataFileRow.policy_name == policy_name)
            ).all()
        return set(rows)

    def known_hashes_by_line(self) -> dict[str, set[str]]:
        """Every line's known file hashes in one query (the factory's watch tick)."""
        out: dict[str, set[str]] = {}
        with self.store.session() as s:
            for name, sha in s.exec(select(DataFileRow.policy_name, DataFileRow.sha256)).all():
                out.setdefault(name, set()).add(sha)
        return out

    def file(self, policy_name: str, sha256: str) -> DataFileRow | None:
        with self.store.session() as s:
            return s.get(DataFileRow, (policy_name, sha256))

    def files(self, policy_name: str, hashes: list[str] | tuple[str, ...]) -> list[DataFileRow]:
        if not hashes:
            return []
        with self.store.session() as s:
            rows = s.exec(
                select(DataFileRow).where(
                    DataFileRow.policy_name == policy_name, col(DataFileRow.sha256).in_(hashes)
                )
            ).all()
        by_hash = {r.sha256: r for r in rows}
        return [by_hash[h] for h in hashes if h in by_hash]

    def unassigned(self, policy_name: str) -> list[DataFileRow]:
        """Ingested files not yet part of any dataset version (new data, crash-safe)."""
        with self.store.session() as s:
            return list(
                s.exec(
                    select(DataFileRow)
                    .where(
                        DataFileRow.policy_name == policy_name,
                        DataFileRow.status == "ingested",
                        col(DataFileRow.dataset_version).is_(None),
                    )
                    .order_by(col(DataFileRow.first_seen), col(DataFileRow.sha256))
                ).all()
            )

    def quarantined(self, policy_name: str) -> list[DataFileRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(DataFileRow).where(
                        DataFileRow.policy_name == policy_name,
                        DataFileRow.status == "quarantined",
                    )
                ).all()
            )

    def usable(self, policy_name: str, hashes: list[str] | tuple[str, ...]) -> list[str]:
        """The given files that may still be read (not expired), in their order."""
        live = {r.sha256 for r in self.files(policy_name, hashes) if r.status == "ingested"}
        return [h for h in hashes if h in live]

    def from_sources(self, policy_name: str, label: str, names: set[str]) -> list[DataFileRow]:
        """The files of one label (e.g. traffic) whose source file had one of these names."""
        with self.store.session() as s:
            rows = s.exec(
                select(DataFileRow).where(
                    DataFileRow.policy_name == policy_name, DataFileRow.label == label
                )
            ).all()
        return [r for r in rows if Path(r.source_path).name in names]

    def with_status(self, policy_name: str, status: str) -> list[DataFileRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(DataFileRow).where(
                        DataFileRow.policy_name == policy_name, DataFileRow.status == status
                    )
                ).all()
            )

    def mark_expired(self, policy_name: str, sha256: str, reason: str) -> None:
        """Its text is deleted: never read again, left out of the next dataset version."""
        with self.store.session() as s:
            row = s.get(DataFileRow, (policy_name, sha256))
            if row is not None and row.status != "expired":
                row.status, row.reason = "expired", reason
                s.add(row)
                s.commit()

    def record_file(self, row: DataFileRow) -> bool:
        """Insert once by content hash; False when it was already known."""
        row.first_seen = row.first_seen or utcnow_iso()
        with self.store.session() as s:
            if s.get(DataFileRow, (row.policy_name, row.sha256)) is not None:
                return False
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        return True

    def latest(self, policy_name: str) -> DatasetVersion | None:
        with self.store.session() as s:
            row = s.exec(
                select(DatasetVersionRow)
                .where(DatasetVersionRow.policy_name == policy_name)
                .order_by(col(DatasetVersionRow.created_at).desc())
                .limit(1)
            ).first()
        return DatasetVersion.from_row(row) if row else None

    def get(self, version: str) -> DatasetVersion | None:
        with self.store.session() as s:
            row = s.get(DatasetVersionRow, version)
        return DatasetVersion.from_row(row) if row else None

    def create(
        self,
        *,
        policy_name: str,
        version: str,
        parent: str | None,
        file_hashes: list[str],
        new_file_hashes: list[str],
        n_bytes: int,
        byte_hist: list[int],
        cycle_id: str | None,
    ) -> DatasetVersion:
        row = DatasetVersionRow(
            version=version,
            policy_name=policy_name,
            parent=parent,
            file_hashes=canonical(file_hashes),
            new_file_hashes=canonical(new_file_hashes),
            n_files=len(file_hashes),
            n_bytes=n_bytes,
            byte_hist=canonical(byte_hist),
            created_at=utcnow_iso(),
            cycle_id=cycle_id,
        )
        with self.store.session() as s:
            existing = s.get(DatasetVersionRow, version)
            if existing is None:
                s.add(row)
            else:
                row = existing
            # the version and its files' assignment commit together (crash-safe)
            for h in new_file_hashes:
                f = s.get(DataFileRow, (policy_name, h))
                if f is not None and f.dataset_version is None:
                    f.dataset_version = version
                    s.add(f)
            s.commit()
            s.refresh(row)
        return DatasetVersion.from_row(row)
