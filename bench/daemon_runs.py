"""One benchmark arm = one real `aifactory run --once` in its own state directory, read back
from its store: the policy it ran, its trials, its energy to the target and what the
controller itself cost. Shared by the energy-to-target and search-efficiency benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ERA0 = ["email", "json", "http", "urllib", "xml"]
ERA1 = ["asyncio", "concurrent", "multiprocessing"]
PRUNING = "{enabled: true, startup_trials: 1, warmup_fraction: 0.15, margin_pct: 8}"


@dataclass(frozen=True)
class ArmSpec:
    """What one daemon run searches: the policy file's knobs, nothing else."""

    eras: list[list[str]]
    trials: int
    sampler: str
    space: str  # YAML lines of tuning.search_space
    tokens_per_trial: int
    pruning: bool = False
    baseline: dict[str, Any] | None = None  # tuning.baseline: the cold study's first trial
    placement: str = "auto"  # energy.placement
    fixed: dict[str, Any] = field(default_factory=dict)  # beside the model's shape


def policy_yaml(spec: ArmSpec, *, target: float, check_every: int, reuse_workers: bool) -> str:
    eras_yaml = "\n".join(f"      - [{', '.join(e)}]" for e in spec.eras)
    prune = f"  pruning: {PRUNING}\n" if spec.pruning else ""
    baseline = f"  baseline: {_flow(spec.baseline)}\n" if spec.baseline else ""
    fixed = {
        "d_model": 128,
        "n_layers": 2,
        "n_heads": 4,
        "context": 128,
        "warmup_steps": 20,
        "target_bpb": target,
        "check_every_tokens": check_every,
        **spec.fixed,
    }
    return f"""name: bench
data:
  source:
    kind: stdlib_eras
    eras:
{eras_yaml}
  eval_max_bytes: 60000
budgets:
  tokens_per_trial: {spec.tokens_per_trial}
energy: {{placement: {spec.placement}}}
tuning:
  trials_per_cycle: {spec.trials}
  sampler: {spec.sampler}
  seed: 7
{prune}{baseline}  search_space:
{spec.space}
  fixed: {_flow(fixed)}
triggers:
  schedule: {{every_s: 86400}}
  retrain_on_new_data: true
gates: {{max_bpb: 9.0, min_improvement_pct: -100, max_reference_regression_pct: 1000}}
cluster: {{reuse_workers: {str(reuse_workers).lower()}}}
"""


def _yaml(value: Any) -> str:
    """One value as YAML reads it back (``1e-05`` unquoted would be a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _flow(values: dict[str, Any]) -> str:
    return _yaml(values)


def categorical_space(**choices: list[Any]) -> str:
    return "\n".join(
        f"    {k}: {{type: categorical, choices: {_yaml(list(v))}}}" for k, v in choices.items()
    )


def run_once(state: Path, policy: str, threads: int) -> str:
    """Run one daemon cycle; return its start line (which energy meter and GPU it used)."""
    path = state / "policy.yaml"
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(policy)
    cmd = [sys.executable, "-m", "controller.cli", "run", "--once", "--no-serve", "--no-console"]
    cmd += ["--policy", str(path), "--state-dir", str(state), "--threads", str(threads)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    (state / "run.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    lines = res.stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("[daemon] factory")), None)
    if start is None:
        return ""
    note = [lines[start]]  # the console may wrap it: take its continuation lines too
    note += [ln for ln in lines[start + 1 : start + 4] if not ln.startswith("[")][:3]
    return " ".join(note)


def _store(state: Path) -> Any:
    sys.path.insert(0, str(ROOT))
    from adapters.store.db import Store

    return Store(f"sqlite:///{state / 'aifactory.db'}")


def trials_of(state: Path, cycle: int) -> list[dict[str, Any]]:
    from adapters.store.cycles import CycleBook

    store = _store(state)
    rows = CycleBook(store).trials(f"bench-c{cycle:04d}")
    store.dispose()
    return [_trial(r) for r in rows]


def _trial(row: Any) -> dict[str, Any]:
    res = json.loads(row.result or "{}")
    knobs = ("lr", "batch_size", "precision", "grad_accum", "power_limit_w")
    return {
        "trial": row.optuna_number,
        "status": row.status,
        "params": {k: v for k, v in json.loads(row.params).items() if k in knobs},
        "device": res.get("device"),
        "seconds": res.get("seconds"),
        "tokens": res.get("tokens", 0),
        "joules": res.get("joules", 0.0),
        # a fresh trial worker's start-up, measured apart: part of what a search costs
        "startup_joules": (res.get("worker") or {}).get("startup_joules", 0.0),
        "method": res.get("energy_method", "estimated"),
        "valid_bpb": res.get("valid_bpb"),
        "n_params": res.get("n_params"),
        "reached": res.get("stopped_reason") == "target",
    }


def cycle_summary(state: Path, cycle: int) -> dict[str, Any]:
    """The cycle's finish_cycle figures: energy by kind and what the controller cost."""
    from adapters.store.audit import AuditLog

    store = _store(state)
    events = AuditLog(store).events(action="finish_cycle", cycle_id=f"bench-c{cycle:04d}")
    store.dispose()
    return dict(events[-1].figures) if events else {}


def to_target(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Joules spent until the first trial reaches the target, that trial included."""
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


def gpu_name() -> str | None:
    """The first GPU's name through NVML (read-only), None without one."""
    try:
        from adapters.gpu.probe import probe_gpus

        gpu, _ = probe_gpus("nvml")
        devices = gpu.devices() if gpu is not None else []
    except Exception:
        return None
    return devices[0].name if devices else None


def overhead(summary: dict[str, Any]) -> dict[str, Any]:
    """The controller's own figures from a cycle summary (None where the build had none),
    labelled: its joules are CPU seconds x W/core even where the trials' are measured, so a
    report must not print them under the trials' "measured"."""
    keys = ("controller_cpu_s", "controller_joules", "controller_share_pct")
    figures = {k: summary.get(k) for k in keys}
    # builds before the label wrote none; their figure was the same CPU-time estimate
    return figures | {"controller_energy": summary.get("controller_energy", "estimated")}
