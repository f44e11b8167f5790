"""Served traffic as data: what serving keeps (never `"store": false`, redacted first, by
sample and daily allowance), the store, batch files, expiry, and the policy's checks."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from test_serving import FakeGenerator

from adapters.data_sources import CombinedSource, make_source
from adapters.serving import ServedModel, ServingServer
from adapters.store.audit import AuditLog
from adapters.store.captures import CaptureLog
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store
from adapters.traffic_capture import CaptureSpec, TrafficCapture
from adapters.traffic_source import TrafficSource
from controller.ingest import Ingestor
from controller.traffic_retention import TrafficRetention
from policies.loader import PolicyError, load_policy
from policies.model import CapturePolicy, DataPolicy

SECRET = "card 4111111111111111 mail ann@example.com"


@pytest.fixture
def capturing(store: Store) -> tuple[ServingServer, TrafficCapture, CaptureLog]:
    log = CaptureLog(store)
    capture = TrafficCapture(log, seed=0)
    srv = ServingServer(port=0, max_tokens_limit=8, capture=capture)
    srv.line("m").swap(ServedModel("m:v1", 1, FakeGenerator("ok", delay_s=0)))
    srv.line("m").capture = CaptureSpec(redact=(r"\b\d{16}\b", r"[\w.]+@[\w.]+"))
    srv.start()
    yield srv, capture, log
    srv.stop()
    capture.close()


def test_kept_prompts_are_redacted_deduplicated_and_never_opted_out(
    capturing: tuple[ServingServer, TrafficCapture, CaptureLog], store: Store
) -> None:
    srv, capture, log = capturing
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for prompt in (f"first prompt with {SECRET}", "a second prompt, long enough"):
            assert c.post("/v1/completions", json={"model": "m", "prompt": prompt}).is_success
        c.post("/v1/completions", json={"model": "m", "prompt": "a second prompt, long enough"})
        private = {"model": "m", "prompt": "do not keep this private prompt", "store": False}
        assert c.post("/v1/completions", json=private).is_success
        chat = {
            "model": "m",
            "messages": [{"role": "user", "content": "chat that must not be kept"}],
            "store": False,
        }
        assert c.post("/v1/chat/completions", json=chat).is_success
        kept_chat = {"model": "m", "messages": [{"role": "user", "content": "chat to keep here"}]}
        answer = c.post("/v1/chat/completions", json=kept_chat).json()
        c.post("/v1/completions", json={"model": "m", "prompt": "short"})  # under 16 bytes
        c.post("/v1/completions", json={"model": "m", "prompt": "nul \u0000 inside a prompt"})
    capture.flush()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        metrics = c.get("/metrics").text
    assert "aifactory_capture_kept_total 3.0" in metrics, metrics
    rows = log.pending("m")
    texts = [r.text for r in rows]
    assert len(texts) == 3, texts  # the repeated prompt once; opted out, short, NUL: never
    assert texts[0] == "first prompt with card [redacted] mail [redacted]"
    assert any("chat to keep here" in t for t in texts)
    assert rows[-1].completion_id == answer["id"] and rows[-1].version == 1
    everything = " ".join(str(v) for r in rows for v in vars(r).values())
    assert "private" not in everything and "must not be kept" not in everything
    assert "4111" not in everything and "ann@example.com" not in everything


def test_the_daily_allowance_and_the_sample_rate_bound_what_is_kept(store: Store) -> None:
    log = CaptureLog(store)
    capture = TrafficCapture(log, seed=1)
    spec = CaptureSpec(max_bytes_per_day=100)
    kept = [
        capture.offer(spec, "m", 1, f"c{i}", f"prompt number {i:04d} here") for i in range(10)
    ]  # 23 bytes each
    capture.flush()
    assert sum(kept) == 4 and log.bytes_on("m", time.strftime("%Y-%m-%d", time.gmtime())) <= 100
    restarted = TrafficCapture(log, seed=1)  # a restart counts what the store holds
    restarted.offer(spec, "m", 1, "c99", "yet another prompt of ours")
    restarted.flush()
    assert restarted.dropped == 1 and log.count("m") == 4
    optin = CaptureSpec(opt_in=True)  # only what a client asked to be stored
    assert not restarted.offer(optin, "o", 1, "o1", "a prompt that said nothing", None)
    assert restarted.offer(optin, "o", 1, "o2", "a prompt that said store: true", True)
    huge = "x" * 70_000
    assert not restarted.offer(CaptureSpec(), "o", 1, "o3", huge)  # would spoil a batch
    half = CaptureSpec(sample_rate=0.5)
    n = sum(restarted.offer(half, "n", 1, f"d{i}", f"sampled prompt {i:05d}") for i in range(400))
    assert 150 < n < 250, n
    for cap in (capture, restarted):
        cap.close()


def test_kept_prompts_become_batch_files_that_expire(store: Store, tmp_path: Path) -> None:
    log = CaptureLog(store)
    capture = TrafficCapture(log)
    for i in range(25):  # 51 bytes each: two batches of ten, five waiting
        capture.offer(CaptureSpec(), "m", 1, f"c{i}", f"prompt {i:03d} " + "x" * 40)
    capture.flush()
    spec = CapturePolicy(enabled=True, batch_bytes=500)
    source = TrafficSource("m", log, tmp_path / "traffic", spec)
    files = source.list_files(0)
    assert len(files) == 1 and files[0].label == "traffic"
    first = files[0].path.read_text()
    assert first.startswith("prompt 000 ") and 500 <= len(first) < 600
    while source.gather() is not None:
        pass
    names = sorted(p.name for p in (tmp_path / "traffic").iterdir())
    assert len(names) == 2 and log.pending_bytes("m") < 500  # a remainder waits for more
    assert not log.claim([log.rows_of("m", names[0])[0].id], "traffic-x.txt")  # taken
    (tmp_path / "traffic" / names[0]).unlink()  # another member's host wrote it, then died
    source.gather()
    assert (tmp_path / "traffic" / names[0]).read_text() == first  # written again, the same

    # ingested like any file, then expired everywhere: rows, batch files, ingested splits
    audit, catalog = AuditLog(store), DataCatalog(store)
    policy = DataPolicy(settle_s=0, capture=spec)
    ingestor = Ingestor(
        policy_name="m",
        data_policy=policy,
        catalog=catalog,
        audit=audit,
        data_dir=tmp_path / "data",
        quarantine_dir=tmp_path / "q",
    )
    report = ingestor.ingest(source, 0, cycle_id=None, policy_version=None)
    assert len(report.new_hashes) == 2
    splits = [p for h in report.new_hashes for p in ingestor.blob_paths(h)]
    assert all(p.exists() for p in splits)
    ctx = SimpleNamespace(
        name="m",
        source=CombinedSource(make_source(DataPolicy()), source),
        policy=SimpleNamespace(version="p1", data=policy),
        audit=audit,
        catalog=catalog,
        ingestor=ingestor,
        files=None,
        kept_traffic=TrafficSource("m", log, tmp_path / "traffic", CapturePolicy()),  # now off
    )
    (tmp_path / "traffic" / "traffic-000000900-000000901.txt").write_text("no row names it")
    assert TrafficRetention(ctx).check() is None  # type: ignore[arg-type]  # nothing is old
    later = time.time() + 31 * 86400
    action = TrafficRetention(ctx).check(now=later)  # type: ignore[arg-type]
    assert action is not None and action.figures["rows"] == 25
    assert action.figures["ingested_files"] == 2
    assert log.count("m") == 0 and not list((tmp_path / "traffic").glob("traffic-*"))  # swept
    assert not any(p.exists() for p in splits) and catalog.usable("m", report.new_hashes) == []
    assert TrafficRetention(ctx).check(now=later) is None  # type: ignore[arg-type]  # done once
    events = [e for e in audit.events(agent="data") if e.action == "expire_traffic"]
    assert len(events) == 1 and events[0].figures["bytes"] == action.figures["bytes"]
    capture.close()


def test_capture_settings_are_checked_with_their_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ndata:\n  capture:\n    enabled: true\n    redact: ['(unclosed']\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert "redact" in str(err.value) and "line" in str(err.value)
    alone = tmp_path / "alone.yaml"
    alone.write_text("name: t\ndata:\n  source:\n    kind: traffic\n")
    with pytest.raises(PolicyError) as err:
        load_policy(alone)
    assert "capture.enabled" in str(err.value)
    with pytest.raises(ValueError):
        DataPolicy(capture=CapturePolicy(enabled=True, batch_bytes=1_500_000))
    only = DataPolicy(source={"kind": "traffic"}, capture=CapturePolicy(enabled=True))
    with pytest.raises(ValueError):
        make_source(only)  # nothing captures here


def test_a_slow_or_failing_store_never_slows_an_answer() -> None:
    class Down:
        def add(self, rows: list) -> int:
            time.sleep(1.0)
            raise ConnectionError("down")

        def bytes_on(self, line: str, day: str) -> int:
            time.sleep(1.0)
            raise ConnectionError("down")

    capture = TrafficCapture(Down())  # type: ignore[arg-type]
    started = time.monotonic()
    for i in range(3):
        assert capture.offer(CaptureSpec(), "m", 1, f"c{i}", f"a prompt long enough {i}")
    assert time.monotonic() - started < 0.2  # queued: nothing asked of the store here
    capture.flush(timeout_s=10)
    assert capture.dropped == 3 and capture.kept == 0
    capture.close()
