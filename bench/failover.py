"""Failover: two daemons on one PostgreSQL database, the leader killed with -9 at a random
moment of a cycle, N times.

    python -m bench.failover [--rounds 10] [--ttl 5] [--renew 1] [--pg URL] [--out FILE]

Each round has a fresh database and two members (each its own state directory and serving
port, as two hosts). The leader trains a first champion, which both serve; new data starts
a second cycle, and the leader is killed at a uniformly random moment of its first half (as
measured by the first cycle). Meanwhile a client sends completions to the follower's port.
Per round: seconds from the kill to the follower's first action (its `lead` event: the new
term) and to its first step of the resumed cycle, against the lease TTL; duplicates found
once the cycle completes (trials, versions, ledger rows, audit keys, Optuna trials left
RUNNING, a broken audit chain); requests that failed on the follower's port.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("AIFACTORY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

POLICY = """name: fo
data:
  source: {kind: stdlib_eras, eras: [[json], [email]], max_files_per_era: 6}
  eval_max_bytes: 8000
budgets: {tokens_per_trial: 300000}
tuning:
  trials_per_cycle: 3
  search_space: {lr: {type: float, low: 0.003, high: 0.01, log: true}}
  fixed: {d_model: 32, n_layers: 1, n_heads: 2, context: 32, batch_size: 16, warmup_steps: 5}
triggers:
  schedule: {every_s: 3600}
  drift: {js_divergence: 0.004, loss_increase_pct: 0.0}
gates: {max_bpb: 8.0, min_improvement_pct: -100.0, max_reference_regression_pct: 100.0}
"""


class Load(threading.Thread):
    """Completions against one serving port, counting what failed (status or transport)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ok, self.failed = url, 0, []  # type: ignore[var-annotated]
        self.done = threading.Event()

    def run(self) -> None:
        body = {"model": "fo", "prompt": "import ", "max_tokens": 4}
        with httpx.Client(timeout=30) as client:
            while not self.done.is_set():
                try:
                    r = client.post(f"{self.url}/v1/completions", json=body)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)


def _sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(query, params).fetchall()) if "SELECT" in query else []


