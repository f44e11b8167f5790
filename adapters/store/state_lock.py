"""One daemon per SQLite store: an exclusive lock on a file beside the database.

The operating system drops the lock when its holder dies (even by kill -9), so a crash
never leaves the store locked; the file names the holder, so a refusal can say who.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from adapters.store.db import utcnow_iso


class StateLockedError(RuntimeError):
    """Another daemon runs on this store."""


class StateLock:
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.path = Path(f"{db_path}.lock")
        self._fd: int | None = None

    def acquire(self, note: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise StateLockedError(
                f"another daemon is running on {self.db_path}: {holder}. Stop it first, or "
                "give this one a state directory of its own (--state-dir); to run several "
                "daemons on one store, use PostgreSQL (--db), where they elect a leader"
            ) from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow_iso()}
        os.write(fd, json.dumps(holder | ({"note": note} if note else {})).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode() or "{}")
    except ValueError:
        return "a daemon that did not say who it is"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    if holder.get("note"):
        parts.append(str(holder["note"]))
    return ", ".join(parts)
