"""Captured traffic as a data source: kept prompts gathered into data files.

Once `batch_bytes` of kept prompts have gathered, they are written (in capture order,
one blank line apart) to `traffic-<first id>-<last id>.txt` in the line's traffic folder,
and from there they are ingested like any file: hashed, checked (size, binary, UTF-8),
quarantined or split into train and holdout. Writing a batch is idempotent: the name and
content follow from the rows, so a crash before the rows are marked rewrites the same file.
Expiry (`retention_days`, `controller.traffic_retention`) deletes kept text and every
batch file that held some of it; the unexpired prompts of such a file go back to the
pending pool and are gathered again.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from adapters.data_sources import SourceFile
from adapters.store.captures import CaptureLog
from adapters.store.tables import CaptureRow
from policies.model import CapturePolicy

LABEL = "traffic"
_GATHER_EVERY_S = 2.0


@dataclass(frozen=True)
class Expired:
    """Kept text captured before a cutoff: how much, and the batch files holding some."""

    rows: int
    bytes: int
    batches: tuple[str, ...]


class TrafficSource:
    """The line's kept prompts as data files. Built for every line (retention must reach
    what an earlier policy kept), offered as data only while capture is on."""

    def __init__(self, line: str, log: CaptureLog, folder: Path, spec: CapturePolicy) -> None:
        self.line, self.log, self.folder, self.spec = line, log, folder, spec
        self.description = f"captured traffic of line {line} ({folder})"
        self._gathered_at = 0.0
        self._lock = threading.Lock()  # the tick and the line's thread both gather

    def list_files(self, completed_cycles: int) -> list[SourceFile]:
        """The batch files so far, after gathering a new one if enough has been kept (at
        most every two seconds: the watch asks on every tick)."""
        if time.monotonic() - self._gathered_at >= _GATHER_EVERY_S:
            self._gathered_at = time.monotonic()
            self.gather()
        if not self.folder.is_dir():
            return []
        return [SourceFile(p, LABEL) for p in sorted(self.folder.glob("traffic-*.txt"))]

    def gather(self, force: bool = False) -> Path | None:
        """One batch file of the pending prompts, when there are `batch_bytes` of them (or
        any, with `force`: live drift wants what there is now). The rows are claimed first
        and the file written after, from the claimed rows; any batch this member lacks (a
        crash between the two, or another member gathered it and lost its host) is written
        again from its rows: same rows, same file, same hash. Text already past its
        retention is never gathered."""
        with self._lock:
            for name in self.log.batches(self.line):
                if not (self.folder / name).exists():
                    text = _text(self.log.rows_of(self.line, name))
                    _write_atomically(self.folder / name, text)
            since = self.fresh_since()
            pending = self.log.pending_bytes(self.line, since)
            if pending == 0 or (pending < self.spec.batch_bytes and not force):
                return None
            rows, size = [], 0
            for row in self.log.pending(self.line, since):  # one batch's worth
                rows.append(row)
                size += row.size
                if size >= self.spec.batch_bytes:
                    break
            if not rows:  # claimed or expired elsewhere meanwhile
                return None
            path = self.folder / f"traffic-{rows[0].id:09d}-{rows[-1].id:09d}.txt"
            ids = [r.id for r in rows if r.id is not None]
            if not self.log.claim(ids, path.name):  # another member claimed some first
                return None
            _write_atomically(path, _text(self.log.rows_of(self.line, path.name)))
            return path

    def fresh_since(self) -> str:
        """The oldest capture time still within the retention."""
        cutoff = time.time() - self.spec.retention_days * 86400
        return datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def sweep(self) -> list[str]:
        """Delete files of the traffic folder that no kept row names (an interrupted
        write's leftovers, a file whose rows expired elsewhere); returns their names."""
        if not self.folder.is_dir():
            return []
        with self._lock:
            named = set(self.log.batches(self.line))
            gone = []
            for path in self.folder.iterdir():
                stale_tmp = path.name.startswith(".tmp-") and time.time() - _mtime(path) > 3600
                if stale_tmp or (path.name.startswith("traffic-") and path.name not in named):
                    path.unlink(missing_ok=True)
                    gone.append(path.name)
        return gone

    def expiring(self, before_iso: str) -> Expired:
        """What an expiry at this cutoff deletes (nothing is deleted yet)."""
        rows, size, batches = self.log.expiring(self.line, before_iso)
        return Expired(rows, size, tuple(batches))

    def expire(self, before_iso: str, batches: tuple[str, ...]) -> None:
        """Delete the batch files holding expired text (what else they held goes back to
        the pending pool), then the text itself. Safe to repeat after a crash."""
        with self._lock:
            for name in batches:
                self.log.unbatch(self.line, name)
                (self.folder / name).unlink(missing_ok=True)
            self.log.expire(self.line, before_iso)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _text(rows: list[CaptureRow]) -> str:
    return "\n\n".join(r.text for r in rows) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
