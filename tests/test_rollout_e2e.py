"""Canary rollouts with the real daemon on the tiny line: live traffic over loopback HTTP.

Cycle 1 trains the first champion (no canary: nothing to compare with); era 2 arrives and
cycle 2's blessed candidate goes through the canary while clients keep sending requests.
"""

from __future__ import annotations

import os
import random
import signal
import string
import sysconfig
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_e2e import cli, daemon, open_store, policy_file, run_once, wait_for

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.feedback import FeedbackLog
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook

pytestmark = pytest.mark.slow

ROLLOUT = """
rollout:
  steps: [50, 100]
  step_interval_s: {interval}
  min_requests: {min_requests}
  min_loss_samples: 4
  loss_sample_rate: 0.5
  max_latency_p99_increase_pct: 1000
  max_online_loss_increase_pct: 5
"""


def _prompts() -> list[str]:
    """Live traffic looks like era 2: pieces of the stdlib's concurrent package."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "concurrent" / "futures" / "_base.py"
    text = src.read_text()
    return [text[i : i + 160] for i in range(0, 16000, 160)]


class Traffic:
    """`workers` clients sending completions in a loop; counts answers and failures."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.models: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        prompts = _prompts()
        self._threads = [
            threading.Thread(target=self._run, args=(prompts[i::workers],), daemon=True)
            for i in range(workers)
        ]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def reset(self) -> None:
        with self._lock:
            self.ok, self.failures, self.models = 0, [], {}

    def _run(self, prompts: list[str]) -> None:
        i = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                body = {"model": "tiny", "prompt": prompts[i % len(prompts)], "max_tokens": 6}
                i += 1
                try:
                    r = client.post(self.url, json=body)
                    with self._lock:
                        if r.status_code == 200:
                            self.ok += 1
                            model = r.json()["model"]
                            self.models[model] = self.models.get(model, 0) + 1
                        else:
                            self.failures.append(f"{r.status_code}: {r.text[:120]}")
                    if r.status_code == 200:
                        self.rate(client, r.json())
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))

    def rate(self, client: httpx.Client, answer: dict) -> None:
        """Clients who say nothing about the answers."""


class RatingTraffic(Traffic):
    """Clients who like the champion's answers and dislike the challenger's."""

    def rate(self, client: httpx.Client, answer: dict) -> None:
        rating = 0.0 if answer["model"] == "tiny:v2" else 1.0
        url = self.url.replace("/v1/completions", "/v1/feedback")
        r = client.post(url, json={"id": answer["id"], "rating": rating})
        if r.status_code != 200:
            with self._lock:
                self.failures.append(f"feedback {r.status_code}: {r.text[:120]}")


def _start(tmp_path: Path, rollout: str, extra: list[str] | None = None, **env: str) -> tuple:
    state = tmp_path / "state"
    pol = policy_file(tmp_path, **{"gates:": rollout + "gates:"})
    url = f"sqlite:///{state / 'aifactory.db'}"
    args = ["--policy", str(pol), "--state-dir", str(state), "--port", "0", "--tick-s", "0.3"]
    return state, pol, url, args + (extra or [])


def _first_champion(book: CycleBook, log: Path) -> str:
    st = wait_for(
        lambda: (s := book.daemon_state("tiny")) and s.served_version == 1 and s,
        120,
        "first champion served",
        log,
    )
    return f"{st.serving_url}/v1/completions"


