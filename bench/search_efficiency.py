"""How close the controller's search gets to the best configuration there is.

    python -m bench.search_efficiency [--target 3.0] [--lrs ...] [--batches ...]

An exhaustive sweep of a stated grid (on a CPU: learning rate x batch size; with
`--precisions fp32,bf16` on a GPU also precision): every point is one real `aifactory run
--once` with that configuration only, trained until its held-out bits/byte reach the target
(or the token cap), and its energy to the target is that trial's joules (a fresh worker's
start-up is booked apart and left out: every point pays it alike).

Then the controller searches the same grid (TPE, pruning, the operator's baseline first, as
it tunes a cold study) with a quarter of the sweep's trials or fewer. Its choice is the
trial that reached the target with the fewest joules: the search's answer to "which
configuration reaches the target cheapest". Reported: the choice's energy to target over
the sweep's best (goal: within 10%), measured both in the controller's own trial and in the
sweep; with `--recheck K` the sweep's best and the choice are each run K more times and
the ratio of medians is the headline (these machines are noisy). Also the trials it needed,
the whole search's energy against the whole sweep's, and what the controller itself cost.

Joules are estimated on a machine without a GPU (CPU seconds x W/core), measured by NVML on
a GPU; every figure carries which.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon_runs import (
    ERA0,
    ArmSpec,
    categorical_space,
    cycle_summary,
    overhead,
    policy_yaml,
    run_once,
    trials_of,
)
from bench.output import emit

GOAL = 1.10  # the choice's energy to target within 10% of the best


def grid_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    axes = {"lr": args.lrs, "batch_size": args.batches}
    if args.precisions != ["fp32"]:
        axes["precision"] = args.precisions
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _run(spec: ArmSpec, state: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    yaml = policy_yaml(spec, target=args.target, check_every=args.check_every, reuse_workers=True)
    run_once(state, yaml, args.threads)
    return trials_of(state, 1)


def measure_point(point: dict[str, Any], state: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration trained to the target (or the cap): its trial's joules."""
    spec = ArmSpec(
        eras=[ERA0],
        trials=1,
        sampler="random",
        space=categorical_space(**{k: [v] for k, v in point.items()}),
        tokens_per_trial=args.tokens_cap,
        placement="off",
    )
    (trial,) = _run(spec, state, args)
    return {
        "params": point,
        "reached": trial["reached"],
        "joules": trial["joules"],
        "startup_joules": trial["startup_joules"],
        "tokens": trial["tokens"],
        "method": trial["method"],
    }


def sweep(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    """Every grid point, kept in ``--out`` as it is measured (a cut-short run keeps them)."""
    points = grid_points(args)
    out: list[dict[str, Any]] = []
    for i, point in enumerate(points):
        row = measure_point(point, base / f"point-{i:02d}", args)
        print(f"[sweep {i + 1}/{len(points)}] {row}", flush=True)
        out.append(row)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"partial": True, "sweep": out}, indent=2))
    return out


def controller_search(args: argparse.Namespace, base: Path, n_trials: int) -> dict[str, Any]:
    """The controller on the same grid: TPE, pruning, the operator's baseline first."""
    axes = {k: sorted({p[k] for p in grid_points(args)}) for k in grid_points(args)[0]}
    spec = ArmSpec(
        eras=[ERA0],
        trials=n_trials,
        sampler="tpe",
        space=categorical_space(**axes),
        tokens_per_trial=args.tokens_cap,
        pruning=True,
        baseline={"lr": args.baseline_lr, "batch_size": args.baseline_batch},
        placement="off",  # the sweep's grid exactly, so its choice is a point of the sweep
    )
    state = base / "controller"
    trials = _run(spec, state, args)
    reached = [t for t in trials if t["reached"]]
    first = next((i for i, t in enumerate(trials, start=1) if t["reached"]), None)
    return {
        "trials": trials,
        "trials_run": len(trials),
        "trials_to_first_reach": first,
        "search_joules": sum(t["joules"] + t["startup_joules"] for t in trials),
        "choice": min(reached, key=lambda t: t["joules"]) if reached else None,
        "controller": overhead(cycle_summary(state, 1)),
    }


