"""When does retraining pay: the learned rule against retraining at every threshold crossing.

    python -m bench.retrain_value [--min-gain-pct 1.5] [--out FILE]

Ten eras of real text (the standard library: Python sources near the first era's, and far
ones: documentation prose, character-map tables), each arriving as a new file in a
directory the line watches; the real daemon (one per arm, running throughout) notices it
and runs a cycle, and once that cycle is over the champion is scored on that era's
held-out tail. Run twice in the same benchmark, each
from an empty state: (a) the drift thresholds alone (every era crosses them: retrain each
time), (b) the learned rule (`triggers.value`, three retrainings of history first). The
threshold is given as the least gain worth one typical retraining's energy: the bench turns
`--min-gain-pct` into %/kWh with arm (b)'s first retraining's energy, before any deferral.

Reported: energy of each arm (every ledger row: training, evaluations, drift scoring;
estimated joules on a CPU host, labelled), the mean champion bits/byte over the eras'
held-out tails, the ratios (goal: at least 30% less energy for at most 1% worse bits/byte),
and per era what each arm did, with the rule's predictions beside the actual gains.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
ERA_BYTES = 48_000
HOLDOUT = 0.1

POLICY = """name: rv
data:
  source: {{kind: directory, path: {folder}, glob: "*.txt"}}
  settle_s: 0
  eval_max_bytes: 12000
budgets: {{tokens_per_trial: 400000}}
tuning:
  trials_per_cycle: 2
  seed: 0
  search_space: {{lr: {{type: float, low: 0.003, high: 0.01, log: true}}}}
  fixed: {{d_model: 32, n_layers: 1, n_heads: 2, context: 32, batch_size: 16, warmup_steps: 5}}
