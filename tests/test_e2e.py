"""The real loop, end to end, on a tiny configuration: real training, HTTP, database.

The daemon runs as a child process exactly as an operator would start it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TINY_POLICY
from sqlmodel import select

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.registry import ModelRegistry
from adapters.store.tables import AuditEventRow, LedgerRow, ModelVersionRow, TrialRunRow

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def daemon(
    *args: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "run", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class LoadClient(threading.Thread):
    """Sends completions in a loop and counts what failed (status or transport)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.models: set[str] = set()
        self._stop_flag = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop_flag.is_set():
                try:
                    r = client.post(
                        self.url, json={"model": "tiny", "prompt": "def ", "max_tokens": 4}
                    )
                    if r.status_code == 200:
                        self.ok += 1
                        self.models.add(r.json()["model"])
                    else:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(10)


def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    log: Path | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> Any:
    """Poll ``cond`` until it holds; with ``proc``, fail at once if that process has exited
    first (a dead daemon never gets there: do not sit out the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = cond()  # it may have got there just before exiting
            if value:
                return value
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"exited ({proc.returncode}) before {what}\n{tail}")
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def policy_file(tmp_path: Path, **replace: str) -> Path:
    text = TINY_POLICY.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def open_store(url: str) -> Store:
    s = Store(url)
    s.create_all()
    return s


def test_daemon_serves_champion_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Cycle 1 trains the first champion, era 2 arrives, drift triggers cycle 2; HTTP answers."""
    state = tmp_path / "state"
    pol = policy_file(tmp_path)
    log = tmp_path / "daemon.log"
    url = f"sqlite:///{state / 'aifactory.db'}"
    common = ["--policy", str(pol), "--state-dir", str(state)]
    with daemon(*common, "--port", "0", "--tick-s", "0.5", log=log) as proc:
        wait_for(lambda: (state / "aifactory.db").exists(), 60, "database", log)
        store = open_store(url)
        book = CycleBook(store)

        def two_cycles_done() -> bool:
            return book.completed_count("tiny") >= 2

        # from the first champion on, a client keeps asking: promotion of v2 and the
        # rollback below must not fail a single request
        first = wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.served_version and s,
            120,
            "first champion served",
            log,
        )
        load = LoadClient(f"{first.serving_url}/v1/completions")
        load.start()
        wait_for(two_cycles_done, 180, "two completed cycles", log)
        served = wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.served_version and s,
            30,
            "served champion",
            log,
        )
        champion = ModelRegistry(store, state / "models").alias("tiny", "champion")
        wait_for(
            lambda: book.daemon_state("tiny").served_version == champion,
            10,  # type: ignore[union-attr]
            "serving to follow the champion",
            log,
        )
        base = served.serving_url
        models = httpx.get(f"{base}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "tiny" and models["data"][0]["version"] == champion
        assert f"tiny:v{champion}" in {m["id"] for m in models["data"]}
        answer = httpx.post(
            f"{base}/v1/completions",
            json={"model": "tiny", "prompt": "import ", "max_tokens": 12, "temperature": 0},
            timeout=30,
        ).json()
        assert answer["usage"]["completion_tokens"] == 12
        # the real model streams as it samples (OpenAI client, server-sent events)
        import openai

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        chunks = list(
            client.completions.create(
                model="tiny", prompt="import ", max_tokens=12, temperature=0, stream=True
            )
        )
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        assert streamed == answer["choices"][0]["text"] and len(chunks) > 2
        assert answer["model"] == f"tiny:v{champion}"

        wait_for(
            lambda: any(
                r["serve_tokens"]
                for r in json.loads(
                    cli(
                        "report", "--by", "model", "--json", "--db", url, "--policy", str(pol)
                    ).stdout
                )
            ),
            20,
            "served tokens on the ledger",
            log,
        )
        report = json.loads(
            cli("report", "--by", "cycle", "--json", "--db", url, "--policy", str(pol)).stdout
        )
        by_cycle = {r["key"]: r for r in report}
        assert by_cycle["tiny-c0001"]["train_tokens"] > 0
        assert by_cycle["tiny-c0001"]["energy"] == "estimated"
        assert by_cycle["tiny-c0001"]["train_tokens_per_joule"] > 0
        status = cli("status", "--db", url, "--policy", str(pol))
        assert status.returncode == 0
        assert f"serving v{champion} at {base}/v1" in status.stdout
        assert "telemetry:" in status.stdout and "(estimated)" in status.stdout

        # an operator rollback reaches the live server within a tick, with no restart
        assert champion == 2
        rb = cli("rollback", "--reason", "suspicious", "--db", url, "--policy", str(pol))
        assert rb.returncode == 0, rb.stdout
        wait_for(
            lambda: book.daemon_state("tiny").served_version == 1,
            20,  # type: ignore[union-attr]
            "serving to follow the rollback",
            log,
        )
        again = httpx.post(
            f"{base}/v1/completions",
            json={"model": "tiny", "prompt": "x", "max_tokens": 2},
            timeout=30,
        ).json()
        assert again["model"] == "tiny:v1"
        load.stop()
        assert load.failures == [], load.failures[:5]
        assert load.ok > 10 and {"tiny:v1", "tiny:v2"} <= load.models

        # the second cycle was triggered by the new era, with the drift figures audited
        log_ = AuditLog(store)
        retrain = [e for e in log_.events(agent="data") if e.action == "retrain"]
        assert retrain[0].outcome == "taken" and "no champion" in retrain[0].reason
        drift = next(e for e in retrain if e.cycle_id == "tiny-c0002")
        assert drift.outcome == "taken" and drift.figures["js_divergence"] > 0.004
        assert book.get("tiny-c0002").trigger == "new data"  # type: ignore[union-attr]

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 15
    out = log.read_text()
    assert "aifactory run summary" in out and "tokens/J" in out and "estimated" in out
    verify = cli("audit", "verify", "--db", url)
    assert verify.returncode == 0, verify.stdout
    store.dispose()


def test_kill9_mid_trial_resumes_without_duplicates(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pol = policy_file(tmp_path, **{"tokens_per_trial: 60000": "tokens_per_trial: 400000"})
    url = f"sqlite:///{state / 'aifactory.db'}"
    common = ["--policy", str(pol), "--state-dir", str(state), "--no-serve"]
    log = tmp_path / "first.log"
    with daemon(*common, "--cycles", "1", log=log) as proc:
        wait_for(lambda: (state / "aifactory.db").exists(), 60, "database", log)
        store = open_store(url)

        def second_trial_running() -> bool:
            with store.session() as s:
                rows = s.exec(select(TrialRunRow)).all()
            return any(r.key.endswith(":trial:001") and r.status == "running" for r in rows)

        wait_for(second_trial_running, 120, "second trial to start", log)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # the orphaned trial worker notices its parent died and exits
    time.sleep(3)
    ps = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    with store.session() as s:
        before = {r.key: r.status for r in s.exec(select(TrialRunRow)).all()}
    assert before[next(k for k in before if k.endswith(":trial:000"))] == "complete"

    log2 = tmp_path / "second.log"
    with daemon(*common, "--cycles", "1", log=log2) as proc2:
        assert proc2.wait(240) == 0, log2.read_text()[-3000:]
    out = log2.read_text()
    assert "resuming cycle tiny-c0001" in out

    with store.session() as s:
        trials = s.exec(select(TrialRunRow)).all()
        versions = s.exec(select(ModelVersionRow)).all()
        ledger = s.exec(select(LedgerRow).where(LedgerRow.kind == "train")).all()
        keys = [e.idem_key for e in s.exec(select(AuditEventRow)).all() if e.idem_key]
    assert len(trials) == 2 and all(t.status == "complete" for t in trials)
    assert len({t.optuna_number for t in trials}) == 2
    assert len(versions) == 1 and versions[0].cycle_id == "tiny-c0001"
    # one row per trial, plus each fresh worker's start-up (one per daemon run here)
    booked = sorted(r.key.split(":", 1)[1] for r in ledger)
    assert booked == [
        "trial:000",
        "trial:000:worker-startup",
        "trial:001",
        "trial:001:worker-startup",
    ], [(r.key, r.joules) for r in ledger]
    assert len(keys) == len(set(keys))
    import optuna

    study = optuna.load_study(study_name="aifactory-tiny", storage=store.url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states
    assert CycleBook(store).get("tiny-c0001").status == "completed"  # type: ignore[union-attr]
    verify = cli("audit", "verify", "--db", url)
    assert verify.returncode == 0, verify.stdout
    assert ps.returncode in (0, 1)
    store.dispose()


def test_bad_policy_is_refused_and_last_good_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pol = policy_file(tmp_path)
    url = f"sqlite:///{state / 'aifactory.db'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(pol.read_text().replace("max_bpb: 7.0", "max_bpb: -1"))
    refused = cli(
        "run", "--policy", str(bad), "--state-dir", str(tmp_path / "other"), "--once", "--no-serve"
    )
    assert refused.returncode == 2
    line = next(i + 1 for i, t in enumerate(bad.read_text().splitlines()) if "max_bpb" in t)
    assert "gates.max_bpb" in refused.stdout and f"line {line}" in refused.stdout

    log = tmp_path / "daemon.log"
    with daemon(
        "--policy", str(pol), "--state-dir", str(state), "--no-serve", "--tick-s", "0.3", log=log
    ) as proc:
        store = wait_for(
            lambda: (state / "aifactory.db").exists() and open_store(url), 60, "database", log
        )
        book = CycleBook(store)
        good_version = wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.policy_version, 60, "daemon state", log
        )
        pol.write_text(pol.read_text().replace("max_bpb: 7.0", "max_bpb: [oops"))
        audit = AuditLog(store)

        def refusal() -> Any:
            return [
                e
                for e in audit.events(agent="controller")
                if e.action == "reload_policy" and e.outcome == "refused"
            ]

        events = wait_for(refusal, 30, "policy refusal", log)
        assert "line" in events[0].reason and "keeping policy" in events[0].reason
        assert proc.poll() is None
        assert book.daemon_state("tiny").policy_version == good_version  # type: ignore[union-attr]
        # a valid edit is picked up
        pol.write_text(
            TINY_POLICY.read_text().replace("min_improvement_pct: 0.0", "min_improvement_pct: 0.1")
        )
        wait_for(  # applied between cycles: after the first one ends (slow on a loaded box)
            lambda: book.daemon_state("tiny").policy_version != good_version,
            120,  # type: ignore[union-attr]
            "new policy",
            log,
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    store.dispose()


@pytest.mark.postgres
def test_one_cycle_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    res = cli(
        "run",
        "--policy",
        str(TINY_POLICY),
        "--state-dir",
        str(tmp_path / "state"),
        "--db",
        pg_url,
        "--once",
        "--no-serve",
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = open_store(pg_url)
    assert ModelRegistry(store, tmp_path / "m").alias("tiny", "champion") == 1
    assert AuditLog(store).verify().ok
    # what the controller itself cost: its own CPU, beside the trials' and evaluation's
    (done,) = AuditLog(store).events(action="finish_cycle")
    assert done.figures["controller_cpu_s"] > 0 and done.figures["controller_energy"] == "estimated"
    assert 0 < done.figures["controller_share_pct"] < 100
    assert "[daemon] the controller itself:" in res.stdout
    status = cli("status", "--db", pg_url, "--policy", str(TINY_POLICY), "--json")
    assert json.loads(status.stdout)["champion"]["version"] == 1
    store.dispose()


@pytest.mark.postgres
def test_approval_survives_restart_then_resumes(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL only: restarts on SQLite are covered by the kill -9 and paused-canary
    tests, and the suite's time is kept for the backend with more to go wrong."""
    e2e_db = pg_url
    state = tmp_path / "state"
    pol = policy_file(tmp_path, **{"gates:": "approval: required\ngates:"})
    url = e2e_db
    common = [
        "--policy",
        str(pol),
        "--state-dir",
        str(state),
        "--db",
        url,
        "--port",
        "0",
        "--tick-s",
        "0.3",
    ]
    log = tmp_path / "first.log"
    with daemon(*common, log=log) as proc:
        store = wait_for(
            lambda: (state / "trials").exists() and open_store(url), 60, "state directory", log
        )
        book = CycleBook(store)
        pending = wait_for(lambda: book.approvals("tiny", "pending"), 120, "approval", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert book.get(pending[0].cycle_id).status == "awaiting_approval"  # type: ignore[union-attr]
    registry = ModelRegistry(store, state / "models")
    assert registry.alias("tiny", "champion") is None

    log2 = tmp_path / "second.log"
    with daemon(*common, log=log2) as proc2:
        wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.pid == proc2.pid,
            60,
            "restarted daemon",
            log2,
        )
        time.sleep(1.0)
        assert [a.id for a in book.approvals("tiny", "pending")] == [pending[0].id]
        ok = cli(
            "approve",
            str(pending[0].id),
            "--by",
            "alice",
            "--reason",
            "looks fine",
            "--db",
            url,
            "--policy",
            str(pol),
        )
        assert ok.returncode == 0, ok.stdout
        wait_for(lambda: registry.alias("tiny", "champion") == 1, 60, "promotion", log2)
        # era 2 arrives; the second candidate also waits, and a person rejects it
        second = wait_for(
            lambda: [a for a in book.approvals("tiny", "pending") if a.id != pending[0].id],
            120,
            "second approval",
            log2,
        )
        no = cli(
            "reject",
            str(second[0].id),
            "--reason",
            "not this week",
            "--db",
            url,
            "--policy",
            str(pol),
        )
        assert no.returncode == 0, no.stdout
        wait_for(lambda: book.completed_count("tiny") == 2, 60, "second cycle to finish", log2)
        assert registry.alias("tiny", "champion") == 1
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(30) == 0
    events = AuditLog(store).events(agent="deployer")
    decided = [e for e in events if e.action == "approval"]
    assert decided[0].outcome == "taken" and "alice" in decided[0].reason
    assert decided[1].outcome == "refused" and "not this week" in decided[1].reason
    with store.session() as s:
        assert len(s.exec(select(TrialRunRow)).all()) == 4  # 2 cycles x 2 trials, none repeated
    assert AuditLog(store).verify().ok
    store.dispose()


def test_advisor_explains_cycle_through_litellm(tmp_path: Path) -> None:
    """The LLM advisor is called through LiteLLM; here it talks to the daemon's own
    OpenAI-compatible endpoint (no network needed), and its tokens are booked."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = tmp_path / "state"
    advisor = (
        "advisor:\n  model: openai/tiny\n"
        f"  api_base: http://127.0.0.1:{port}/v1\n  max_tokens: 24\ngates:"
    )
    pol = policy_file(tmp_path, **{"gates:": advisor})
    url = f"sqlite:///{state / 'aifactory.db'}"
    res = cli("run", "--policy", str(pol), "--state-dir", str(state), "--port", str(port), "--once")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = open_store(url)
    explained = [e for e in AuditLog(store).events(agent="advisor") if e.action == "explain"]
    assert len(explained) == 1 and explained[0].outcome == "taken", explained
    assert explained[0].figures["completion_tokens"] > 0
    from adapters.store.ledger import Ledger

    assert Ledger(store).totals("tiny", kind="llm").tokens > 0
    store.dispose()


TINY_LR = "lr: {type: float, low: 0.003, high: 0.01, log: true}"


def run_once(tmp_path: Path, pol: Path, env: dict[str, str] | None = None) -> Store:
    state = tmp_path / "state"
    res = cli(
        "run", "--policy", str(pol), "--state-dir", str(state), "--once", "--no-serve", env=env
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return open_store(f"sqlite:///{state / 'aifactory.db'}")


def test_crashing_trial_fails_that_trial_only(tmp_path: Path) -> None:
    """An operator's own workload (`module:object`) whose trial dies hard at one setting."""
    pol = policy_file(
        tmp_path,
        **{
            "name: tiny": "name: tiny\nworkload: crashy_workloads:CrashOnLargeLr",
            TINY_LR: "lr: {type: categorical, choices: [0.004, 0.009]}",
            "trials_per_cycle: 2": "trials_per_cycle: 4",
        },
    )
    store = run_once(tmp_path, pol, env={"PYTHONPATH": str(ROOT / "tests")})
    trials = [e for e in AuditLog(store).events(agent="trainer") if e.action == "run_trial"]
    outcomes = {e.outcome for e in trials}
    assert outcomes == {"taken", "failed"}, [(e.outcome, e.reason) for e in trials]
    assert any("exit code 9" in e.reason for e in trials if e.outcome == "failed")
    assert ModelRegistry(store, tmp_path).alias("tiny", "champion") == 1
    store.dispose()


def test_nan_training_is_never_promoted(tmp_path: Path) -> None:
    pol = policy_file(
        tmp_path,
        **{
            TINY_LR: "lr: {type: categorical, choices: [10000.0]}",
            "warmup_steps: 5": "warmup_steps: 0",
        },
    )
    store = run_once(tmp_path, pol)
    audit = AuditLog(store)
    choose = [e for e in audit.events(agent="trainer") if e.action == "choose_candidate"]
    assert choose[0].outcome == "refused" and "no trial produced a usable model" in choose[0].reason
    assert ModelRegistry(store, tmp_path).versions("tiny") == []
    assert ModelRegistry(store, tmp_path).alias("tiny", "champion") is None
    store.dispose()


def test_budget_below_one_trial_is_refused_before_training(tmp_path: Path) -> None:
    pol = policy_file(
        tmp_path,
        **{"tokens_per_trial: 60000": "tokens_per_trial: 60000\n  training_tokens_per_day: 1000"},
    )
    store = run_once(tmp_path, pol)
    refusal = [e for e in AuditLog(store).events(agent="energy")]
    assert refusal[0].outcome == "refused"
    assert "training_tokens_per_day=1000" in refusal[0].reason
    assert refusal[0].figures["shortfall_tokens"] == 59_000
    with store.session() as s:
        assert s.exec(select(TrialRunRow)).all() == []
    store.dispose()


def test_energy_objective_pareto_front_and_selection(tmp_path: Path) -> None:
    """Two objectives (bits/byte, J/token); the candidate is the least energy within 50%."""
    pol = policy_file(
        tmp_path,
        **{
            TINY_LR: "lr: {type: float, low: 0.003, high: 0.01, log: true}\n"
            "    batch_size: {type: categorical, choices: [4, 32]}",
            "batch_size: 16, ": "",
            "trials_per_cycle: 2": "trials_per_cycle: 4\n  objectives: {kind: quality_and_energy}"
            "\n  selection: {rule: least_energy_within, quality_tolerance_pct: 50}",
        },
    )
    store = run_once(tmp_path, pol)
    import optuna

    study = optuna.load_study(study_name="aifactory-tiny-quality_and_energy", storage=store.url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)
    points = CycleBook(store).pareto("tiny-c0001")
    assert len(points) == 4 and any(p.on_front for p in points)
    choose = next(
        e for e in AuditLog(store).events(agent="trainer") if e.action == "choose_candidate"
    )
    assert "least energy" in choose.reason and choose.figures["pareto_front"]
    chosen = choose.figures["chosen"]
    front_numbers = {p.optuna_number for p in points if p.on_front}
    assert chosen in front_numbers
    store.dispose()


def test_cold_study_starts_from_the_baseline_and_a_hopeless_trial_is_pruned(
    tmp_path: Path,
) -> None:
    """The baseline runs first; the sampler then gets something this cycle has not run (a
    repeat would be skipped), which is hopeless and pruned against the baseline's curve."""
    pol = policy_file(
        tmp_path,
        **{
            TINY_LR: "lr: {type: categorical, choices: [0.008, 0.00001]}",
            "trials_per_cycle: 2": "trials_per_cycle: 2\n  seed: 9\n  sampler: random\n"
            "  baseline: {lr: 0.008}\n"
            "  pruning: {enabled: true, startup_trials: 1, warmup_fraction: 0.1, margin_pct: 30}",
            "tokens_per_trial: 60000": "tokens_per_trial: 400000",
        },
    )
    store = run_once(tmp_path, pol)
    events = AuditLog(store).events(agent="trainer")
    assert any(e.action == "baseline" for e in events)
    ran = [e for e in events if e.action in ("run_trial", "prune_trial")]
    assert [e.figures["params"]["lr"] for e in ran] == [0.008, 0.00001]
    pruned = [e for e in events if e.action == "prune_trial"]
    assert [e.figures["params"]["lr"] for e in pruned] == [0.00001], [
        (e.action, e.reason) for e in events
    ]
    assert all(e.figures["duplicate_of"] == 0 for e in events if e.action == "skip_duplicate")
    assert ModelRegistry(store, tmp_path).get("tiny", 1).params["lr"] == 0.008  # type: ignore[union-attr]
    (done,) = AuditLog(store).events(action="finish_cycle")  # the controller's own cost
    assert done.figures["controller_cpu_s"] > 0 and 0 < done.figures["controller_share_pct"] < 100
    # both trials ran in one reused worker process; only the first paid its start-up
    runs = [e.figures["worker"] for e in ran]
    assert [w["trial"] for w in runs] == [1, 2] and runs[0]["pid"] == runs[1]["pid"]
    assert runs[0]["startup_joules"] > 0 and runs[1]["startup_joules"] == 0
    with store.session() as s:
        startups = [r for r in s.exec(select(LedgerRow)).all() if r.key.endswith(":worker-startup")]
    assert len(startups) == 1 and startups[0].joules == runs[0]["startup_joules"]
    store.dispose()


def test_power_limit_restored_after_kill9(tmp_path: Path) -> None:
    """The daemon sets a (fake) GPU's power limit for a trial and is killed with -9 right
    after the write; the next start restores the original limit before doing anything else.

    No moment is guessed: the fake NVML freezes the first daemon just after it wrote the
    limit (its ``.frozen`` file says so), and every wait ends on an explicit signal (that
    file, an audit row, the process's exit) or fails at once when the daemon has died."""
    state = tmp_path / "state"
    fake_state = tmp_path / "fake_gpu.json"
    env = {
        "PYTHONPATH": str(ROOT / "tests"),
        "AIFACTORY_NVML_MODULE": "fake_nvml_module",
        "AIFACTORY_FAKE_NVML_STATE": str(fake_state),
    }
    pol = policy_file(
        tmp_path,
        **{
            TINY_LR: TINY_LR + "\n    power_limit_w: {type: categorical, choices: [300]}",
            "gates:": "energy: {gpu: nvml, allow_power_limits: true}\ngates:",
        },
    )
    url = f"sqlite:///{state / 'aifactory.db'}"
    args = ("--policy", str(pol), "--state-dir", str(state), "--no-serve", "--once")

    def limit_mw() -> int:
        return int(json.loads(fake_state.read_text())["limit_mw"])

    log = tmp_path / "first.log"
    frozen = fake_state.with_suffix(".frozen")
    freeze = {"AIFACTORY_FAKE_NVML_FREEZE_AT_MW": "300000"}
    with daemon(*args, log=log, env=env | freeze) as proc:
        wait_for(frozen.exists, 120, "the power limit to be written", log, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert limit_mw() == 300_000  # left changed by the kill
    # restart: the original limit comes back at once; stop it (cleanly) right after
    log2 = tmp_path / "second.log"
    with daemon(*args, log=log2, env=env) as proc2:
        store = open_store(url)
        restored = wait_for(
            lambda: [
                e
                for e in AuditLog(store).events(agent="energy")
                if e.action == "restore_gpu_setting"
            ],
            120,
            "the restore at start",
            log2,
            proc2,
        )
        assert "at start" in restored[0].reason and restored[0].figures["restored"] == 700
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(120) == 0
    state_after = json.loads(fake_state.read_text())
    assert state_after["limit_mw"] == 700_000  # restored on exit too
    assert 300_000 in state_after["writes"] and state_after["writes"][-1] == 700_000
    store.dispose()
