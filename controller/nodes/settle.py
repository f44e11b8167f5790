"""Settling a trained or crashed trial: ledger row, Optuna `tell`, audit event.

Each step is idempotent (keyed), so a resumed trainer repeats settling for any row saved
but not yet settled, without doubling anything.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna

from adapters.store.tables import TrialRunRow
from agents.actions import Action
from agents.trainer import prune_action
from controller.context import LineContext
from controller.nodes.trial_run import TrialPlan, book_worker_startup, label


def settle(
    ctx: LineContext, study: optuna.Study, plan: TrialPlan, row: TrialRunRow, n: int
) -> TrialRunRow:
    """Book, tell and audit; the row ends `complete`, `failed` or `pruned`."""
    r = json.loads(row.result or "{}")
    _book(ctx, row, r, int(r.get("tokens") or 0), float(r.get("joules") or 0.0))
    bpb, cost = r.get("valid_bpb"), r.get("energy_cost")
    multi = ctx.policy.tuning.objectives.kind != "quality"
    pruned = bool(r.get("pruned"))
    ok = (
        row.status == "trained"
        and not pruned
        and bpb is not None
        and math.isfinite(bpb)
        and (not multi or cost is not None)
    )
    _tell(study, row, ok, pruned, [bpb, cost] if multi else bpb)
    _audit_lost_nodes(ctx, plan, row, r)
    row.status = _audit_trial(ctx, plan, row, r, n, "pruned" if pruned else ok)
    ctx.book.put_trial(row)
    return row


def _audit_trial(
    ctx: LineContext,
    plan: TrialPlan,
    row: TrialRunRow,
    r: dict[str, Any],
    n: int,
    verdict: bool | str,
) -> str:
    """The trial's audit event and its line for people; returns the row's final status."""
    params = json.loads(row.params)
    figures = {k: v for k, v in r.items() if k != "artefact_path"} | {"params": params}
    text, key = label(plan, row, params, n), f"trainer:trial:{plan.index:03d}"
    tokens, joules, bpb = (
        int(r.get("tokens") or 0),
        float(r.get("joules") or 0.0),
        r.get("valid_bpb"),
    )
    number = row.optuna_number
    if verdict == "pruned":
        ctx.record(prune_action(number, tokens, figures, ctx.policy), row.cycle_id, key)
        ctx.reporter.trial_finished(f"{text}: pruned after {tokens:,} tokens", row.key)
        return "pruned"
    if verdict:
        reason = f"trial {number} finished: {bpb:.4f} bits/byte ({r.get('stopped_reason')})"
        ctx.record(Action("trainer", "run_trial", "taken", reason, figures), row.cycle_id, key)
        method = r.get("energy_method") or "estimated"
        tpj = f", {tokens / joules:,.0f} tokens/J {method}" if joules else ""
        ctx.reporter.trial_finished(
            f"{text}: {bpb:.4f} bits/byte, {tokens:,} tokens, {joules:,.0f} J {method}{tpj}",
            row.key,
        )
        return "complete"
    first_error = row.error.splitlines()[0] if row.error else "unknown error"
    failed = figures | {"error": row.error[:500]}
    reason = f"trial {number} failed: {first_error}"
    ctx.record(Action("trainer", "run_trial", "failed", reason, failed), row.cycle_id, key)
    ctx.reporter.trial_finished(f"{text}: FAILED ({first_error})", row.key)
    return "failed"


def _audit_lost_nodes(
    ctx: LineContext, plan: TrialPlan, row: TrialRunRow, r: dict[str, Any]
) -> None:
    """Each attempt of the trial lost with its node (and run again, or failed after the
    last retry) is an audit event of its own."""
    lost = list(r.get("lost_attempts") or [])
    for n, why in enumerate(lost):
        again = n + 1 < len(lost) or row.status == "trained"
        ctx.record(
            Action(
                "trainer",
                "retry_trial" if again else "lose_trial",
                "taken" if again else "failed",
                f"trial {row.optuna_number}: {why}; "
                + ("run again on another node" if again else "no retry left"),
                {"attempt": n + 1, "lost": why, "ran_on": r.get("node") or None},
            ),
            row.cycle_id,
            f"trainer:trial:{plan.index:03d}:lost:{n + 1}",
        )


def _book(
    ctx: LineContext, row: TrialRunRow, r: dict[str, Any], tokens: int, joules: float
) -> None:
    ctx.ledger.record(
        key=row.key,
        policy_name=ctx.name,
        cycle_id=row.cycle_id,
        kind="train",
        tokens=tokens,
        joules=joules,
        method=r.get("energy_method") or "estimated",
        node=r.get("node") or None,
    )
    worker = r.get("worker") or {}
    if worker.get("startup_joules"):
        book_worker_startup(
            ctx,
            row.key,
            row.cycle_id,
            float(worker["startup_joules"]),
            worker.get("startup_method") or "estimated",
            r.get("node") or None,
        )


def _tell(study: optuna.Study, row: TrialRunRow, ok: bool, pruned: bool, values: Any) -> None:
    if row.optuna_number is None:
        return
    if ok:
        study.tell(row.optuna_number, values, skip_if_finished=True)
        return
    state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
    study.tell(row.optuna_number, state=state, skip_if_finished=True)
