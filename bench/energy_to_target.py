"""Energy to target and warm start, measured through the real daemon.

    python -m bench.energy_to_target [--target 3.0] [--trials 5] [--out bench/results/...]

Every arm is a real `aifactory run --once` on the built-in workload (byte-level LM on the
standard library's sources) in its own state directory; the figures come from its ledger
and trial records. A trial stops early once its held-out bits/byte reach the target
(checked every `--check-every` tokens), so "energy to target" is what a search spends until
its first trial reaches the target, that trial and the trial workers' start-ups included:

  (a) default   the policy's default configuration (lr 3e-3, batch 32), one long run
  (b) random    random search over the same space, same trial budget, no pruning
  (c) controller TPE with pruning of hopeless trials, starting from the operator's baseline
                 configuration (tuning.baseline), as aifactory tunes a cold study

Warm start: trials to reach the target on new data (eras 0+1), for a cold study (no
baseline) versus the controller's study continued from (c) with the champion's parameters
enqueued first.

Energy on a machine without a GPU is an *estimate* (CPU seconds x W/core) and is labelled so;
on a GPU it is NVML's energy counter (`measured`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ERA0 = ["email", "json", "http", "urllib", "xml"]
ERA1 = ["asyncio", "concurrent", "multiprocessing"]


def policy_yaml(
    *,
    eras: list[list[str]],
    trials: int,
    sampler: str,
    space: str,
    tokens_per_trial: int,
    target: float,
    check_every: int,
    pruning: bool,
    baseline: bool = False,
    reuse_workers: bool = True,
) -> str:
    eras_yaml = "\n".join(f"      - [{', '.join(e)}]" for e in eras)
    prune = (
        "  pruning: {enabled: true, startup_trials: 1, warmup_fraction: 0.15, margin_pct: 8}\n"
        if pruning
        else ""
    )
    return f"""name: bench
data:
  source:
    kind: stdlib_eras
    eras:
{eras_yaml}
  eval_max_bytes: 60000
budgets:
  tokens_per_trial: {tokens_per_trial}
tuning:
  trials_per_cycle: {trials}
  sampler: {sampler}
  seed: 7
{prune}{"  baseline: {lr: 0.003, batch_size: 32}" + chr(10) if baseline else ""}  search_space:
{space}
  fixed: {{d_model: 128, n_layers: 2, n_heads: 4, context: 128, warmup_steps: 20,
          target_bpb: {target}, check_every_tokens: {check_every}}}
triggers:
  schedule: {{every_s: 86400}}
  retrain_on_new_data: true
