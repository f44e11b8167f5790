"""The same trials with 1 and 2 at once on the local cluster, and 2 at once on a two-node
loopback Ray cluster, through the real daemon, in one run.

    python -m bench.scale_out [--trials 6] [--tokens 1500000] [--repeats 3] [--out FILE]

For each arm: wall time of the trial phase (first trial's start to last trial's end) and of
the whole daemon run, trials per hour, the study's best bits/byte, and the fixed cost per
trial beyond its training: seconds (a trial's wall time less its training time) and joules
(the CPU of the daemon, its workers and Ray drivers, the Ray actors' start-up and the Ray
nodes' own processes, less the trials' metered training windows). Single-threaded trials
(`--threads 1`, one CPU per Ray actor), so on two cores 2 at once can approach 2x trials per
hour. Energy is *estimated* on this machine (CPU seconds x W/core) and labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
WATTS_PER_CORE = 15.0


def policy_yaml(trials: int, tokens: int, parallel: int, cluster: str) -> str:
    return f"""name: scale
data:
  source: {{kind: stdlib_eras, eras: [[json, email]], max_files_per_era: 8}}
  eval_max_bytes: 8000
budgets:
  tokens_per_trial: {tokens}
tuning:
  trials_per_cycle: {trials}
  parallel_trials: {parallel}
  search_space:
    lr: {{type: float, low: 0.002, high: 0.02, log: true}}
  fixed: {{d_model: 32, n_layers: 1, n_heads: 2, context: 32, batch_size: 16, warmup_steps: 5}}