def _database() -> tuple[str, str]:
    import psycopg

    name = f"aifactory_failover_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG.rsplit("/", 1)[0] + "/" + name, name


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def _start(work: Path, name: str, url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    state = work / f"state-{name}"
    args = ["--policy", str(work / "policy.yaml"), "--state-dir", str(state), "--db", url]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            *args,
            "--port",
            "0",
            "--console-port",
            "0",
        ],
        cwd=ROOT,
        stdout=open(work / f"{name}.log", "wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )


def _holder_pid(url: str) -> int | None:
    rows = _sql(url, "SELECT holder FROM af_lease")
    return int(rows[0][0].split(":")[1]) if rows and rows[0][0] else None


def _serving_url(url: str, pid: int) -> str | None:
    rows = _sql(url, "SELECT serving_url FROM af_member WHERE pid = %s", pid)
    return rows[0][0] if rows and rows[0][0] else None


def _cycle(url: str, number: int) -> tuple[str, str, str | None] | None:
    rows = _sql(
        url, "SELECT status, started_at, finished_at FROM af_cycle WHERE number = %s", number
    )
    return rows[0] if rows else None


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _duplicates(url: str) -> dict[str, int]:
    """What a failover must never leave: each figure is a count of offences (goal: 0)."""
    trials = _sql(
        url,
        "SELECT count(*) FROM (SELECT study_name, optuna_number FROM af_trial_run "
        "GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    versions = _sql(
        url,
        "SELECT count(*) FROM (SELECT cycle_id FROM af_model_version "
        "GROUP BY 1 HAVING count(*) > 1) d",
    )
    keys = [r[0] for r in _sql(url, "SELECT key FROM af_ledger WHERE kind = 'train'")]
    bases = [
        ":".join(k.split(":")[:3])
        for k in keys
        if ":worker-startup" not in k and ":interrupted:" not in k
    ]
    running = _sql(url, "SELECT count(*) FROM trials WHERE state = 'RUNNING'")
    cycles = _sql(
        url, "SELECT count(*) FROM (SELECT number FROM af_cycle GROUP BY 1 HAVING count(*) > 1) d"
    )
    verify = subprocess.run(
        [sys.executable, "-m", "controller.cli", "audit", "verify", "--db", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        "trials": trials[0][0],
        "versions": versions[0][0],
        "ledger_rows": len(bases) - len(set(bases)),
        "optuna_running": running[0][0],
        "cycles": cycles[0][0],
        "audit_chain_broken": int(verify.returncode != 0),
    }


def _after_kill(url: str, killed: float) -> dict[str, Any]:
    """When the follower led (its `lead` event) and first stepped the resumed cycle."""
    leads = _sql(url, "SELECT ts, figures FROM af_audit_event WHERE action = 'lead' ORDER BY seq")
    lead = next(r for r in leads if json.loads(r[1])["epoch"] == 2)
    c2 = _sql(url, "SELECT id FROM af_cycle WHERE number = 2")[0][0]
    steps = _sql(
        url,
        "SELECT ts FROM af_audit_event WHERE cycle_id = %s AND ts > %s ORDER BY seq LIMIT 1",
        c2,
        lead[0],
    )
    return {
        "takeover_s": round(_ts(lead[0]) - killed, 2),
        "first_step_s": round(_ts(steps[0][0]) - killed, 2) if steps else None,
        "late_after_expiry_s": json.loads(lead[1]).get("late_s"),
    }


def one_round(work: Path, rng: random.Random, ttl: float, renew: float) -> dict[str, Any]:
    url, name = _database()
    env = {
        "AIFACTORY_LEASE__TTL_S": str(ttl),
        "AIFACTORY_LEASE__RENEW_S": str(renew),
        "AIFACTORY_TICK_S": "0.5",
    }
    (work / "policy.yaml").write_text(POLICY)
    a = _start(work, "a", url, env)
    b: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _holder_pid(url) == a.pid, 120, "a leads")
        b = _start(work, "b", url, env)
        c1 = _wait(lambda: (c := _cycle(url, 1)) and c[0] == "completed" and c, 300, "cycle 1")
        first_s = _ts(c1[2]) - _ts(c1[1])
        burl = _wait(lambda: _serving_url(url, b.pid), 60, "b serves")
        _wait(lambda: httpx.get(burl + "/healthz").json()["lines"]["fo"]["model"], 60, "b: v1")
        load = Load(burl)
        load.start()
        _wait(lambda: _cycle(url, 2), 120, "cycle 2")
        delay = rng.uniform(0.0, 0.5 * first_s)  # the second cycle has no start-up to pay
        time.sleep(delay)
        phase = _cycle(url, 2)[0]  # type: ignore[index]
        os.kill(a.pid, signal.SIGKILL)
        killed = time.time()
        a.wait(10)
        _wait(lambda: _holder_pid(url) == b.pid, 10 * ttl, "b takes over")
        _wait(
            lambda: (c := _cycle(url, 2)) and c[0] in ("completed", "failed"), 400, "cycle 2 ends"
        )
        time.sleep(1.0)
        load.done.set()
        load.join(30)
        return {
            "kill_after_s": round(delay, 2),
            "cycle_at_kill": phase,
            "cycle_2": _cycle(url, 2)[0],  # type: ignore[index]
            **_after_kill(url, killed),
            "duplicates": _duplicates(url),
            "requests_ok": load.ok,
            "requests_failed": len(load.failed),
            "failures": load.failed[:5],
        }
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        _drop(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL (s)")
    parser.add_argument("--renew", type=float, default=1.0, help="renewal interval (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--keep", type=Path, help="keep each round's daemon logs here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            work = (args.keep or Path(tmp)) / f"r{i}"
            work.mkdir(parents=True)
            rounds.append(one_round(work, rng, args.ttl, args.renew))
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    takeover = [r["takeover_s"] for r in rounds]
    steps = [r["first_step_s"] for r in rounds if r["first_step_s"] is not None]
    emit(
        {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores",
            "lease": {"ttl_s": args.ttl, "renew_s": args.renew},
            "rounds": len(rounds),
            "takeover_s": {"median": round(statistics.median(takeover), 2), "max": max(takeover)},
            "takeover_over_ttl": round(statistics.median(takeover) / args.ttl, 2),
            "first_step_s": {
                "median": round(statistics.median(steps), 2) if steps else None,
                "max": max(steps) if steps else None,
            },
            "within_ttl_plus_round": sum(t <= args.ttl + args.renew for t in takeover),
            "duplicates_found": sum(sum(r["duplicates"].values()) for r in rounds),
            "requests_failed": sum(r["requests_failed"] for r in rounds),
            "requests_ok": sum(r["requests_ok"] for r in rounds),
            "runs": rounds,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
