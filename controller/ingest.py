"""Ingestion: turn a source's files into content-addressed training and held-out text.

Each file is read once (by content hash). Empty, binary, undecodable or oversized files
are quarantined: copied aside for inspection, recorded, audited, and never read again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapters.data_sources import DataSource
from adapters.store.audit import AuditLog
from adapters.store.datasets import DataCatalog
from adapters.store.shared_files import SharedFiles
from adapters.store.tables import DataFileRow
from agents.drift import byte_histogram
from policies.model import DataPolicy


@dataclass
class IngestReport:
    new_hashes: list[str] = field(default_factory=list)
    new_bytes: int = 0
    new_hist: list[int] = field(default_factory=lambda: [0] * 256)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def split_text(text: str, holdout_fraction: float) -> tuple[str, str]:
    """Keep the tail of a file for evaluation, cut at a line boundary when one is near."""
    cut = int(len(text) * (1.0 - holdout_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > cut * 0.8:
        cut = newline + 1
    return text[:cut], text[cut:]


def check_file(data: bytes, max_bytes: int) -> str | None:
    """Why a file cannot be used, or None when it can."""
    if not data.strip():
        return "empty"
    if len(data) > max_bytes:
        return f"too large ({len(data)} bytes > {max_bytes})"
    if b"\x00" in data:
        return "binary (contains NUL bytes)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"undecodable as UTF-8 at byte {exc.start}"
    return None


class Ingestor:
    def __init__(
        self,
        *,
        policy_name: str,
        data_policy: DataPolicy,
        catalog: DataCatalog,
        audit: AuditLog,
        data_dir: Path,
        quarantine_dir: Path,
        files: SharedFiles | None = None,
    ) -> None:
        self.policy_name = policy_name
        self.data_policy = data_policy
        self.catalog = catalog
        self.audit = audit
        self.data_dir = data_dir
        self.quarantine_dir = quarantine_dir
        self._seen: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha
        self.files = files

    def blob_paths(self, sha: str) -> tuple[Path, Path]:
        """The file's training part and held-out tail, split by this line's policy. Each line
        keeps its own (two lines may split the same file differently); blobs written before
        lines had folders of their own are still found where they are."""
        own = self.data_dir / self.policy_name
        train, holdout = own / f"{sha}.train.txt", own / f"{sha}.holdout.txt"
        legacy = self.data_dir / f"{sha}.train.txt", self.data_dir / f"{sha}.holdout.txt"
        if not train.exists() and legacy[0].exists():
            return legacy
        return train, holdout

    def _hash(self, path: Path) -> tuple[str, bytes | None]:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in self._seen:
            return self._seen[key], None
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self._seen[key] = sha
        return sha, data

    def _identify(self, path: Path) -> str | None:
        """Content hash; for an oversized file an id from path, size and time (never read
        whole); None while the file is still being written (modified within `settle_s`)."""
        st = path.stat()
        if time.time() - st.st_mtime < self.data_policy.settle_s:
            return None
        if st.st_size > self.data_policy.max_file_bytes:
            ident = f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()
            return "oversize-" + hashlib.sha256(ident).hexdigest()[:55]
        return self._hash(path)[0]

    def pending(
        self, source: DataSource, completed_cycles: int, known: set[str] | None = None
    ) -> int:
        """How many offered files are not yet known (cheap: cached by size and mtime);
        `known` saves the query when the caller read every line's hashes at once."""
        known = set(known) if known is not None else self.catalog.known_hashes(self.policy_name)
        count = 0
        for f in source.list_files(completed_cycles):
            try:
                sha = self._identify(f.path)
            except OSError:
                continue
            if sha is not None and sha not in known:
                known.add(sha)
                count += 1
        return count

    def ingest(
        self,
        source: DataSource,
        completed_cycles: int,
        *,
        cycle_id: str | None,
        policy_version: str | None,
    ) -> IngestReport:
        report = IngestReport()
        known = self.catalog.known_hashes(self.policy_name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        limit = self.data_policy.max_file_bytes
        for f in source.list_files(completed_cycles):
            try:
                sha = self._identify(f.path)
                if sha is None or sha in known:
                    continue  # known, or still being written: a later pass takes it
                if sha.startswith("oversize-"):
                    known.add(sha)
                    size = f.path.stat().st_size
                    problem = f"too large ({size} bytes > {limit})"
                    self._quarantine(
                        f.path, sha, b"", problem, f.label, cycle_id, policy_version, size=size
                    )
                    report.quarantined.append((str(f.path), problem))
                    continue
                data = f.path.read_bytes()
            except OSError as exc:
                self.audit.append(
                    agent="data",
                    action="read_file",
                    outcome="failed",
                    reason=f"cannot read {f.path}: {exc}",
                    figures={"path": str(f.path)},
                    cycle_id=cycle_id,
                    policy_version=policy_version,
                )
                continue
            known.add(sha)
            problem = check_file(data, self.data_policy.max_file_bytes)
            if problem is not None:
                self._quarantine(f.path, sha, data, problem, f.label, cycle_id, policy_version)
                report.quarantined.append((str(f.path), problem))
                continue
            train, holdout = split_text(data.decode("utf-8"), self.data_policy.holdout_fraction)
            train_path, holdout_path = self.blob_paths(sha)
            _write_atomically(train_path, train)
            _write_atomically(holdout_path, holdout)
            if self.files is not None:  # every member may train on it
                self.files.publish(train_path)
                self.files.publish(holdout_path)
            if self.catalog.record_file(
                DataFileRow(
                    sha256=sha,
                    policy_name=self.policy_name,
                    source_path=str(f.path),
                    label=f.label,
                    size_bytes=len(data),
                    status="ingested",
                    blob_path=str(train_path),
                )
            ):
                report.new_hashes.append(sha)
                report.new_bytes += len(data)
                hist = byte_histogram([data])
                report.new_hist = [a + b for a, b in zip(report.new_hist, hist, strict=True)]
        return report

    def _quarantine(
        self,
        path: Path,
        sha: str,
        data: bytes,
        problem: str,
        label: str,
        cycle_id: str | None,
        policy_version: str | None,
        size: int | None = None,
    ) -> None:
        """Audit first, then record: a crash in between re-quarantines (the audit key dedups)."""
        size_bytes = len(data) if size is None else size
        kept = path  # too large to copy: left in place
        if size is None:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            kept = self.quarantine_dir / f"{sha[:16]}-{path.name}"
            try:
                shutil.copyfile(path, kept)
            except OSError:
                kept.write_bytes(data)
        self.audit.append(
            agent="data",
            action="quarantine",
            outcome="taken",
            reason=f"{path.name}: {problem}; "
            + (f"kept at {kept}" if kept != path else "left in place")
            + "; never ingested",
            figures={"path": str(path), "sha256": sha, "size_bytes": size_bytes},
            cycle_id=cycle_id,
            policy_version=policy_version,
            key=f"quarantine:{self.policy_name}:{sha}",
        )
        self.catalog.record_file(
            DataFileRow(
                sha256=sha,
                policy_name=self.policy_name,
                source_path=str(path),
                label=label,
                size_bytes=size_bytes,
                status="quarantined",
                reason=problem,
                blob_path=str(kept),
            )
        )


def _write_atomically(path: Path, text: str) -> None:
    """A reader (another line's evaluation, a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