gates: {{max_bpb: 8.0, min_improvement_pct: 0.0, max_reference_regression_pct: 50.0}}
energy: {{watts_per_core: {WATTS_PER_CORE}}}
{cluster}"""


def _cpu_children_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_of(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def run_arm(work: Path, policy: str, ray_nodes: list[Any]) -> dict[str, Any]:
    """One daemon run of one cycle; what its trials did and what the run cost."""
    (work / "policy.yaml").write_text(policy)
    state = work / "state"
    cmd = [sys.executable, "-m", "controller.cli", "run", "--policy", str(work / "policy.yaml")]
    cmd += [
        "--once",
        "--no-serve",
        "--no-console",
        "--threads",
        "1",
        "--tick-s",
        "1",
        "--state-dir",
        str(state),
    ]
    node_pids = [n.pid for n in ray_nodes]
    cpu0, nodes0 = _cpu_children_s(), _cpu_of(node_pids)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"daemon failed ({done.returncode}):\n{done.stdout[-3000:]}")
    tree_cpu = _cpu_children_s() - cpu0  # the daemon, its workers and drivers
    nodes_cpu = max(0.0, _cpu_of(node_pids) - nodes0)  # Ray's own processes
    return _summarise(state, wall, tree_cpu, nodes_cpu, bool(ray_nodes))


def _summarise(
    state: Path, wall: float, tree_cpu: float, nodes_cpu: float, on_ray: bool
) -> dict[str, Any]:
    from sqlmodel import select

    from adapters.store.db import Store
    from adapters.store.tables import LedgerRow, TrialRunRow

    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    with store.session() as s:
        trials = [json.loads(r.result) for r in s.exec(select(TrialRunRow)).all()]
        ledger = [r for r in s.exec(select(LedgerRow)).all() if r.kind == "train"]
    store.dispose()
    starts = [datetime.fromisoformat(t["started_at"]) for t in trials]
    ends = [datetime.fromisoformat(t["ended_at"]) for t in trials]
    phase = (max(ends) - min(starts)).total_seconds()
    per_trial = [
        (
            datetime.fromisoformat(t["ended_at"]) - datetime.fromisoformat(t["started_at"])
        ).total_seconds()
        - float(t["seconds"] or 0.0)
        for t in trials
    ]
    training_j = sum(float(t["joules"]) for t in trials)
    # everything this arm burned: locally the workers are the daemon's children (in
    # tree_cpu); on Ray the actors run under the nodes and are gone by the end, so their
    # metered windows (trials and start-ups, from the ledger) are added to the drivers'
    # CPU (tree_cpu) and the nodes' own processes (nodes_cpu)
    actors_j = sum(r.joules for r in ledger) if on_ray else 0.0
    total_j = (tree_cpu + nodes_cpu) * WATTS_PER_CORE + actors_j
    return {
        "trials": len(trials),
        "trial_phase_s": round(phase, 1),
        "daemon_wall_s": round(wall, 1),
        "trials_per_hour": round(3600.0 * len(trials) / phase, 1),
        "best_bpb": round(min(t["valid_bpb"] for t in trials if t["valid_bpb"] is not None), 4),
        "fixed_s_per_trial_median": round(statistics.median(per_trial), 2),
        "fixed_j_per_trial": round((total_j - training_j) / len(trials), 1),
        "training_j": round(training_j, 1),
        "total_j": round(total_j, 1),
        "nodes": sorted({r.node or "" for r in ledger}) if on_ray else ["local"],
        "energy": "estimated",
    }


def with_ray(fn: Any) -> Any:
    """Run ``fn(address, nodes)`` on a two-node loopback cluster, stopped afterwards."""
    from adapters.cluster.ray_nodes import LOOPBACK_STORE_BYTES, add_node, start_head

    head = start_head(None, 1, {"head_node": 1}, LOOPBACK_STORE_BYTES)
    nodes = [head]
    try:
        nodes.append(add_node(head.address, 1, {"node_1": 1}, LOOPBACK_STORE_BYTES))
        return fn(head.address, nodes)
    finally:
        for n in reversed(nodes):
            n.stop()


def one_round(tmp: Path, i: int, trials: int, tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, parallel in (("local_1", 1), ("local_2", 2)):
        work = tmp / f"{name}-{i}"
        work.mkdir()
        out[name] = run_arm(work, policy_yaml(trials, tokens, parallel, ""), [])

    def ray_arm(address: str, nodes: list[Any]) -> dict[str, Any]:
        work = tmp / f"ray_2-{i}"
        work.mkdir()
        cluster = f"cluster: {{kind: ray, address: '{address}', num_cpus: 1}}\n"
        return run_arm(work, policy_yaml(trials, tokens, 2, cluster), nodes)

    out["ray_2"] = with_ray(ray_arm)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=1_500_000, help="tokens per trial")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three arms")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rounds = [one_round(Path(tmp), i, args.trials, args.tokens) for i in range(args.repeats)]
    arms = {name: [r[name] for r in rounds] for name in rounds[0]}

    def med(name: str, key: str) -> float:
        return round(statistics.median(a[key] for a in arms[name]), 2)

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "trials": args.trials,
        "tokens_per_trial": args.tokens,
        "median": {
            name: {
                k: med(name, k)
                for k in (
                    "trial_phase_s",
                    "trials_per_hour",
                    "best_bpb",
                    "fixed_s_per_trial_median",
                    "fixed_j_per_trial",
                )
            }
            for name in arms
        },
        "ratios": {
            "local_2_over_local_1_trials_per_hour": round(
                med("local_2", "trials_per_hour") / med("local_1", "trials_per_hour"), 2
            ),
            "ray_2_over_local_1_trials_per_hour": round(
                med("ray_2", "trials_per_hour") / med("local_1", "trials_per_hour"), 2
            ),
            "ray_fixed_s_minus_local": round(
                med("ray_2", "fixed_s_per_trial_median")
                - med("local_2", "fixed_s_per_trial_median"),
                2,
            ),
            "ray_fixed_j_minus_local": round(
                med("ray_2", "fixed_j_per_trial") - med("local_2", "fixed_j_per_trial"), 1
            ),
        },
        "runs": arms,
        "energy": "estimated (CPU seconds x 15 W/core; no GPU here)",
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
