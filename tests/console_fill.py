"""A store filled as a factory of two lines would leave it: policies, cycles with trials
and a Pareto front, model versions with aliases, the ledger, a rollout with its audited
steps, a pending approval. Written through the repositories, so the console reads what the
daemon writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conftest import TINY_POLICY

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook
from adapters.store.tables import TrialRunRow
from policies.loader import load_policy

LINES = ("tiny", "other")


@dataclass(frozen=True)
class Filled:
    approval_id: int
    cycles: dict[str, list[str]]  # line -> cycle ids, oldest first
    models_dir: Path


@dataclass(frozen=True)
class _Trial:
    key: str
    number: int
    params: dict[str, float]
    valid_bpb: float
    energy_cost: float
    usable: bool = True


def fill_factory(store: Store, tmp_path: Path) -> Filled:
    models_dir = tmp_path / "models"
    book, audit = CycleBook(store), AuditLog(store)
    registry = ModelRegistry(store, models_dir)
    policy = load_policy(TINY_POLICY)
    cycles: dict[str, list[str]] = {}
    approval_id = 0
    for line in LINES:
        book.save_policy(policy.model_copy(update={"name": line}), str(TINY_POLICY))
        cycles[line] = [_cycle(store, registry, line, n, tmp_path) for n in (1, 2, 3)]
    for n in (1, 2):
        registry.promote("tiny", n, by="deployer", reason=f"v{n} wins", key=f"tiny:promote:{n}")
    _rollout(store, audit, cycles["tiny"][1])
    approval = book.request_approval("tiny", cycles["tiny"][2], 3)
    assert approval.id is not None
    approval_id = approval.id
    audit.append(
        agent="evaluator",
        action="judge",
        outcome="taken",
        reason="v3 beats v2 by 2.1% (bits/byte)",
        figures={"candidate": 3, "champion": 2},
        cycle_id=cycles["tiny"][2],
        line="tiny",
    )
    return Filled(approval_id, cycles, models_dir)


def _cycle(store: Store, registry: ModelRegistry, line: str, n: int, tmp_path: Path) -> str:
    """One finished cycle: two trials (one on the front), its model version, its ledger."""
    book = CycleBook(store)
    cycle = book.start(line, "pv1", "schedule" if n == 1 else "new data")
    trials = [
        _Trial(
            f"{cycle.id}:t{i}", i, {"lr": 0.001 * (i + 1)}, 3.2 - 0.1 * n - 0.05 * i, 40.0 + 9 * i
        )
        for i in range(3)
    ]
    for t in trials:
        book.put_trial(
            TrialRunRow(
                key=t.key,
                cycle_id=cycle.id,
                study_name=line,
                optuna_number=t.number,
                params=f'{{"lr": {t.params["lr"]}}}',
                status="complete",
                result="{}",
            )
        )
    book.save_pareto(cycle.id, list(trials), {trials[0].key, trials[2].key})
    art = tmp_path / f"{line}-{n}.pt"
    art.write_bytes(f"weights {line} {n}".encode())
    registry.register(
        policy_name=line,
        key=f"{cycle.id}:candidate",
        artefact=art,
        cycle_id=cycle.id,
        dataset_version=f"ds{n}-0123456789abcdef",
        trial_key=trials[0].key,
        params=trials[0].params,
        tokens=400_000 * n,
        joules=150.0 * n,
        energy_method="estimated",
        valid_bpb=trials[0].valid_bpb,
    )
    Ledger(store).record(
        key=f"{cycle.id}:train",
        policy_name=line,
        kind="train",
        tokens=400_000 * n,
        joules=150.0 * n,
        method="estimated",
        cycle_id=cycle.id,
    )
    book.finish(cycle.id, "completed", {"trials": len(trials)})
    return cycle.id


def _rollout(store: Store, audit: AuditLog, cycle_id: str) -> None:
    """The canary of v2 against v1: three steps, audited as the daemon does, promoted."""
    book = RolloutBook(store)
    book.start(
        "tiny", cycle_id, champion=1, challenger=2, steps=[5.0, 25.0, 50.0], loss_sample_rate=0.1
    )
    before = 0.0
    for step, weight in enumerate((5.0, 25.0, 50.0)):
        # as the daemon does: the row's step first, the serving side's weight change after
        book.update(cycle_id, step=step, weight_pct=weight)
        audit.append(
            agent="deployer",
            action="canary_weight",
            outcome="taken",
            reason=f"canary tiny:v2: {before:g}% -> {weight:g}% of traffic",
            figures={"line": "tiny", "version": 2, "from_pct": before, "to_pct": weight},
            cycle_id=cycle_id,
            line="tiny",
        )
        audit.append(
            agent="deployer",
            action="canary_step",
            outcome="taken",
            reason=f"step at {weight:g}%: v2 no worse",
            figures={"weight_pct": weight},
            cycle_id=cycle_id,
            line="tiny",
        )
        before = weight
    book.update(cycle_id, status="promoted", weight_pct=100.0, reason="every step passed")