gates: {{max_bpb: 9.0, min_improvement_pct: -100, max_reference_regression_pct: 1000}}
cluster: {{reuse_workers: {str(reuse_workers).lower()}}}
"""


SPACE = (
    "    lr: {type: float, low: 0.0005, high: 0.02, log: true}\n"
    "    batch_size: {type: categorical, choices: [8, 16, 32, 64]}"
)
# On a GPU the energy per token depends on batch size and precision (launch-bound small
# batches idle a 700 W board), so the GPU run also searches those.
GPU_SPACE = (
    "    lr: {type: float, low: 0.0005, high: 0.02, log: true}\n"
    "    batch_size: {type: categorical, choices: [16, 32, 64, 128, 256]}\n"
    "    precision: {type: categorical, choices: [fp32, bf16]}"
)
DEFAULT_SPACE = (
    "    lr: {type: categorical, choices: [0.003]}\n"
    "    batch_size: {type: categorical, choices: [32]}"
)


def run_once(state: Path, policy: str, threads: int) -> str:
    """Run one daemon cycle; return its start line (which energy meter and GPU it used)."""
    path = state / "policy.yaml"
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(policy)
    cmd = [
        sys.executable,
        "-m",
        "controller.cli",
        "run",
        "--once",
        "--no-serve",
        "--no-console",
        "--policy",
        str(path),
        "--state-dir",
        str(state),
        "--threads",
        str(threads),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    (state / "run.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    lines = res.stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("[daemon] policy")), None)
    if start is None:
        return ""
    note = [lines[start]]  # the console may wrap it: take its continuation lines too
    note += [ln for ln in lines[start + 1 : start + 4] if not ln.startswith("[")][:3]
    return " ".join(note)


def trials_of(state: Path, cycle: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from adapters.store.cycles import CycleBook
    from adapters.store.db import Store

    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    rows = CycleBook(store).trials(f"bench-c{cycle:04d}")
    store.dispose()
    out = []
    for r in rows:
        res = json.loads(r.result or "{}")
        out.append(
            {
                "trial": r.optuna_number,
                "status": r.status,
                "params": {
                    k: v
                    for k, v in json.loads(r.params).items()
                    if k in ("lr", "batch_size", "precision")
                },
                "device": res.get("device"),
                "seconds": res.get("seconds"),
                "tokens": res.get("tokens", 0),
                "joules": res.get("joules", 0.0),
                # a fresh trial worker's start-up, measured apart: part of what a search costs
                "startup_joules": (res.get("worker") or {}).get("startup_joules", 0.0),
                "method": res.get("energy_method", "estimated"),
                "valid_bpb": res.get("valid_bpb"),
                "reached": res.get("stopped_reason") == "target",
            }
        )
    return out


def to_target(trials: list[dict[str, Any]]) -> dict[str, Any]:
    spent = 0.0
    for i, t in enumerate(trials, start=1):
        spent += t["joules"] + t["startup_joules"]
        if t["reached"]:
            return {"reached": True, "joules": spent, "trials_to_target": i, "method": t["method"]}
    return {
        "reached": False,
        "joules": spent,
        "trials_to_target": len(trials) + 1,
        "method": trials[0]["method"] if trials else "estimated",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", type=float, default=3.0, help="held-out bits/byte to reach")
    ap.add_argument("--trials", type=int, default=5, help="trial budget for (b) and (c)")
    ap.add_argument("--tokens-per-trial", type=int, default=1_500_000)
    ap.add_argument("--default-tokens", type=int, default=4_000_000, help="cap for (a)")
    ap.add_argument("--check-every", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "energy_to_target.json"
    )
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--arms", default="default,random,controller", help="comma-separated")
    ap.add_argument("--warm-target", type=float, help="target on eras 0+1 (default: target+0.1)")
    ap.add_argument(
        "--space",
        choices=("cpu", "gpu"),
        default="cpu",
        help="search space of (b) and (c): gpu adds batch 128/256 and bf16",
    )
    ap.add_argument(
        "--reuse",
        choices=("on", "off", "both"),
        default="on",
        help="trial workers reused (the daemon's default) or one per trial; 'both' runs each "
        "arm both ways, one per trial first, and reports the ratio",
    )
    args = ap.parse_args()
    common = {"target": args.target, "check_every": args.check_every}
    search_space = GPU_SPACE if args.space == "gpu" else SPACE
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="aifactory-bench-") as tmp:
        base = Path(tmp)
        arms: dict[str, dict[str, Any]] = {}
        specs = {
            "default": dict(
                eras=[ERA0],
                trials=1,
                sampler="random",
                space=DEFAULT_SPACE,
                tokens_per_trial=args.default_tokens,
                pruning=False,
            ),
            "random": dict(
                eras=[ERA0],
                trials=args.trials,
                sampler="random",
                space=search_space,
                tokens_per_trial=args.tokens_per_trial,
                pruning=False,
            ),
            "controller": dict(
                eras=[ERA0, ERA1],
                trials=args.trials,
                sampler="tpe",
                space=search_space,
                tokens_per_trial=args.tokens_per_trial,
                pruning=True,
                baseline=True,
            ),
        }
        wanted = args.arms.split(",")
        modes = {"on": [True], "off": [False], "both": [False, True]}[args.reuse]
        reuse_ratio: dict[str, float] = {}
        for name, spec in specs.items():
            if name not in wanted:
                continue
            for reuse in modes:
                key = f"{name}, worker per trial" if len(modes) > 1 and not reuse else name
                state = base / f"{name}-{'reused' if reuse else 'fresh'}"
                print(f"[bench] running ({key}) ...", flush=True)
                yaml = policy_yaml(**spec, **common, reuse_workers=reuse)  # type: ignore[arg-type]
                note = run_once(state, yaml, args.threads)
                trials = trials_of(state, 1)
                arms[key] = {
                    "daemon": note,
                    "reuse_workers": reuse,
                    "trials": trials,
                    "search_joules": sum(t["joules"] + t["startup_joules"] for t in trials),
                    **to_target(trials),
                }
                print(f"[bench] ({key}) {json.dumps(arms[key])}", flush=True)  # if cut short
            if len(modes) > 1:
                off = arms[f"{name}, worker per trial"]["search_joules"]
                reuse_ratio[name] = off / arms[name]["search_joules"]
        warm: dict[str, Any] = {}
        warm_target = args.warm_target or args.target + 0.1
        if not args.skip_warm:
            common = {"target": warm_target, "check_every": args.check_every}
            print("[bench] warm start: controller's second cycle (new era) ...", flush=True)
            ctrl = base / f"controller-{'reused' if modes[-1] else 'fresh'}"
            ctrl_yaml = policy_yaml(**specs["controller"], **common, reuse_workers=modes[-1])  # type: ignore[arg-type]
            run_once(ctrl, ctrl_yaml, args.threads)
            warm_trials = trials_of(ctrl, 2)
            print("[bench] warm start: cold study on the same data ...", flush=True)
            cold_spec = dict(specs["controller"], eras=[ERA0 + ERA1], baseline=False)
            run_once(base / "cold", policy_yaml(**cold_spec, **common), args.threads)  # type: ignore[arg-type]
            cold_trials = trials_of(base / "cold", 1)
            warm = {
                "warm": {"trials": warm_trials, **to_target(warm_trials)},
                "cold": {"trials": cold_trials, **to_target(cold_trials)},
            }
    method = next(iter(arms.values()))["method"]
    a, b, c = (arms.get(k, {}).get("joules") for k in ("default", "random", "controller"))
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "command": "python -m bench.energy_to_target " + " ".join(sys.argv[1:]),
        "target_bpb": args.target,
        "energy": method,
        "space": args.space,
        "arms": arms,
        "ratio_default_over_controller": a / c if a and c else None,
        "ratio_random_over_controller": b / c if b and c else None,
        "ratio_worker_per_trial_over_reused": reuse_ratio,
        "warm_start": warm,
        "warm_target_bpb": None if args.skip_warm else args.warm_target or args.target + 0.1,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nEnergy to reach {args.target} bits/byte (joules {method}; lower is better)")
    w = max(12, *(len(n) + 2 for n in arms))
    print(f"{'arm':<{w}}{'reached':>9}{'trials':>8}{'joules':>12}")
    for name, arm in arms.items():
        print(
            f"{name:<{w}}{arm['reached']!s:>9}{arm['trials_to_target']:>8}{arm['joules']:>12,.0f}"
        )
    for label, key in (
        ("(a)/(c) default / controller", "ratio_default_over_controller"),
        ("(b)/(c) random / controller ", "ratio_random_over_controller"),
    ):
        if result[key] is not None:
            print(f"{label}: {result[key]:.2f}x")
    for name, ratio in reuse_ratio.items():
        print(f"({name}) whole search, worker per trial / reused workers: {ratio:.2f}x")
    if warm:
        w, k = warm["warm"], warm["cold"]
        print(f"\nWarm start, trials to reach {warm_target} bits/byte on eras 0+1:")
        print(
            f"cold study: {k['trials_to_target']}{'' if k['reached'] else ' (not reached)'}   "
            f"warm-started: {w['trials_to_target']}{'' if w['reached'] else ' (not reached)'}   "
            f"ratio cold/warm: {k['trials_to_target'] / w['trials_to_target']:.2f}x"
        )
    print(f"\nJSON: {args.out}  ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
