"""When does retraining pay: the learned rule against retraining at every threshold crossing.

    python -m bench.retrain_value [--min-gain-pct 1.5] [--out FILE]

Ten eras of real text (the standard library: Python sources near the first era's, and far
ones: documentation prose, character-map tables), each arriving as new files in a directory
the line watches; after each, the real daemon runs one cycle (`aifactory run --once`) and
the champion is scored on that era's held-out tail. Run twice in the same benchmark, each
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
import shutil
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
budgets: {{tokens_per_trial: 60000}}
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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


class Arm:
    """One run of all eras from an empty state, with or without the value rule."""

    def __init__(self, work: Path, name: str, value: str) -> None:
        self.state, self.folder = work / name / "state", work / name / "data"
        self.folder.mkdir(parents=True)
        self.policy = work / name / "policy.yaml"
        self.policy.write_text(POLICY.format(folder=self.folder, value=value))
        self.url = f"sqlite:///{self.state / 'aifactory.db'}"
        self.eras: list[dict[str, Any]] = []

    def set_value(self, value: str) -> None:
        self.policy.write_text(POLICY.format(folder=self.folder, value=value))

    def era(self, k: int, name: str, kind: str, holdout: Path) -> dict[str, Any]:
        train, _ = split(era_text(name))
        (self.folder / f"era{k:02d}.txt").write_text(train)
        started = time.monotonic()
        run = _cli(
            "run",
            "--once",
            "--no-serve",
            "--policy",
            str(self.policy),
            "--state-dir",
            str(self.state),
        )
        if run.returncode != 0:
            raise RuntimeError(f"era {k} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        row = {
            "era": k,
            "name": name,
            "kind": kind,
            "seconds": round(time.monotonic() - started, 1),
        }
        row |= self._what_happened(k, holdout)
        self.eras.append(row)
        return row

    def _what_happened(self, k: int, holdout: Path) -> dict[str, Any]:
        from adapters.store.audit import AuditLog
        from adapters.store.db import Store
        from adapters.store.registry import CHAMPION, ModelRegistry
        from adapters.workload.bytelm import ByteLMWorkload

        store = Store(self.url)
        try:
            events = AuditLog(store).events(cycle_id=f"rv-c{k + 1:04d}")
            registry = ModelRegistry(store, self.state / "models")
            champion = registry.get("rv", registry.alias("rv", CHAMPION) or 0)
            bpb = ByteLMWorkload().evaluate(registry.verified_path(champion), [str(holdout)]).bpb
        finally:
            store.dispose()
        by = {(e.agent, e.action): e for e in events}
        value, outcome = by.get(("data", "retrain_value")), by.get(("data", "retrain_outcome"))
        drift = by.get(("data", "retrain"))
        return {
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

    def energy(self) -> tuple[float, str]:
        from adapters.store.db import Store
        from adapters.store.ledger import Ledger

        store = Store(self.url)
        try:
            totals = Ledger(store).totals("rv")
        finally:
            store.dispose()
        method = (
            "measured" if totals.measured_joules and not totals.estimated_joules else "estimated"
        )
        return totals.joules, method


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
    try:
        holdouts = []
        for k, (name, _) in enumerate(ERAS):
            path = work / f"holdout{k:02d}.txt"
            path.write_text(split(era_text(name))[1])
            holdouts.append(path)
        every = Arm(work, "every", _value(None))
        learned = Arm(work, "learned", _value(None))
        threshold = None
        for k, (name, kind) in enumerate(ERAS):
            a = every.era(k, name, kind, holdouts[k])
            b = learned.era(k, name, kind, holdouts[k])
            if threshold is None and b["retrained"] and k > 0:  # the first retraining's energy
                from adapters.store.db import Store
                from adapters.store.ledger import Ledger

                store = Store(learned.url)
                kwh = Ledger(store).totals("rv", cycle_id=f"rv-c{k + 1:04d}").joules / 3.6e6
                store.dispose()
                threshold = args.min_gain_pct / kwh
                learned.set_value(_value(threshold))
            print(
                f"era {k} {name:16s} every: retrained={a['retrained']} bpb={a['champion_bpb']}"
                f" | learned: retrained={b['retrained']} rule={b['value_rule']} "
                f"bpb={b['champion_bpb']}",
                file=sys.stderr,
            )
        emit(_result(every, learned, threshold, args.min_gain_pct), args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _result(every: Arm, learned: Arm, threshold: float | None, min_gain: float) -> dict[str, Any]:
    (ja, method), (jb, _) = every.energy(), learned.energy()
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
            "retrainings": sum(e["retrained"] for e in every.eras),
            "mean_champion_bpb": round(bpb_a, 4),
        },
        "learned_rule": {
            "joules": round(jb, 1),
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