triggers:
  schedule: {{every_s: 86400}}
  drift: {{js_divergence: 0.0005, loss_increase_pct: 0.5}}
  live: {{enabled: false}}
{value}
gates: {{max_bpb: 8.0, min_improvement_pct: 0.0, max_reference_regression_pct: 50.0}}
"""

#: (name, how it relates to what came before)
ERAS: list[tuple[str, str]] = [
    ("json", "base"),
    ("tomllib", "near"),
    ("prose:0", "far"),
    ("zoneinfo", "near"),
    ("encodings:cp", "far"),
    ("wsgiref", "near"),
    ("prose:1", "far"),
    ("sqlite3+ctypes", "near"),
    ("encodings:mac", "far"),
    ("concurrent", "near"),
]


def era_text(name: str) -> str:
    """About ERA_BYTES of real text for an era."""
    if name.startswith("prose:"):
        part = int(name.split(":")[1])
        text = (STDLIB / "pydoc_data" / "topics.py").read_text()
        start = 40_000 + part * 200_000
        return text[start : start + ERA_BYTES]
    if name.startswith("encodings:"):
        prefix = name.split(":")[1]
        files = sorted((STDLIB / "encodings").glob(f"{prefix}*.py"))
    else:
        files = []
        for pkg in name.split("+"):
            files += sorted(p for p in (STDLIB / pkg).rglob("*.py") if "test" not in p.parts)
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)[:ERA_BYTES]


def split(text: str) -> tuple[str, str]:
    cut = int(len(text) * (1 - HOLDOUT))
    return text[:cut], text[cut:]


class Arm:
    """All eras, from an empty state, through one daemon that runs throughout."""

    def __init__(self, work: Path, name: str, value: str) -> None:
        self.state, self.folder = work / name / "state", work / name / "data"
        self.folder.mkdir(parents=True)
        self.policy = work / name / "policy.yaml"
        self.policy.write_text(POLICY.format(folder=self.folder, value=value))
        self.url = f"sqlite:///{self.state / 'aifactory.db'}"
        self.log = work / name / "daemon.log"
        self.eras: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            "--no-serve",
            "--no-console",
            "--tick-s",
            "0.5",
        ]
        cmd += ["--policy", str(self.policy), "--state-dir", str(self.state)]
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)

    def set_value(self, value: str) -> None:
        """A policy edit: the running daemon adopts it at its next tick (audited)."""
        self.policy.write_text(POLICY.format(folder=self.folder, value=value))
        time.sleep(2.0)

    def _settled_with(self, sha: str) -> bool:
        """The file was ingested by a cycle, and no cycle is running or waiting."""
        from adapters.store.cycles import CycleBook
        from adapters.store.datasets import DataCatalog
        from adapters.store.db import Store

        if not (self.state / "aifactory.db").exists():
            return False
        store = Store(self.url)
        try:
            known = sha in DataCatalog(store).known_hashes("rv")
            return known and CycleBook(store).unfinished("rv") is None
        finally:
            store.dispose()

    def era(self, k: int, name: str, kind: str, holdout: Path) -> dict[str, Any]:
        train, _ = split(era_text(name))
        (self.folder / f"era{k:02d}.txt").write_text(train)
        sha = hashlib.sha256(train.encode("utf-8")).hexdigest()
        started = time.monotonic()
        time.sleep(1.0)  # the watch's next tick
        while not self._settled_with(sha):
            alive = self.proc is not None and self.proc.poll() is None
            if not alive or time.monotonic() - started > 900:
                raise RuntimeError(f"era {k}: no cycle ended\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        row = {
            "era": k,
            "name": name,
            "kind": kind,
            "seconds": round(time.monotonic() - started, 1),
        }
        row |= self._what_happened(self._cycle_of(sha), holdout)
        self.eras.append(row)
        return row

    def _cycle_of(self, sha: str) -> str:
        """The cycle that took the era's file into a dataset."""
        from adapters.store.datasets import DataCatalog
        from adapters.store.db import Store

        store = Store(self.url)
        try:
            catalog = DataCatalog(store)
            row = catalog.file("rv", sha)
            dataset = catalog.get(row.dataset_version or "") if row else None
            return dataset.cycle_id if dataset and dataset.cycle_id else ""
        finally:
            store.dispose()

    def _what_happened(self, cid: str, holdout: Path) -> dict[str, Any]:
        from adapters.store.audit import AuditLog
        from adapters.store.db import Store
        from adapters.store.registry import CHAMPION, ModelRegistry
        from adapters.workload.bytelm import ByteLMWorkload

        store = Store(self.url)
        try:
            events = AuditLog(store).events(cycle_id=cid)
            registry = ModelRegistry(store, self.state / "models")
            champion = registry.get("rv", registry.alias("rv", CHAMPION) or 0)
            bpb = ByteLMWorkload().evaluate(registry.verified_path(champion), [str(holdout)]).bpb
        finally:
            store.dispose()
        by = {(e.agent, e.action): e for e in events}
        value, outcome = by.get(("data", "retrain_value")), by.get(("data", "retrain_outcome"))
        drift = by.get(("data", "retrain"))
        return {
            "cycle": cid,
            "js_divergence": drift.figures.get("js_divergence") if drift else None,
            "loss_increase_pct": drift.figures.get("loss_increase_pct") if drift else None,
            "retrained": any(e.agent == "trainer" for e in events),
            "champion": champion.version if champion else None,
            "champion_bpb": round(bpb, 4),
            "value_rule": value.outcome if value else None,
            "predicted_gain_pct_per_kwh": value.figures.get("predicted_gain_pct_per_kwh")
            if value
            else None,
            "actual_gain_pct": outcome.figures.get("gain_pct") if outcome else None,
            "actual_gain_pct_per_kwh": outcome.figures.get("gain_pct_per_kwh") if outcome else None,
        }

    def energy(self) -> tuple[float, str, dict[str, float]]:
        """Every ledger row's joules, the method, and joules per kind (train, eval, ...)."""
        from adapters.store.db import Store
        from adapters.store.ledger import Ledger

        store = Store(self.url)
        try:
            rows = Ledger(store).rows("rv")
        finally:
            store.dispose()
        by_kind: dict[str, float] = {}
        for r in rows:
            by_kind[r.kind] = round(by_kind.get(r.kind, 0.0) + r.joules, 1)
        measured = all(r.method == "measured" for r in rows if r.joules)
        return sum(r.joules for r in rows), "measured" if measured else "estimated", by_kind


