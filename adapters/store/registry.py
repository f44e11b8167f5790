"""The model registry: versions with lineage, content-addressed artefacts, aliases with history.

Aliases (`champion`, `previous`) are the desired serving state; the daemon's serving loop
reconciles the HTTP server against the `champion` alias, so a rollback from the CLI reaches
the live server without talking to the daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from adapters.store.audit import canonical
from adapters.store.db import Store, utcnow_iso
from adapters.store.shared_files import SharedFiles
from adapters.store.tables import AliasMoveRow, AliasRow, ModelVersionRow

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"


class ArtefactCorruptError(RuntimeError):
    """A stored artefact no longer matches the checksum it was registered with."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    policy_name: str
    version: int
    cycle_id: str
    dataset_version: str
    trial_key: str
    params: dict[str, Any]
    artefact_sha256: str
    artefact_path: str
    tokens: int
    joules: float
    energy_method: str
    valid_bpb: float | None
    evaluation: dict[str, Any]
    status: str
    created_at: str

    @classmethod
    def from_row(cls, r: ModelVersionRow) -> ModelVersion:
        return cls(
            policy_name=r.policy_name,
            version=r.version,
            cycle_id=r.cycle_id,
            dataset_version=r.dataset_version,
            trial_key=r.trial_key,
            params=json.loads(r.params),
            artefact_sha256=r.artefact_sha256,
            artefact_path=r.artefact_path,
            tokens=r.tokens,
            joules=r.joules,
            energy_method=r.energy_method,
            valid_bpb=r.valid_bpb,
            evaluation=json.loads(r.evaluation),
            status=r.status,
            created_at=r.created_at,
        )


