"""The loop closed through production: traffic shifts to a domain no file has shown.

    python -m bench.feedback_loop [--rate 20] [--out FILE]

The real daemon serves a small line trained on one era of files (the standard library's
`json` sources), with capture and the live watch on and a canary for every candidate.
Clients send prompts like its training data, then, at the shift, prose from the
documentation. Measured in one run: seconds from the shift to the live-drift event and to
the promotion of a model trained on the captured traffic,
and the champion's bits/byte on prose no client sent, before and after (goal: at least 5%
better). Energy of the retraining is on the ledger (estimated on a CPU host, labelled).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.traffic_client import TrafficClient, stdlib_prompts
from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
PROSE = Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"

POLICY = """name: fl
data:
  source: {kind: stdlib_eras, eras: [[json]], max_files_per_era: 6}
  settle_s: 0
  eval_max_bytes: 16000
  capture: {enabled: true, batch_bytes: 400000}
budgets: {tokens_per_trial: 300000}
tuning:
  trials_per_cycle: 2
  seed: 0
  search_space: {lr: {type: float, low: 0.003, high: 0.01, log: true}}
  fixed: {d_model: 32, n_layers: 1, n_heads: 2, context: 32, batch_size: 16, warmup_steps: 5}
triggers:
  schedule: {every_s: 86400}
  live: {every_s: 2, min_prompts: 200}
gates: {max_bpb: 8.0, min_improvement_pct: 0.0, max_reference_regression_pct: 50.0}
rollout:
  steps: [50, 100]
  step_interval_s: 4
  min_requests: 10
  min_loss_samples: 4
  loss_sample_rate: 0.5
  max_latency_p99_increase_pct: 1000
  on_inconclusive: proceed
"""


def _prose(start: int, count: int) -> list[str]:
    text = PROSE.read_text()[start : start + 200 * count]
    return [text[i : i + 200] for i in range(0, len(text), 200)]


def _wait(cond: Any, timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def _event_time(store: Any, action: str, after: float) -> float | None:
    """When the first such data-agent action was taken after a time (unix seconds)."""
    from adapters.store.audit import AuditLog

    for e in AuditLog(store).events(agent="data"):
        ts = datetime.strptime(e.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        if e.action == action and e.outcome == "taken" and ts >= after:
            return ts
    return None


def _start(work: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The daemon on the bench's policy: (process, state directory, log)."""
    state, log = work / "state", work / "daemon.log"
    (work / "policy.yaml").write_text(POLICY)
    cmd = [sys.executable, "-m", "controller.cli", "run", "--policy", str(work / "policy.yaml")]
    cmd += ["--state-dir", str(state), "--port", "0", "--console-port", "0", "--tick-s", "0.3"]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, state, log


def _bpb(registry: Any, version: int, text: Path) -> float:
    from adapters.workload.bytelm import ByteLMWorkload

    model = registry.get("fl", version)
    return ByteLMWorkload().evaluate(registry.verified_path(model), [str(text)]).bpb


def _run(args: argparse.Namespace, work: Path, store: Any, state: Path, log: Path) -> dict:
    """Steady traffic, the shift, and what followed it."""
    from adapters.store.cycles import CycleBook
    from adapters.store.ledger import Ledger
    from adapters.store.registry import ModelRegistry

    held_out = work / "unsent.txt"
    held_out.write_text("".join(_prose(300_000, 100)))
    registry = ModelRegistry(store, state / "models")
    served = _wait(
        lambda: (s := CycleBook(store).daemon_state("fl")) and s.served_version == 1 and s,
        300,
        "first champion",
        log,
    )
    topic = {"prompts": stdlib_prompts(["json"])}
    client = TrafficClient(served.serving_url, "fl", lambda: topic["prompts"], args.rate, 4)
    client.start()
    time.sleep(15)  # steady traffic like the training data: no drift
    before = _bpb(registry, 1, held_out)
    shift = time.time()
    topic["prompts"] = _prose(20_000, 600)
    _wait(lambda: registry.alias("fl", "champion") == 2, 600, "a promoted v2", log)
    promoted = time.time()
    counts = client.stop()
    after = _bpb(registry, 2, held_out)
    drift_at = _event_time(store, "live_drift", shift)
    v2 = registry.get("fl", 2)
    spent = Ledger(store).totals("fl", cycle_id=v2.cycle_id)
    measured = spent.measured_joules and not spent.estimated_joules
    return {
        "benchmark": "feedback_loop",
        "command": "python -m bench.feedback_loop",
        "rate_per_s": args.rate,
        "seconds_shift_to_live_drift": round(drift_at - shift, 1) if drift_at else None,
        "seconds_shift_to_promotion": round(promoted - shift, 1),
        "champion_bpb_on_new_traffic_before": round(before, 4),
        "champion_bpb_on_new_traffic_after": round(after, 4),
        "improvement_pct": round(100 * (1 - after / before), 2),
        "goal": "improvement_pct >= 5",
        "goal_met": after <= 0.95 * before,
        "retraining_joules": round(spent.joules, 1),
        "energy_method": "measured" if measured else "estimated",
        "requests": {"sent": counts.sent, "answered": counts.answered, "failed": counts.failed},
        "v2_trigger_cycle": v2.cycle_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from adapters.store.db import Store

    work = Path(tempfile.mkdtemp(prefix="aifactory-fl-"))
    proc, state, log = _start(work)
    try:
        url = f"sqlite:///{state / 'aifactory.db'}"
        store = _wait(lambda: (state / "aifactory.db").exists() and Store(url), 60, "db", log)
        result = _run(args, work, store, state, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        store.dispose()
        emit(result, args.out)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
