"""Ingestion: each file once by content hash; bad files quarantined and audited."""

from __future__ import annotations

from pathlib import Path

from adapters.data_sources import DirectoryDataSource, StdlibEraSource
from adapters.store.audit import AuditLog
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store
from controller.ingest import Ingestor, check_file, split_text
from policies.model import DataPolicy, DirectorySource, StdlibErasSource


def make(store: Store, tmp_path: Path, folder: Path) -> tuple[Ingestor, DirectoryDataSource]:
    data = DataPolicy(
        source=DirectorySource(kind="directory", path=str(folder)),
        max_file_bytes=10_000,
        settle_s=0.0,
    )
    ing = Ingestor(
        policy_name="p",
        data_policy=data,
        catalog=DataCatalog(store),
        audit=AuditLog(store),
        data_dir=tmp_path / "blobs",
        quarantine_dir=tmp_path / "quarantine",
    )
    return ing, DirectoryDataSource(data.source)  # type: ignore[arg-type]


def test_directory_ingest_once_and_quarantine(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.txt").write_text("line one\nline two\n" * 20)
    (inbox / "copy.txt").write_text("line one\nline two\n" * 20)  # same content: once
    (inbox / "empty.txt").write_text("  \n")
    (inbox / "binary.bin").write_bytes(b"abc\x00def")
    (inbox / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (inbox / "huge.txt").write_text("x" * 20_000)
    ing, src = make(store, tmp_path, inbox)
    assert ing.pending(src, 0) == 5
    report = ing.ingest(src, 0, cycle_id="c1", policy_version="v")
    assert len(report.new_hashes) == 1
    reasons = sorted(r for _, r in report.quarantined)
    assert len(reasons) == 4
    assert any(r.startswith("binary") for r in reasons)
    assert any(r.startswith("undecodable") for r in reasons)
    assert any(r.startswith("too large") for r in reasons)
    assert "empty" in reasons
    events = AuditLog(store).events(agent="data")
    assert sum(e.action == "quarantine" for e in events) == 4
    assert all(Path(q.blob_path).exists() for q in DataCatalog(store).quarantined("p"))
    train, holdout = ing.blob_paths(report.new_hashes[0])
    assert train.read_text() and holdout.read_text()
    # a second pass ingests nothing and audits nothing new
    again = ing.ingest(src, 0, cycle_id="c2", policy_version="v")
    assert again.new_hashes == [] and again.quarantined == []
    assert ing.pending(src, 0) == 0
    assert len(AuditLog(store).events()) == len(events)
    (inbox / "new.txt").write_text("fresh data\n" * 10)
    assert ing.pending(src, 0) == 1


def test_file_still_being_written_waits(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "growing.txt").write_text("partial\n" * 10)
    ing, src = make(store, tmp_path, inbox)
    ing.data_policy = ing.data_policy.model_copy(update={"settle_s": 3600.0})
    assert ing.pending(src, 0) == 0
    assert ing.ingest(src, 0, cycle_id=None, policy_version=None).new_hashes == []
    ing.data_policy = ing.data_policy.model_copy(update={"settle_s": 0.0})
    assert len(ing.ingest(src, 0, cycle_id=None, policy_version=None).new_hashes) == 1


def test_stdlib_eras_release_by_completed_cycles() -> None:
    src = StdlibEraSource(StdlibErasSource(eras=[["json"], ["concurrent"]]))
    first = src.list_files(0)
    both = src.list_files(1)
    assert first and len(both) > len(first)
    assert all(f.path.suffix == ".py" for f in both)
    assert src.list_files(5) == both


def test_check_and_split() -> None:
    assert check_file(b"", 10) == "empty"
    assert check_file(b"ok", 10) is None
    text = "".join(f"line {i}\n" for i in range(100))
    train, hold = split_text(text, 0.1)
    assert train + hold == text and hold.startswith("line ") and 0 < len(hold) < len(text) / 5


def test_two_lines_split_the_same_file_each_by_its_own_policy(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "shared.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    splits = {}
    for line, fraction in (("a", 0.1), ("b", 0.4)):
        data = DataPolicy(
            source=DirectorySource(kind="directory", path=str(inbox)),
            holdout_fraction=fraction,
            settle_s=0.0,
        )
        ing = Ingestor(
            policy_name=line,
            data_policy=data,
            catalog=DataCatalog(store),
            audit=AuditLog(store),
            data_dir=tmp_path / "blobs",
            quarantine_dir=tmp_path / "quarantine",
        )
        (sha,) = ing.ingest(
            DirectoryDataSource(data.source),
            0,
            cycle_id=None,  # type: ignore[arg-type]
            policy_version="v",
        ).new_hashes
        splits[line] = [p.read_text() for p in ing.blob_paths(sha)]
    assert len(splits["b"][1]) > 3 * len(splits["a"][1])  # b holds out 40%, a 10%
    assert splits["a"][0] + splits["a"][1] == splits["b"][0] + splits["b"][1]


def test_blobs_from_before_line_folders_are_still_found(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    ing, _ = make(store, tmp_path, tmp_path)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc.train.txt").write_text("old train")
    (tmp_path / "blobs" / "abc.holdout.txt").write_text("old holdout")
    train, holdout = ing.blob_paths("abc")
    assert (train.read_text(), holdout.read_text()) == ("old train", "old holdout")
    assert ing.blob_paths("new")[0] == tmp_path / "blobs" / "p" / "new.train.txt"