class ModelRegistry:
    def __init__(
        self, store: Store, artefact_dir: str | Path, files: SharedFiles | None = None
    ) -> None:
        self.store = store
        self.artefact_dir = Path(artefact_dir)
        self.files = files  # with several members: every artefact also goes to the share

    def register(
        self,
        *,
        policy_name: str,
        key: str,
        artefact: str | Path,
        cycle_id: str,
        dataset_version: str,
        trial_key: str,
        params: dict[str, Any],
        tokens: int,
        joules: float,
        energy_method: str,
        valid_bpb: float | None,
    ) -> ModelVersion:
        """Copy the artefact into content-addressed storage and record a new version, once."""
        existing = self.by_key(key)
        if existing is not None:
            return existing
        digest = sha256_file(artefact)
        self.artefact_dir.mkdir(parents=True, exist_ok=True)
        target = self.artefact_dir / f"{digest}.pt"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(artefact, tmp)
            os.replace(tmp, target)
        if self.files is not None:
            self.files.publish(target)
        for _ in range(20):
            with self.store.session() as s:
                latest = s.exec(
                    select(func.max(ModelVersionRow.version)).where(
                        ModelVersionRow.policy_name == policy_name
                    )
                ).one()
                row = ModelVersionRow(
                    policy_name=policy_name,
                    version=(latest or 0) + 1,
                    idem_key=key,
                    cycle_id=cycle_id,
                    dataset_version=dataset_version,
                    trial_key=trial_key,
                    params=canonical(params),
                    artefact_sha256=digest,
                    artefact_path=str(target),
                    tokens=tokens,
                    joules=joules,
                    energy_method=energy_method,
                    valid_bpb=valid_bpb,
                    evaluation="{}",
                    created_at=utcnow_iso(),
                )
                s.add(row)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                    again = self.by_key(key)
                    if again is not None:
                        return again
                    continue
                return ModelVersion.from_row(row)
        raise RuntimeError("could not allocate a model version number")

    def by_key(self, key: str) -> ModelVersion | None:
        with self.store.session() as s:
            row = s.exec(select(ModelVersionRow).where(ModelVersionRow.idem_key == key)).first()
        return ModelVersion.from_row(row) if row else None

    def get(self, policy_name: str, version: int) -> ModelVersion | None:
        with self.store.session() as s:
            row = self._row(s, policy_name, version)
        return ModelVersion.from_row(row) if row else None

    def versions(self, policy_name: str) -> list[ModelVersion]:
        with self.store.session() as s:
            rows = s.exec(
                select(ModelVersionRow)
                .where(ModelVersionRow.policy_name == policy_name)
                .order_by(col(ModelVersionRow.version))
            ).all()
        return [ModelVersion.from_row(r) for r in rows]

    def set_verdict(
        self, policy_name: str, version: int, status: str, evaluation: dict[str, Any]
    ) -> None:
        with self.store.session() as s:
            row = self._row(s, policy_name, version)
            if row is None:
                raise KeyError(f"no model version {version} for {policy_name}")
            row.status = status
            row.evaluation = canonical(evaluation)
            s.add(row)
            s.commit()

    def set_status(self, policy_name: str, version: int, status: str) -> None:
        """Change a version's standing (e.g. `rolled_back` after a failed canary), keeping
        its evaluation figures."""
        with self.store.session() as s:
            row = self._row(s, policy_name, version)
            if row is None:
                raise KeyError(f"no model version {version} for {policy_name}")
            row.status = status
            s.add(row)
            s.commit()

    def verified_path(self, model: ModelVersion) -> str:
        """The artefact path, after checking it still has the checksum it was registered with."""
        path = Path(model.artefact_path)
        if not path.exists() and self.files is not None:
            # registered by another member: ours is where our state directory keeps it
            path = self.files.ensure(self.artefact_dir / f"{model.artefact_sha256}.pt")
        if not path.exists():
            raise ArtefactCorruptError(f"artefact of v{model.version} is missing: {path}")
        actual = sha256_file(path)
        if actual != model.artefact_sha256:
            raise ArtefactCorruptError(
                f"artefact of v{model.version} fails its checksum "
                f"(expected {model.artefact_sha256[:12]}, found {actual[:12]})"
            )
        return str(path)

    # aliases -------------------------------------------------------------------------

    def alias(self, policy_name: str, alias: str) -> int | None:
        with self.store.session() as s:
            row = s.get(AliasRow, (policy_name, alias))
        return row.version if row else None

    def champions(self) -> dict[str, int]:
        """Every line's champion version in one query (the factory's watch tick)."""
        with self.store.session() as s:
            rows = s.exec(select(AliasRow).where(AliasRow.alias == CHAMPION)).all()
        return {r.policy_name: r.version for r in rows}

    def aliases(self, policy_name: str) -> dict[str, int]:
        with self.store.session() as s:
            rows = s.exec(select(AliasRow).where(AliasRow.policy_name == policy_name)).all()
        return {r.alias: r.version for r in rows}

    def alias_history(self, policy_name: str) -> list[AliasMoveRow]:
        with self.store.session() as s:
            return list(
                s.exec(
                    select(AliasMoveRow)
                    .where(AliasMoveRow.policy_name == policy_name)
                    .order_by(col(AliasMoveRow.id))
                ).all()
            )

    def promote(self, policy_name: str, version: int, *, by: str, reason: str, key: str) -> None:
        """champion -> version, previous -> the old champion; one transaction, once per key."""
        with self.store.session() as s:
            if s.exec(select(AliasMoveRow).where(AliasMoveRow.idem_key == key)).first():
                return
            if self._row(s, policy_name, version) is None:
                raise KeyError(f"no model version {version} for {policy_name}")
            old = self._locked_alias(s, policy_name, CHAMPION)
            old_version = old.version if old else None
            if old_version is not None and old_version != version:
                self._move(s, policy_name, PREVIOUS, old_version, by, reason, None)
            self._move(s, policy_name, CHAMPION, version, by, reason, key)
            s.commit()

    def set_challenger(
        self, policy_name: str, version: int, *, by: str, reason: str, key: str
    ) -> None:
        """The candidate under evaluation (or awaiting approval), recorded in alias history."""
        with self.store.session() as s:
            if s.exec(select(AliasMoveRow).where(AliasMoveRow.idem_key == key)).first():
                return
            self._move(s, policy_name, CHALLENGER, version, by, reason, key)
            s.commit()

    def clear_challenger(self, policy_name: str, *, by: str, reason: str, key: str) -> None:
        """The challenger leaves service (promoted or rolled back); recorded in alias history."""
        with self.store.session() as s:
            if s.exec(select(AliasMoveRow).where(AliasMoveRow.idem_key == key)).first():
                return
            row = s.get(AliasRow, (policy_name, CHALLENGER))
            if row is None:
                return
            s.delete(row)
            s.add(
                AliasMoveRow(
                    policy_name=policy_name,
                    alias=CHALLENGER,
                    from_version=row.version,
                    to_version=None,
                    at=utcnow_iso(),
                    by=by,
                    reason=reason,
                    idem_key=key,
                )
            )
            s.commit()

    def rollback(
        self, policy_name: str, *, to: int | None = None, by: str, reason: str
    ) -> tuple[int | None, int]:
        """Put an earlier champion back in service; returns (from, to).

        Without `to`, the target is the most recent earlier champion still in good standing
        (not refused, not rolled back), and the version rolled away from is marked
        `rolled_back`, so rolling back twice goes further back instead of toggling.
        """
        with self.store.session() as s:
            champ = self._locked_alias(s, policy_name, CHAMPION)
            current = champ.version if champ else None
            if to is None:
                to = self._earlier_champion(s, policy_name, current)
                if to is None:
                    raise LookupError("no earlier blessed champion to roll back to")
            target = self._row(s, policy_name, to)
            if target is None:
                raise KeyError(f"no model version {to} for {policy_name}")
            if current == to:
                raise LookupError(f"v{to} is already the champion")
            if target.status == "refused":
                raise LookupError(f"v{to} was refused by the evaluator; not putting it in service")
            if current is not None:
                rolled = self._row(s, policy_name, current)
                if rolled is not None:
                    rolled.status = "rolled_back"
                    s.add(rolled)
                self._move(s, policy_name, PREVIOUS, current, by, reason, None)
            if target.status == "rolled_back":
                target.status = "blessed"  # an operator explicitly brings it back
                s.add(target)
            self._move(s, policy_name, CHAMPION, to, by, reason, None)
            s.commit()
            return current, to

    def _earlier_champion(self, s: Session, policy_name: str, current: int | None) -> int | None:
        moves = s.exec(
            select(AliasMoveRow)
            .where(AliasMoveRow.policy_name == policy_name, AliasMoveRow.alias == CHAMPION)
            .order_by(col(AliasMoveRow.id).desc())
        ).all()
        for move in moves:
            v = move.to_version
            if v is None or v == current:
                continue
            row = self._row(s, policy_name, v)
            if row is not None and row.status not in ("rolled_back", "refused"):
                return v
        return None

    @staticmethod
    def _locked_alias(s: Session, policy_name: str, alias: str) -> AliasRow | None:
        """Read an alias row locked for update (PostgreSQL); SQLite serialises writers anyway."""
        return s.exec(
            select(AliasRow)
            .where(AliasRow.policy_name == policy_name, AliasRow.alias == alias)
            .with_for_update()
        ).first()

    @staticmethod
    def _row(s: Session, policy_name: str, version: int) -> ModelVersionRow | None:
        return s.exec(
            select(ModelVersionRow).where(
                ModelVersionRow.policy_name == policy_name, ModelVersionRow.version == version
            )
        ).first()

    @staticmethod
    def _move(
        s: Session,
        policy_name: str,
        alias: str,
        version: int,
        by: str,
        reason: str,
        key: str | None,
    ) -> None:
        now = utcnow_iso()
        row = s.get(AliasRow, (policy_name, alias))
        before = row.version if row else None
        if row is None:
            row = AliasRow(policy_name=policy_name, alias=alias, version=version)
        row.version, row.updated_at, row.updated_by, row.reason = version, now, by, reason
        s.add(row)
        s.add(
            AliasMoveRow(
                policy_name=policy_name,
                alias=alias,
                from_version=before,
                to_version=version,
                at=now,
                by=by,
                reason=reason,
                idem_key=key,
            )
        )