def recheck(
    point: dict[str, Any], first: float, times: int, base: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same configuration run again: the median of every measurement of it."""
    runs = [first]
    for k in range(times):
        tag = "-".join(f"{v}" for v in point.values())
        again = measure_point(point, base / f"recheck-{tag}-{k}", args)
        runs.append(again["joules"] if again["reached"] else float("inf"))
    return {"params": point, "joules_runs": runs, "median_joules": statistics.median(runs)}


def summarise(
    points: list[dict[str, Any]], ctrl: dict[str, Any], args: argparse.Namespace, base: Path
) -> dict[str, Any]:
    reached = [p for p in points if p["reached"]]
    best = min(reached, key=lambda p: p["joules"]) if reached else None
    choice = ctrl["choice"]
    out: dict[str, Any] = {"best": best, "choice": choice}
    if best is None or choice is None:
        return out | {"goal_met": False, "why": "the target was not reached by the sweep or search"}
    in_sweep = next(p for p in points if p["params"] == choice["params"])
    ranked = sorted(reached, key=lambda p: p["joules"])
    in_sweep_joules = in_sweep["joules"] if in_sweep["reached"] else float("inf")
    sweep_joules = sum(p["joules"] + p["startup_joules"] for p in points)
    out |= {
        "choice_rank_in_sweep": ranked.index(in_sweep) + 1 if in_sweep in ranked else None,
        # the sweep's points each ran first in a fresh worker; the search's later trials ran
        # in a warm one: "in sweep" compares like with like, "own" is for reference
        "choice_in_sweep_over_best": in_sweep_joules / best["joules"],
        "choice_own_over_best": choice["joules"] / best["joules"],
        "sweep_joules": sweep_joules,  # start-ups included on both sides
        "sweep_over_search_joules": sweep_joules / ctrl["search_joules"],
    }
    headline = out["choice_in_sweep_over_best"]
    if args.recheck:  # more runs of both, as the sweep ran them (a fresh worker each)
        rb = recheck(best["params"], best["joules"], args.recheck, base, args)
        same = choice["params"] == best["params"]
        rc = rb if same else recheck(in_sweep["params"], in_sweep_joules, args.recheck, base, args)
        out["recheck"] = {"best": rb, "choice": rc}
        headline = rc["median_joules"] / rb["median_joules"]
    return out | {"choice_over_best": headline, "goal_met": headline <= GOAL}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", type=float, default=3.0, help="held-out bits/byte to reach")
    ap.add_argument("--lrs", type=_floats, default=[0.0015, 0.003, 0.006, 0.012])
    ap.add_argument(
        "--batches", type=lambda t: [int(x) for x in t.split(",")], default=[8, 16, 32, 64]
    )
    ap.add_argument("--precisions", type=lambda t: t.split(","), default=["fp32"])
    ap.add_argument("--tokens-cap", type=int, default=4_000_000, help="per trial")
    ap.add_argument("--check-every", type=int, default=100_000)
    ap.add_argument("--controller-trials", type=int, help="default: a quarter of the grid")
    ap.add_argument("--baseline-lr", type=float, default=0.003)
    ap.add_argument("--baseline-batch", type=int, default=32)
    ap.add_argument("--recheck", type=int, default=2, help="extra runs of best and choice")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.baseline_lr not in args.lrs or args.baseline_batch not in args.batches:
        ap.error("the baseline (--baseline-lr, --baseline-batch) must be a point of the grid")
    return args


def main() -> int:
    args = parse_args()
    started = time.time()
    n_points = len(grid_points(args))
    n_trials = args.controller_trials or max(1, n_points // 4)
    with tempfile.TemporaryDirectory(prefix="aifactory-search-") as tmp:
        base = Path(tmp)
        points = sweep(args, base)
        print(f"[search] the controller, {n_trials} trials ...", flush=True)
        ctrl = controller_search(args, base, n_trials)
        verdict = summarise(points, ctrl, args, base)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "command": "python -m bench.search_efficiency " + " ".join(sys.argv[1:]),
        "target_bpb": args.target,
        "energy": points[0]["method"],
        "grid_points": n_points,
        "controller_trials": n_trials,
        "sweep": points,
        "search": ctrl,
        "verdict": verdict,
        "seconds": round(time.time() - started, 1),
    }
    emit(result, args.out)
    report(result)
    return 0


def report(result: dict[str, Any]) -> None:
    v, s = result["verdict"], result["search"]
    energy = result["energy"]
    print(f"\nSearch efficiency, target {result['target_bpb']} bits/byte (joules {energy})")
    for p in sorted(result["sweep"], key=lambda p: (not p["reached"], p["joules"])):
        flag = "" if p["reached"] else "  (not reached)"
        print(f"  {p['params']}: {p['joules']:,.0f} J{flag}")
    if v.get("best") is None or v.get("choice") is None:
        print(f"goal not met: {v.get('why')}")
        return
    print(f"sweep best: {v['best']['params']} {v['best']['joules']:,.0f} J")
    print(
        f"controller: {s['trials_run']} trials of {result['grid_points']} points "
        f"(first reach at trial {s['trials_to_first_reach']}); choice {v['choice']['params']} "
        f"{v['choice']['joules']:,.0f} J (rank {v['choice_rank_in_sweep']} in the sweep)"
    )
    print(
        f"choice / best: {v['choice_over_best']:.3f}x "
        f"({'within' if v['goal_met'] else 'NOT within'} 10%; {energy})"
    )
    own = s["controller"]
    print(
        f"whole sweep / whole search: {v['sweep_over_search_joules']:.2f}x energy; controller "
        f"overhead {own['controller_share_pct']}% of its cycle ({energy} trials, "
        f"{own.get('controller_energy') or 'estimated'} controller)"
    )


if __name__ == "__main__":
    sys.exit(main())