def _value(threshold: float | None) -> str:
    if threshold is None:
        return "  value: {min_history: 3, max_staleness_h: 10000}"
    rule = f"min_history: 3, max_staleness_h: 10000, min_gain_pct_per_kwh: {threshold:.3f}"
    return f"  value: {{{rule}}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-gain-pct", type=float, default=1.5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aifactory-rv-"))
    arms: tuple[Arm, ...] = ()
    try:
        holdouts = []
        for k, (name, _) in enumerate(ERAS):
            path = work / f"holdout{k:02d}.txt"
            path.write_text(split(era_text(name))[1])
            holdouts.append(path)
        every = Arm(work, "every", _value(None))
        learned = Arm(work, "learned", _value(None))
        arms = (every, learned)
        for arm in arms:
            arm.start()
        threshold = None
        for k, (name, kind) in enumerate(ERAS):
            a = every.era(k, name, kind, holdouts[k])
            b = learned.era(k, name, kind, holdouts[k])
            if threshold is None and b["retrained"] and k > 0:  # the first retraining's energy
                from adapters.store.db import Store
                from adapters.store.ledger import Ledger

                store = Store(learned.url)
                kwh = Ledger(store).totals("rv", cycle_id=b["cycle"]).joules / 3.6e6
                store.dispose()
                threshold = args.min_gain_pct / kwh
                learned.set_value(_value(threshold))
            print(
                f"era {k} {name:16s} every: retrained={a['retrained']} bpb={a['champion_bpb']}"
                f" | learned: retrained={b['retrained']} rule={b['value_rule']} "
                f"bpb={b['champion_bpb']}",
                file=sys.stderr,
            )
        for arm in arms:
            arm.stop()
        emit(_result(every, learned, threshold, args.min_gain_pct), args.out)
    finally:
        for arm in arms:
            with contextlib.suppress(Exception):
                if arm.proc is not None and arm.proc.poll() is None:
                    arm.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _result(every: Arm, learned: Arm, threshold: float | None, min_gain: float) -> dict[str, Any]:
    (ja, method, kinds_a), (jb, _, kinds_b) = every.energy(), learned.energy()
    # the base era trains the first model in both arms alike: judged from era 1 on
    bpb_a = statistics.mean(e["champion_bpb"] for e in every.eras[1:])
    bpb_b = statistics.mean(e["champion_bpb"] for e in learned.eras[1:])
    return {
        "benchmark": "retrain_value",
        "command": "python -m bench.retrain_value",
        "energy_method": method,
        "eras": len(ERAS),
        "threshold_gain_pct_per_kwh": round(threshold, 1) if threshold else None,
        "min_gain_pct_per_typical_retraining": min_gain,
        "every_crossing": {
            "joules": round(ja, 1),
            "joules_by_kind": kinds_a,
            "retrainings": sum(e["retrained"] for e in every.eras),
            "mean_champion_bpb": round(bpb_a, 4),
        },
        "learned_rule": {
            "joules": round(jb, 1),
            "joules_by_kind": kinds_b,
            "retrainings": sum(e["retrained"] for e in learned.eras),
            "mean_champion_bpb": round(bpb_b, 4),
        },
        "energy_saved_pct": round(100 * (1 - jb / ja), 1),
        "bpb_worse_pct": round(100 * (bpb_b / bpb_a - 1), 2),
        "goal": "energy_saved_pct >= 30 and bpb_worse_pct <= 1",
        "goal_met": (1 - jb / ja) >= 0.30 and (bpb_b / bpb_a - 1) <= 0.01,
        "per_era": {"every_crossing": every.eras, "learned_rule": learned.eras},
    }


if __name__ == "__main__":
    main()
