"""Files every member reads: a contract over each share (the database on SQLite and on
PostgreSQL, a shared directory), and a champion registered by one member loaded by another
whose state directory never had it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from adapters.store.db import Store
from adapters.store.registry import ArtefactCorruptError, ModelRegistry
from adapters.store.shared_files import (
    DatabaseShare,
    DirectoryShare,
    FileShare,
    SharedFiles,
    ShareError,
    make_share,
)


@pytest.fixture(params=["db", "directory"])
def share(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> FileShare:
    if request.param == "db":
        return DatabaseShare(store)
    return DirectoryShare(tmp_path / "shared")


def test_a_file_put_by_one_member_is_fetched_checked_by_another(
    share: FileShare, tmp_path: Path
) -> None:
    a, b = SharedFiles(tmp_path / "a", share), SharedFiles(tmp_path / "b", share)
    src = tmp_path / "a" / "trials" / "c1" / "trial-000.pt"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"weights" * 1000)
    a.publish(src)
    got = b.fetch("trials/c1/trial-000.pt")
    assert got == tmp_path / "b" / "trials" / "c1" / "trial-000.pt"
    assert got.read_bytes() == src.read_bytes()
    # ensure: a path of b's own state directory, fetched when missing
    got.unlink()
    assert b.ensure(got).read_bytes() == src.read_bytes()
    # put again (a retried trial): the newer content wins
    src.write_bytes(b"other")
    a.publish(src)
    got.unlink()
    assert b.fetch("trials/c1/trial-000.pt").read_bytes() == b"other"
    # never put: the path as asked, missing
    assert not b.fetch("trials/c1/trial-001.pt").exists()
    # removed (expired data): gone here and from the share, twice is fine
    a.remove(src)
    a.remove(src)
    assert not src.exists() and share.get("trials/c1/trial-000.pt") is None


def test_a_trial_artefact_is_found_by_its_content_not_its_name(
    share: FileShare, tmp_path: Path
) -> None:
    """Trial paths repeat across members (trials/<cycle>/trial-000.pt): a stale file of the
    same name, another member's run, is never taken for the recorded one."""
    a, b = SharedFiles(tmp_path / "a", share), SharedFiles(tmp_path / "b", share)
    ran = tmp_path / "a" / "trials" / "c1" / "trial-000.pt"
    ran.parent.mkdir(parents=True)
    ran.write_bytes(b"a's run")
    sha = a.publish_model(ran)
    stale = tmp_path / "b" / "trials" / "c1" / "trial-000.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"b's own older run")
    got = b.local_model(stale, sha)
    assert got.read_bytes() == b"a's run" and got.name == f"{sha}.pt"
    assert a.local_model(ran, sha) == ran  # the right content where it is: used as is
    assert SharedFiles(tmp_path / "c", None).local_model(stale, sha) == stale  # no share


def test_a_symlinked_state_folder_keeps_its_keys(share: FileShare, tmp_path: Path) -> None:
    disk = tmp_path / "other-disk"
    disk.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "trials").symlink_to(disk)
    files = SharedFiles(tmp_path / "a", share)
    path = tmp_path / "a" / "trials" / "t.pt"
    path.write_bytes(b"x")
    assert files.key(path) == "trials/t.pt"
    files.publish(path)
    with pytest.raises(ShareError, match="not under the state directory"):
        files.key(tmp_path / "elsewhere.pt")


def test_a_damaged_shared_file_is_refused(share: FileShare, tmp_path: Path) -> None:
    share.put("models/x.pt", b"abc", hashlib.sha256(b"abd").hexdigest())
    with pytest.raises(ShareError, match="fails its checksum"):
        SharedFiles(tmp_path / "b", share).fetch("models/x.pt")
    assert not (tmp_path / "b" / "models" / "x.pt").exists()


def test_keys_never_leave_the_share(tmp_path: Path) -> None:
    with pytest.raises(ShareError):
        DirectoryShare(tmp_path / "shared").put("../escape", b"x", "0" * 64)


def test_share_urls(store: Store, tmp_path: Path) -> None:
    assert make_share(None, store) is None and make_share("none", store) is None
    assert isinstance(make_share("db", store), DatabaseShare)
    made = make_share(f"file://{tmp_path}/s", store)
    assert isinstance(made, DirectoryShare) and made.root == tmp_path / "s"
    with pytest.raises(ValueError, match="file:///directory"):
        make_share("s3://bucket", store)


def test_a_champion_registered_by_one_member_loads_on_another(store: Store, tmp_path: Path) -> None:
    share = DatabaseShare(store)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    trained = a_dir / "trials" / "t.pt"
    trained.parent.mkdir(parents=True)
    trained.write_bytes(b"model bytes")
    a = ModelRegistry(store, a_dir / "models", SharedFiles(a_dir, share))
    model = a.register(
        policy_name="p",
        key="c1:candidate",
        artefact=trained,
        cycle_id="c1",
        dataset_version="d",
        trial_key="c1:trial:000",
        params={},
        tokens=1,
        joules=1.0,
        energy_method="estimated",
        valid_bpb=2.0,
    )
    Path(model.artefact_path).unlink()  # a's host is gone
    b = ModelRegistry(store, b_dir / "models", SharedFiles(b_dir, share))
    path = Path(b.verified_path(model))
    assert path.parent == b_dir / "models" and path.read_bytes() == b"model bytes"
    # without a share the other member cannot load it, and says so
    with pytest.raises(ArtefactCorruptError, match="missing"):
        ModelRegistry(store, tmp_path / "c" / "models").verified_path(model)
