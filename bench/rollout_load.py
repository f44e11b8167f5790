"""Load test across a canary rollout, a promotion and a rollback, over loopback HTTP.

    python -m bench.rollout_load [--workers 4] [--steady-s 10] [--interval-s 5] [--repeats 3]

Starts the real daemon (`aifactory run`) on a small line with a canary rollout
(bench/configs/rollout.yaml): cycle 1 trains the first champion, era 2 arrives, cycle 2's
candidate goes through the canary steps and is promoted; then `aifactory rollback` puts the
first champion back. `--workers` clients send completions the whole time, each request
timed and tagged with the version that answered. Reports, per phase, requests sent, failed
(the goal is 0), p50 and p99 latency, and the p99 ratios against the steady state measured
after the promotion in the same run (no training then, as during the canary); latencies
are medians over `--repeats` full runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agents.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "bench" / "configs" / "rollout.yaml"


@dataclass
class Sample:
    at: float
    latency_ms: float
    ok: bool
    model: str


@dataclass
class Load:
    url: str
    workers: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        src = Path(sysconfig.get_paths()["stdlib"]) / "concurrent" / "futures" / "_base.py"
        text = src.read_text()
        prompts = [text[i : i + 160] for i in range(0, 16000, 160)]
        threads = [
            threading.Thread(target=self._client, args=(prompts[i :: self.workers],), daemon=True)
            for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        return threads

    def _client(self, prompts: list[str]) -> None:
        i = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                body = {"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": 16}
                i += 1
                start = time.monotonic()
                try:
                    r = client.post(self.url, json=body)
                    ok = r.status_code == 200
                    model = r.json()["model"] if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, model = False, type(exc).__name__
                self.samples.append(Sample(start, 1000 * (time.monotonic() - start), ok, model))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _wait(cond: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def _median(values: list[float], width: int, digits: int) -> str:
    """Median over the runs; "-" where no run had a request in the phase."""
    return f"{statistics.median(values):{width}.{digits}f}" if values else f"{'-':>{width}}"


PHASES = (
    ("training v2 (champion v1)", "start", "canary"),
    ("canary steps", "canary", "promoted"),
    ("promotion", "promoted", "steady"),
    ("steady state (v2)", "steady", "rollback"),
    ("rollback to v1", "rollback", "end"),
)


def scenario(args: argparse.Namespace) -> tuple[list[Sample], dict[str, float], str]:
    """One full run of the daemon under load: (samples, phase marks, outcome line)."""
    from adapters.store.cycles import CycleBook
    from adapters.store.db import Store
    from adapters.store.rollouts import RolloutBook

    tmp = Path(tempfile.mkdtemp(prefix="aifactory-bench-rollout-"))
    state = tmp / "state"
    policy = tmp / "policy.yaml"
    policy.write_text(
        POLICY.read_text()
        .replace("step_interval_s: 5", f"step_interval_s: {args.interval_s}")
        .replace("loss_sample_rate: 0.25", f"loss_sample_rate: {args.sample_rate}")
    )
    db = f"sqlite:///{state / 'aifactory.db'}"
    common = ["--policy", str(policy), "--db", db]
    run = [
        "run",
        *common,
        "--state-dir",
        str(state),
        "--port",
        "0",
        "--console-port",
        "0",
        "--tick-s",
        "0.3",
    ]
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115  (closed at the end)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", *run],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    marks: dict[str, float] = {}
    try:
        _wait(lambda: (state / "aifactory.db").exists(), 60, "the database")
        store = Store(db)
        store.create_all()
        book, rollouts = CycleBook(store), RolloutBook(store)
        st = _wait(
            lambda: (s := book.daemon_state("bench")) and s.served_version == 1 and s,
            300,
            "the first champion",
        )
        load = Load(f"{st.serving_url}/v1/completions", args.workers)  # type: ignore[attr-defined]
        threads = load.run()
        marks["start"] = time.monotonic()
        _wait(lambda: rollouts.recent("bench"), 600, "the canary to start")
        marks["canary"] = time.monotonic()
        row = _wait(
            lambda: (r := rollouts.recent("bench")[0]).status != "running" and r,
            600,
            "the canary to end",
        )
        marks["promoted"] = time.monotonic()
        outcome = f"canary {row.status}: {row.reason}"  # type: ignore[attr-defined]
        time.sleep(1.0)
        marks["steady"] = time.monotonic()
        time.sleep(args.steady_s)
        marks["rollback"] = time.monotonic()
        rb = _cli("rollback", "--reason", "load test", *common)
        outcome += f"; rollback: {rb.stdout.strip()}"
        _wait(lambda: (s := book.daemon_state("bench")) and s.served_version == 1, 30, "rollback")
        time.sleep(3.0)
        marks["end"] = time.monotonic()
        load.stop.set()
        for t in threads:
            t.join(30)
        store.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return load.samples, marks, outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steady-s", type=float, default=10.0)
    ap.add_argument("--interval-s", type=float, default=5.0, help="canary step interval")
    ap.add_argument(
        "--sample-rate", type=float, default=0.25, help="share of prompts scored by both models"
    )
    ap.add_argument("--repeats", type=int, default=3, help="full runs; latencies are medians")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sent = {name: 0 for name, _, _ in PHASES}
    failed = dict.fromkeys(sent, 0)
    p50s: dict[str, list[float]] = {name: [] for name in sent}
    p99s: dict[str, list[float]] = {name: [] for name in sent}
    ratios: dict[str, list[float]] = {name: [] for name in sent}
    for i in range(args.repeats):
        samples, marks, outcome = scenario(args)
        print(f"run {i + 1}: {len(samples)} requests; {outcome}", flush=True)
        steady = [s.latency_ms for s in samples if marks["steady"] <= s.at < marks["rollback"]]
        steady_p99 = percentile(steady, 99)
        for name, a, b in PHASES:
            got = [s for s in samples if marks[a] <= s.at < marks[b]]
            lat = [s.latency_ms for s in got]
            sent[name] += len(got)
            failed[name] += sum(not s.ok for s in got)
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            if p50 is not None and p99 is not None:
                p50s[name].append(p50)
                p99s[name].append(p99)
                if steady_p99:
                    ratios[name].append(p99 / steady_p99)
    print(
        f"\n{args.repeats} runs, {args.workers} clients, canary steps of {args.interval_s:g} s, "
        f"{args.sample_rate:g} of prompts scored; latencies are medians over the runs"
    )
    print(f"{'phase':28} {'sent':>6} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99/steady':>10}")
    for name, _, _ in PHASES:
        print(
            f"{name:28} {sent[name]:6d} {failed[name]:6d} {_median(p50s[name], 7, 1)} "
            f"{_median(p99s[name], 7, 1)} {_median(ratios[name], 9, 2)}x"
        )
    total_failed = sum(failed.values())
    print(f"\nall phases: {sum(sent.values())} requests, {total_failed} failed")
    return 0 if total_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
