"""Files every member can read: model artefacts, trial artefacts and data splits.

A daemon keeps these under its state directory; with several daemons on one database a
new leader must read what the old one wrote (the champion, the trials of a resumed cycle,
the data it was training on). So each such file is also put in a share, by its path under
the state directory, with its SHA-256; a member that lacks a file fetches it from the
share, checks the hash and writes it where its own state directory keeps it.

Shares: the database itself (`db`, the default with PostgreSQL: nothing else to run), or
a directory every host mounts, given by URL (`file:///mnt/aifactory`). A single daemon on
SQLite needs none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from sqlalchemy.dialects.postgresql import insert as pg_insert

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import BlobRow


class ShareError(RuntimeError):
    """A shared file is missing or fails its checksum."""


class FileShare(Protocol):
    """Where members put files and fetch them, by key (a relative path)."""

    def put(self, key: str, data: bytes, sha256: str) -> None: ...

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and the SHA-256 it was put with; None if never put."""
        ...

    def delete(self, key: str) -> None:
        """Forget the file (expired data); no error when it is not there."""
        ...


class DatabaseShare:
    """Files as rows of `af_blob`: nothing more to run or mount."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, key: str, data: bytes, sha256: str) -> None:
        row = {
            "key": key,
            "sha256": sha256,
            "size": len(data),
            "data": data,
            "created_at": utcnow_iso(),
        }
        with self.store.engine.begin() as conn:
            if self.store.is_sqlite:
                conn.execute(BlobRow.__table__.insert().prefix_with("OR REPLACE"), row)
            else:
                stmt = pg_insert(BlobRow.__table__).values(row)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["key"],
                        set_={"sha256": sha256, "size": len(data), "data": data},
                    )
                )

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self.store.session() as s:
            row = s.get(BlobRow, key)
        return (bytes(row.data), row.sha256) if row is not None else None

    def delete(self, key: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(BlobRow.__table__.delete().where(BlobRow.__table__.c.key == key))


class DirectoryShare:
    """Files under a directory every member mounts; each beside a `.sha256` of its own."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ShareError(f"key {key!r} leaves the share")
        return path

    def put(self, key: str, data: bytes, sha256: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, data)
        _write_atomically(path.with_name(path.name + ".sha256"), sha256.encode())

    def get(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        try:
            sha = path.with_name(path.name + ".sha256").read_text().strip()
            return path.read_bytes(), sha
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def make_share(url: str | None, store: Store) -> FileShare | None:
    """`db`, `file:///path`, or None/`none` (a single daemon on SQLite)."""
    if url is None or url in ("", "none"):
        return None
    if url == "db":
        return DatabaseShare(store)
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.path:
        return DirectoryShare(unquote(parsed.path))
    raise ValueError(f"artefact share {url!r}: use 'db', 'none' or a file:///directory URL")


class SharedFiles:
    """A state directory whose files are also in a share (when there is one)."""

    def __init__(self, state_dir: str | Path, share: FileShare | None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.share = share

    def key(self, path: str | Path) -> str:
        """The path under our state directory (not resolved: a symlinked folder is fine)."""
        rel = os.path.relpath(os.path.abspath(path), self.state_dir)
        if rel == ".." or rel.startswith("../"):
            raise ShareError(f"{path} is not under the state directory {self.state_dir}")
        return Path(rel).as_posix()

    def remove(self, path: str | Path) -> None:
        """Delete a file of our state directory here and from the share (expired data)."""
        Path(path).unlink(missing_ok=True)
        if self.share is not None:
            self.share.delete(self.key(path))

    def publish(self, path: str | Path) -> None:
        """Put a file of our state directory in the share (no-op without one)."""
        if self.share is None:
            return
        data = Path(path).read_bytes()
        self.share.put(self.key(path), data, hashlib.sha256(data).hexdigest())

    def publish_model(self, path: str | Path) -> str:
        """Put an artefact in the share by its content (`models/<sha256>.pt`, where the
        registry keeps it too): a stale member can never overwrite another's. Returns the
        SHA-256 ("" without a share)."""
        if self.share is None:
            return ""
        data = Path(path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.share.put(f"models/{sha}.pt", data, sha)
        return sha

    def local_model(self, path: str | Path, sha256: str) -> Path:
        """The artefact with this SHA-256: the file at `path` if it is ours and has that
        content (a file of the same name may hold another member's run), else the share's."""
        path = Path(path)
        if self.share is None or not sha256:
            return path
        if path.exists() and _sha256(path) == sha256:
            return path
        return self.fetch(f"models/{sha256}.pt")

    def ensure(self, path: str | Path) -> Path:
        """The file at `path` in our state directory, fetched from the share if this member
        lacks it. Without a share, or when the share lacks it too, the path as given."""
        path = Path(path)
        if self.share is None or path.exists():
            return path
        return self.fetch(self.key(path))

    def fetch(self, key: str) -> Path:
        """The file the share keeps under `key`, written (checked) into our state directory."""
        path = Path(self.state_dir) / key
        if path.exists() or self.share is None:
            return path
        got = self.share.get(key)
        if got is None:
            return path
        data, sha = got
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise ShareError(
                f"shared file {key} fails its checksum (put as {sha[:12]}, got {actual[:12]})"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, data)
        return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file of its own (two threads may fetch the same key), then a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # as the files it stands beside, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
