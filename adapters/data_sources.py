"""Data sources: where the factory's raw material comes from (observe side of the loop).

A source only *lists* candidate files; ingestion (hashing, validation, quarantine) is
the same for every source. The built-in source reads the Python standard library's own
files in place, so every machine has real text offline.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from policies.model import DataPolicy, DirectorySource, StdlibErasSource, TrafficOnlySource


@dataclass(frozen=True)
class SourceFile:
    path: Path
    label: str  # era or folder, for humans


class DataSource(Protocol):
    """Lists the files currently offered; must be cheap and side-effect free."""

    description: str

    def list_files(self, completed_cycles: int) -> list[SourceFile]: ...


class ExpiringSource(Protocol):
    """A source whose text expires (captured traffic): deletes what is older than a time."""

    def expire(self, before_iso: str) -> object: ...


def stdlib_dir() -> Path:
    """Where this interpreter's standard library sources live."""
    return Path(sysconfig.get_paths()["stdlib"])


class StdlibEraSource:
    """Stdlib packages grouped into eras; era k is offered once k cycles have completed.

    The release rule makes the demo scenario deterministic and resumable: it depends only
    on the store's count of completed cycles, not on wall-clock time.
    """

    def __init__(self, spec: StdlibErasSource, root: Path | None = None) -> None:
        self.spec = spec
        self.root = root or stdlib_dir()
        self.description = f"stdlib eras under {self.root}"

    def era_files(self, era: int) -> list[SourceFile]:
        files: list[SourceFile] = []
        label = f"era{era}:" + "+".join(self.spec.eras[era])
        for package in self.spec.eras[era]:
            pkg = self.root / package
            if pkg.is_dir():
                found = sorted(p for p in pkg.rglob("*.py") if "test" not in p.parts)
            else:
                single = self.root / f"{package}.py"
                found = [single] if single.exists() else []
            files.extend(SourceFile(p, label) for p in found)
        return files[: self.spec.max_files_per_era]

    def list_files(self, completed_cycles: int) -> list[SourceFile]:
        released = min(completed_cycles + 1, len(self.spec.eras))
        out: list[SourceFile] = []
        for era in range(released):
            out.extend(self.era_files(era))
        return out


class DirectoryDataSource:
    """An operator's folder; every regular file matching the glob is offered."""

    def __init__(self, spec: DirectorySource) -> None:
        self.spec = spec
        self.root = Path(spec.path).expanduser()
        self.description = f"directory {self.root} ({spec.glob})"

    def list_files(self, completed_cycles: int) -> list[SourceFile]:
        if not self.root.is_dir():
            return []
        label = self.root.name
        return [
            SourceFile(p, label)
            for p in sorted(self.root.glob(self.spec.glob))
            if p.is_file() and not p.name.startswith(".")
        ]


class CombinedSource:
    """Several sources offered as one (files beside captured traffic)."""

    def __init__(self, *sources: DataSource) -> None:
        self.sources = sources
        self.description = " + ".join(s.description for s in sources)

    def list_files(self, completed_cycles: int) -> list[SourceFile]:
        return [f for s in self.sources for f in s.list_files(completed_cycles)]


def make_source(data: DataPolicy, traffic: DataSource | None = None) -> DataSource:
    """The policy's files, beside the line's captured traffic when it is given."""
    spec = data.source
    if isinstance(spec, TrafficOnlySource):
        if traffic is None:
            raise ValueError("source kind 'traffic' needs capture, and nothing captures here")
        return traffic
    files: DataSource = (
        StdlibEraSource(spec) if isinstance(spec, StdlibErasSource) else DirectoryDataSource(spec)
    )
    return files if traffic is None else CombinedSource(files, traffic)
