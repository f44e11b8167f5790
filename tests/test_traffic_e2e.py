"""Traffic becomes data, with the real daemon: the tiny line is trained on one era of
files, then clients send prompts from a domain no file has shown (the standard library's
documentation prose). The live watch notices the champion's served prompts drift; with
capture on, the factory has kept them (redacted; never what a client asked not to be
stored), gathers them into a data file, retrains on them and promotes a model that scores
better on that traffic."""

from __future__ import annotations

import signal
import sysconfig
import tempfile
from pathlib import Path

import httpx
import pytest
from test_e2e import daemon, open_store, policy_file, wait_for

from adapters.store.audit import AuditLog
from adapters.store.captures import CaptureLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.registry import ModelRegistry
from adapters.workload.bytelm import ByteLMWorkload

pytestmark = pytest.mark.slow

CAPTURE = """  capture:
    enabled: true
    batch_bytes: 100000
    redact: ['[\\w.]+@example\\.org']
  settle_s: 0
"""
LIVE = "  schedule: {every_s: 3600}\n  live: {every_s: 1, min_prompts: 150}\n"
PRIVATE = "PRIVATE-MARKER-never-kept"
EMAIL = "ops.lead@example.org"


def _prose() -> list[str]:
    """The new domain: English documentation, in 200-character prompts."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
    text = src.read_text()[20_000:80_000]
    return [text[i : i + 200] for i in range(0, len(text), 200)]


def test_the_factory_learns_a_new_domain_from_its_traffic(tmp_path: Path) -> None:
    pol = policy_file(
        tmp_path,
        **{
            "      - [concurrent]\n": "",
            "  eval_max_bytes: 16000\n": "  eval_max_bytes: 16000\n" + CAPTURE,
            "  schedule: {every_s: 3600}\n": LIVE,
        },
    )
    state = tmp_path / "state"
    url = f"sqlite:///{state / 'aifactory.db'}"
    args = ["--policy", str(pol), "--state-dir", str(state), "--port", "0", "--tick-s", "0.3"]
    log = tmp_path / "daemon.log"
    prose = _prose()
    sent, unseen = prose[:150], prose[200:260]  # scored on prompts no client sent
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        book, registry = CycleBook(store), ModelRegistry(store, state / "models")
        st = wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.served_version == 1 and s,
            180,
            "first champion served",
            log,
        )
        endpoint = f"{st.serving_url}/v1/completions"
        with httpx.Client(timeout=30) as client:
            for i, prompt in enumerate(sent):
                if i % 10 == 0:
                    prompt = f"{prompt[:120]} write to {EMAIL} "
                body = {"model": "tiny", "prompt": prompt, "max_tokens": 2}
                assert client.post(endpoint, json=body).status_code == 200
                private = {"model": "tiny", "prompt": f"{PRIVATE} {i}", "store": False}
                assert client.post(endpoint, json=private).status_code == 200
        seen = wait_for(lambda: _live_metrics(st.serving_url), 60, "live figures", log)
        wait_for(lambda: registry.alias("tiny", "champion") == 2, 240, "v2 promoted", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    v2 = registry.get("tiny", 2)
    assert v2 is not None
    dataset = DataCatalog(store).get(v2.dataset_version)
    assert dataset is not None
    labels = {f.label for f in DataCatalog(store).files("tiny", list(dataset.file_hashes))}
    assert labels == {"era0:json", "traffic"}, labels
    decision = next(
        e
        for e in AuditLog(store).events(agent="data")
        if e.action == "retrain" and e.cycle_id == "tiny-c0002"
    )
    assert decision.outcome == "taken" and "drift" in decision.reason, decision.reason
    live = next(e for e in AuditLog(store).events(agent="data") if e.action == "live_drift")
    assert live.outcome == "taken" and live.figures["live_prompts"] == 150, live.reason
    js, rise = live.figures["live_js_divergence"], live.figures["live_loss_increase_pct"]
    assert js >= 0.02 or rise >= 10, live.figures
    assert 'aifactory_live_js_divergence{line="tiny",version="v1"}' in seen
    # better on that traffic: both champions scored on prose no client sent
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(unseen))
    bytelm = ByteLMWorkload()
    before = bytelm.evaluate(registry.verified_path(registry.get("tiny", 1)), [f.name]).bpb  # type: ignore[arg-type]
    after = bytelm.evaluate(registry.verified_path(v2), [f.name]).bpb
    print(f"bits/byte on unsent traffic: v1 {before:.4f}, v2 {after:.4f}")
    assert after < before * 0.97, (before, after)
    # nothing a client kept private, and no redacted address, reached the disk
    assert CaptureLog(store).count("tiny") >= 100
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PRIVATE.encode() not in data and EMAIL.encode() not in data, path
    store.dispose()


def _live_metrics(url: str) -> str | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return text if "aifactory_live_prompts{" in text else None