def test_healthy_canary_is_promoted_without_a_failed_request(tmp_path: Path) -> None:
    state, _pol, url, args = _start(tmp_path, ROLLOUT.format(interval=4, min_requests=8))
    log = tmp_path / "daemon.log"
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        book, rollouts = CycleBook(store), RolloutBook(store)
        with Traffic(_first_champion(book, log), workers=3) as traffic:
            wait_for(lambda: rollouts.recent("tiny"), 180, "the canary to start", log)
            row = wait_for(
                lambda: (r := rollouts.recent("tiny")[0]).status != "running" and r,
                60,
                "the canary to end",
                log,
            )
            time.sleep(1.0)
        assert row.status == "promoted", row.reason
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.models.get("tiny:v2", 0) > 8 and traffic.models.get("tiny:v1", 0) > 8
        registry = ModelRegistry(store, state / "models")
        assert registry.alias("tiny", "champion") == 2
        assert "challenger" not in registry.aliases("tiny")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    steps = [e for e in AuditLog(store).events(agent="deployer") if e.action == "canary_step"]
    assert [e.outcome for e in steps] == ["taken", "taken"]
    first = steps[0].figures
    assert first["weight_pct"] == 50 and first["challenger_requests"] >= 8
    assert first["challenger_failures"] == 0 and first["loss_samples"] >= 4
    assert first["online_loss_change_pct"] < 5 and first["champion_p99_ms"] > 0
    assert steps[1].figures["champion_reference"] == "rollout so far"
    moves = [(m.alias, m.to_version) for m in ModelRegistry(store, state).alias_history("tiny")]
    assert ("challenger", 2) in moves and ("challenger", None) in moves
    bless = [e for e in AuditLog(store).events(agent="evaluator") if e.action == "bless"][-1]
    assert bless.figures["candidate_latency_ms_per_token"] > 0
    assert bless.figures["champion_tokens_per_joule"] > 0
    assert bless.figures["serving_energy_method"] == "estimated"
    assert AuditLog(store).verify().ok
    store.dispose()


def test_candidate_failing_under_live_traffic_is_rolled_back(tmp_path: Path) -> None:
    faulty = tmp_path / "faulty.txt"
    rollout = ROLLOUT.format(interval=6, min_requests=8)
    state, pol, url, args = _start(tmp_path, rollout)
    text = pol.read_text().replace(
        "name: tiny", "name: tiny\nworkload: canary_workloads:BreaksUnderConcurrency"
    )
    pol.write_text(text)
    env = {"AIFACTORY_TEST_FAULTY_LIST": str(faulty), "PYTHONPATH": str(Path(__file__).parent)}
    log = tmp_path / "daemon.log"
    with daemon(*args, log=log, env=env) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        book, rollouts = CycleBook(store), RolloutBook(store)
        with Traffic(_first_champion(book, log), workers=4) as traffic:
            row = wait_for(
                lambda: (r := rollouts.recent("tiny")) and r[0].status != "running" and r[0],
                240,
                "the canary to end",
                log,
            )
            time.sleep(1.0)  # serving follows the rollback within a tick
            before = len(traffic.failures)
            traffic.reset()
            time.sleep(2.0)
        assert row.status == "rolled_back", row.reason
        assert before > 0  # the canary's share failed while it was live
        assert traffic.failures == [] and set(traffic.models) == {"tiny:v1"}, traffic.models
        registry = ModelRegistry(store, state / "models")
        assert registry.alias("tiny", "champion") == 1
        assert registry.get("tiny", 2).status == "rolled_back"  # type: ignore[union-attr]
        evaluated = [e for e in AuditLog(store).events(agent="evaluator") if e.action == "bless"]
        assert evaluated[-1].outcome == "taken"  # the offline gates saw nothing wrong
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    events = AuditLog(store).events(agent="deployer")
    step = next(e for e in events if e.action == "canary_step")
    assert step.outcome == "refused" and "error rate" in step.reason
    assert step.figures["challenger_failures"] > 0 and step.figures["challenger_error_rate_pct"] > 1
    rollback = next(e for e in events if e.action == "rollback")
    assert "v2 rolled back" in rollback.reason and rollback.figures["challenger_failures"] > 0
    store.dispose()


