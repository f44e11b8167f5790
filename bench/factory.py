"""Three lines under one factory: shared energy budget and wall time, through the real daemon.

    python -m bench.factory [--kwh 5.6e-05] [--trials 6] [--repeats 3] [--out FILE]

Each part runs `--repeats` times; the budget part reports its median run (and every run's
share used and overrun), the wall-time part the median times.

(1) Shared budget. Three tiny lines whose demand (trials x expected joules) exceeds the
factory's daily energy limit run one cycle each in one factory (`slots: 2`). From the
ledger and the audit log: each line's spend against its entitlement and its guarantee,
the share of the limit used (goal: at least 95% while demand exceeds it) and the overrun
(goal: none beyond one reporting interval, the worker's one-second energy check).

(2) Wall time. The same three lines without a shared limit (two trials each): in one
factory against the same three run one after another (`--policy`, one line each), the
same work, in the same run; the ratio is sequential over factory.

Energy here is *estimated* (CPU seconds x W/core, no GPU) and labelled so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
LINES = {  # name: (eras, priority, guarantee_pct, owner)
    "a": ([["json"], ["concurrent"]], 10, 40, "team-a"),
    "b": ([["email"], ["asyncio"]], 5, 20, "team-b"),
    "c": ([["http"], ["urllib"]], 5, 0, "team-c"),
}
WATTS_PER_CORE = 15.0


def line_yaml(name: str, eras: list[list[str]], trials: int) -> str:
    era_text = "\n".join(f"      - [{', '.join(e)}]" for e in eras)
    return f"""name: {name}
data:
  source:
    kind: stdlib_eras
    eras:
{era_text}
    max_files_per_era: 4
  eval_max_bytes: 8000
budgets:
  tokens_per_trial: 40000
tuning:
  trials_per_cycle: {trials}
  search_space:
    lr: {{type: float, low: 0.003, high: 0.01, log: true}}
  fixed: {{d_model: 32, n_layers: 1, n_heads: 2, context: 32, batch_size: 16, warmup_steps: 5}}
gates: {{max_bpb: 8.0, min_improvement_pct: 0.0, max_reference_regression_pct: 50.0}}
energy: {{watts_per_core: {WATTS_PER_CORE}}}
"""


def factory_yaml(kwh: float | None) -> str:
    limit = f"  energy_kwh_per_day: {kwh}\n" if kwh else ""
    lines = "\n".join(
        f"  - {{policy: {n}.yaml, priority: {p}, guarantee_pct: {g}, owner: {o}}}"
        for n, (_, p, g, o) in LINES.items()
    )
    return f"name: bench-factory\nlimits:\n{limit}  slots: 2\nlines:\n{lines}\n"


def run(args: list[str], state: Path) -> float:
    """One daemon run to its end; returns its wall time."""
    cmd = [
        sys.executable,
        "-m",
        "controller.cli",
        "run",
        *args,
        "--cycles",
        "1",
        "--no-serve",
        "--no-console",
    ]
    cmd += ["--threads", "1", "--tick-s", "0.5", "--state-dir", str(state)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"daemon failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return time.perf_counter() - started


def _store(state: Path) -> Any:
    from adapters.store.db import Store

    return Store(f"sqlite:///{state / 'aifactory.db'}")


def shared_budget(work: Path, kwh: float, trials: int) -> dict[str, Any]:
    from adapters.store.audit import AuditLog
    from adapters.store.ledger import Ledger

    for name, (eras, *_rest) in LINES.items():
        (work / f"{name}.yaml").write_text(line_yaml(name, eras, trials))
    (work / "factory.yaml").write_text(factory_yaml(kwh))
    state = work / "state-shared"
    wall = run(["--factory", str(work / "factory.yaml")], state)
    store = _store(state)
    ledger, audit = Ledger(store), AuditLog(store)
    limit_j = kwh * 3.6e6
    lines: dict[str, Any] = {}
    for name in LINES:
        totals = ledger.totals(name)
        alloc = [e for e in audit.events(agent="energy", line=name) if e.action == "allocate"]
        figures = alloc[0].figures if alloc else {}
        lines[name] = {
            "joules": round(totals.joules, 1),
            "trials": sum(
                1
                for e in audit.events(agent="trainer", line=name)
                if e.action in ("run_trial", "prune_trial") and e.outcome != "refused"
            ),
            "entitlement_j": figures.get("joules_entitlement"),
            "spent_over_entitlement": round(totals.joules / figures["joules_entitlement"], 2)
            if figures.get("joules_entitlement")
            else None,
            "guarantee_pct": LINES[name][2],
            "allocation": alloc[0].reason if alloc else "",
        }
    store.dispose()
    spent = sum(v["joules"] for v in lines.values())
    demand = trials * len(LINES)
    interval_j = WATTS_PER_CORE * 1.0 * 1.0  # one core (threads 1) for one 1 s check
    return {
        "limit_j": limit_j,
        "spent_j": round(spent, 1),
        "used_pct": round(100.0 * spent / limit_j, 1),
        "overrun_j": round(max(0.0, spent - limit_j), 1),
        "overrun_intervals": round(max(0.0, spent - limit_j) / interval_j, 2),
        "demand_trials": demand,
        "lines": lines,
        "wall_s": round(wall, 1),
        "energy": "estimated",
    }


def wall_time(work: Path) -> dict[str, float]:
    for name, (eras, *_rest) in LINES.items():
        (work / f"{name}.yaml").write_text(line_yaml(name, eras, 2))
    (work / "factory.yaml").write_text(factory_yaml(None))
    factory_s = run(["--factory", str(work / "factory.yaml")], work / "state-factory")
    sequential_s = sum(
        run(["--policy", str(work / f"{name}.yaml")], work / f"state-{name}") for name in LINES
    )
    return {"factory_s": factory_s, "sequential_s": sequential_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kwh", type=float, default=5.6e-05, help="the factory's daily limit")
    parser.add_argument("--trials", type=int, default=6, help="trials each line wants")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each part (median)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        budgets = []
        for i in range(args.repeats):
            (Path(tmp) / f"budget{i}").mkdir()
            budgets.append(shared_budget(Path(tmp) / f"budget{i}", args.kwh, args.trials))
        budget = sorted(budgets, key=lambda b: b["used_pct"])[len(budgets) // 2]  # median run
        budget |= {
            "used_pct_runs": [b["used_pct"] for b in budgets],
            "overrun_j_runs": [b["overrun_j"] for b in budgets],
        }
        walls = []
        for i in range(args.repeats):
            work = Path(tmp) / f"wall{i}"
            work.mkdir()
            walls.append(wall_time(work))
    factory_s = statistics.median(w["factory_s"] for w in walls)
    sequential_s = statistics.median(w["sequential_s"] for w in walls)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": time.strftime("%Y-%m-%d"),
        "shared_budget": budget,
        "wall_time": {
            "runs": walls,
            "factory_s_median": round(factory_s, 1),
            "sequential_s_median": round(sequential_s, 1),
            "sequential_over_factory": round(sequential_s / factory_s, 2),
        },
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