def test_a_challenger_clients_rate_worse_is_rolled_back(tmp_path: Path) -> None:
    """Healthy by every other measure (no errors, fine latency and online loss), but the
    clients' ratings of its answers are poor: the canary rolls it back, figures audited."""
    rollout = ROLLOUT.format(interval=4, min_requests=8) + "  min_feedback: 5\n"
    state, _pol, url, args = _start(tmp_path, rollout)
    log = tmp_path / "daemon.log"
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        book, rollouts = CycleBook(store), RolloutBook(store)
        with RatingTraffic(_first_champion(book, log), workers=3) as traffic:
            row = wait_for(
                lambda: (r := rollouts.recent("tiny")) and r[0].status != "running" and r[0],
                240,
                "the canary to end",
                log,
            )
        assert row.status == "rolled_back", row.reason
        assert traffic.failures == [], traffic.failures[:5]
        assert ModelRegistry(store, state / "models").alias("tiny", "champion") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    events = AuditLog(store).events(agent="deployer")
    step = next(e for e in events if e.action == "canary_step")
    assert step.outcome == "refused" and "clients rate it worse" in step.reason, step.reason
    assert step.figures["challenger_rating"] == 0.0 and step.figures["champion_rating"] == 1.0
    assert step.figures["challenger_failures"] == 0
    rollback = next(e for e in events if e.action == "rollback")
    assert rollback.figures["challenger_ratings"] >= 5
    kept = FeedbackLog(store).summary("tiny")
    assert {v.version for v in kept} == {1, 2} and AuditLog(store).verify().ok
    store.dispose()


def test_the_demos_own_traffic_gives_its_canary_real_requests(tmp_path: Path) -> None:
    """No client of the test's own: the policy's demo traffic asks about era 1's topics
    while v1 serves, so the canary of v2 judges real requests; from v2 on it asks about
    the documentation's prose."""
    demo = "demo:\n  traffic:\n    rate_per_s: 12\n    by_champion: [[concurrent], [pydoc_data]]\n"
    state, pol, url, args = _start(tmp_path, ROLLOUT.format(interval=3, min_requests=8))
    pol.write_text(pol.read_text() + demo)
    log = tmp_path / "daemon.log"
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        rollouts = RolloutBook(store)
        row = wait_for(
            lambda: (r := rollouts.recent("tiny")) and r[0].status != "running" and r[0],
            240,
            "the canary to end",
            log,
        )
        wait_for(lambda: "asks about pydoc_data while v2 serves" in log.read_text(), 30, "", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert row.status == "promoted", row.reason
    text = log.read_text()
    assert "[demo] demo traffic asks about concurrent while v1 serves" in text
    steps = [e for e in AuditLog(store).events(agent="deployer") if e.action == "canary_step"]
    assert steps and all(e.figures["challenger_requests"] >= 8 for e in steps), steps
    assert not any(" 0 challenger requests" in e.reason for e in steps)
    store.dispose()


def test_paused_canary_survives_restart_and_continues_when_told(tmp_path: Path) -> None:
    # nobody sends traffic: the only step is inconclusive and the rollout waits for a person
    rollout = ROLLOUT.format(interval=1, min_requests=5).replace("[50, 100]", "[100]")
    state, pol, url, args = _start(tmp_path, rollout)
    log = tmp_path / "first.log"
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        rollouts = RolloutBook(store)
        paused = wait_for(
            lambda: (r := rollouts.active("tiny")) and r.status == "paused" and r,
            240,
            "a paused canary",
            log,
        )
        assert "inconclusive" in paused.reason and paused.weight_pct == 100
        status = cli("status", "--db", url, "--policy", str(pol))
        assert "canary:      v2 at 100% (step 1/1), paused" in status.stdout, status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    book = CycleBook(store)
    assert book.get(paused.cycle_id).status == "awaiting_approval"  # type: ignore[union-attr]
    log2 = tmp_path / "second.log"
    with daemon(*args, log=log2) as proc2:
        wait_for(
            lambda: (s := book.daemon_state("tiny")) and s.pid == proc2.pid, 60, "restart", log2
        )
        refused = cli("rollout", "continue", "--db", url, "--policy", str(pol))
        assert refused.returncode == 2 and "--reason" in refused.stdout
        ok = cli(
            "rollout",
            "continue",
            "--by",
            "alice",
            "--reason",
            "quiet night",
            "--db",
            url,
            "--policy",
            str(pol),
        )
        assert ok.returncode == 0, ok.stdout
        registry = ModelRegistry(store, state / "models")
        wait_for(lambda: registry.alias("tiny", "champion") == 2, 60, "promotion", log2)
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(30) == 0
    assert rollouts.recent("tiny")[0].status == "promoted"
    events = AuditLog(store).events(agent="deployer")
    assert any(e.action == "canary_continue" and "alice" in e.reason for e in events)
    shown = cli("rollout", "--db", url, "--policy", str(pol))
    assert "promoted" in shown.stdout
    store.dispose()


def test_candidate_trained_on_corrupted_data_is_refused_by_the_gates(tmp_path: Path) -> None:
    """Era 2 of an operator's folder is garbage (random printable characters): the data
    agent retrains on it, and the gates refuse the candidate with the figures."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = tmp_path / "data"
    data.mkdir()
    for src in sorted((stdlib / "json").glob("*.py"))[:5]:
        (data / f"good_{src.name}").write_text(src.read_text())
    pol = policy_file(
        tmp_path,
        **{
            "kind: stdlib_eras": f"kind: directory\n    path: {data}",
            "    eras:\n      - [json]\n      - [concurrent]\n    max_files_per_era: 6\n": "",
            "  max_bpb: 7.0": "  max_bpb: 4.5",
            "max_reference_regression_pct: 50.0": "max_reference_regression_pct: 5.0",
        },
    )
    pol.write_text(pol.read_text().replace("data:\n", "data:\n  settle_s: 0\n", 1))
    store = run_once(tmp_path, pol)
    registry = ModelRegistry(store, tmp_path / "state" / "models")
    assert registry.alias("tiny", "champion") == 1
    rng = random.Random(0)
    alphabet = string.printable
    for i in range(3):
        (data / f"corrupt_{i}.py").write_text("".join(rng.choice(alphabet) for _ in range(30000)))
    store = run_once(tmp_path, pol)
    assert registry.alias("tiny", "champion") == 1
    assert registry.get("tiny", 2).status == "refused"  # type: ignore[union-attr]
    verdict = [e for e in AuditLog(store).events(agent="evaluator") if e.action == "bless"][-1]
    assert verdict.outcome == "refused"
    f = verdict.figures
    assert f["candidate_recent_bpb"] > 4.5 and f["reference_regression_pct"] > 5.0
    assert "> ceiling 4.5000" in verdict.reason and "reference data regresses" in verdict.reason
    store.dispose()


def test_kill9_mid_canary_step_resumes_the_rollout_once(tmp_path: Path) -> None:
    rollout = ROLLOUT.format(interval=4, min_requests=5) + "  on_inconclusive: proceed\n"
    state, _pol, url, args = _start(tmp_path, rollout)
    log = tmp_path / "first.log"
    with daemon(*args, log=log) as proc:
        store = wait_for(lambda: (state / "trials").exists() and open_store(url), 60, "db", log)
        rollouts = RolloutBook(store)
        wait_for(
            lambda: (r := rollouts.active("tiny")) and r.weight_pct == 50 and r,
            240,
            "the first canary step",
            log,
        )
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log2 = tmp_path / "second.log"
    registry = ModelRegistry(store, state / "models")
    with daemon(*args, log=log2) as proc2:
        wait_for(lambda: registry.alias("tiny", "champion") == 2, 120, "promotion", log2)
        wait_for(lambda: rollouts.recent("tiny")[0].status == "promoted", 10, "final row", log2)
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(30) == 0
    assert "resuming cycle tiny-c0002" in log2.read_text()
    assert "challenger" not in registry.aliases("tiny")
    events = AuditLog(store).events(cycle_id="tiny-c0002")
    actions = [e.action for e in events if e.agent == "deployer"]
    assert actions.count("canary_start") == 1 and actions.count("promote") == 1
    assert actions.count("canary_step") == 2  # the killed step was judged once, after resuming
    assert AuditLog(store).verify().ok
    store.dispose()
