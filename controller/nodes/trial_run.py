"""Running one trial: ask Optuna (or re-use the recorded ask), hand the job to the cluster,
prune on the way, and save the result as `trained` or `crashed` (settling is separate).

A row left `running` by a crash is re-run with the same Optuna trial and parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from adapters.cluster.base import TrialJob, TrialOutcome
from adapters.store.db import utcnow_iso
from adapters.store.tables import TrialRunRow
from adapters.workload.protocol import TrainRequest
from agents.trainer import (
    duplicate_of,
    energy_cost,
    should_prune,
    skip_duplicate_action,
    unrun_point_action,
    unrun_points,
)
from controller.context import CycleInterrupted, LineContext
from policies.model import PLACEMENT_PARAMS


@dataclass(frozen=True)
class TrialPlan:
    """What one trial of the cycle runs on and within."""

    cid: str
    index: int  # the trial's place in the cycle (its key ends with it)
    key: str
    dists: dict[str, Any]
    train_files: list[str]
    valid_files: list[str]
    max_tokens: int
    max_joules: float
    threads: int = 0  # CPU threads for the trial (0: the daemon's setting); parallel trials
    # split the daemon's threads between them


def label(plan: TrialPlan, row: TrialRunRow, params: dict[str, Any], n: int) -> str:
    parts = []
    for k in plan.dists:
        v = params.get(k)
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return f"[trainer] trial {plan.index + 1}/{n} (#{row.optuna_number}) {' '.join(parts)}"


def book_worker_startup(
    ctx: LineContext, key: str, cid: str, joules: float, method: str, node: str | None = None
) -> None:
    """A fresh worker's start-up, booked once beside the trial that started it: the day's
    budget counts it, the trial's own cost (which tuning compares) does not."""
    ctx.ledger.record(
        key=f"{key}:worker-startup",
        policy_name=ctx.name,
        cycle_id=cid,
        kind="train",
        tokens=0,
        joules=joules,
        method=method,
        node=node,
    )


@dataclass
class LiveTrial:
    """A trial handed to the cluster: what it runs, and what its progress has shown."""

    plan: TrialPlan
    row: TrialRunRow
    job: TrialJob
    text: str  # its label for people
    placement: dict[str, Any]
    trial: optuna.Trial | None  # None when resumed (no live handle: intermediate values lost)
    curve: list[tuple[int, float]] = field(default_factory=list)
    prune_now: bool = False
    prune_median: float | None = None
    started_at: str = field(default_factory=utcnow_iso)


_MAX_ASKS = 9  # asks for parameters not yet run before an unrun point is chosen


def _finite_choices(dists: dict[str, Any]) -> dict[str, list[Any]] | None:
    """The choices of an all-categorical space (one that can be listed), else None."""
    if not dists or not all(isinstance(d, CategoricalDistribution) for d in dists.values()):
        return None
    return {name: list(d.choices) for name, d in dists.items()}


class TrialRunner:
    """One trial's life on the daemon's side: ask and record it, build its job, and save what
    the cluster returned. Running it (``ctx.cluster.run``) is the caller's, so that several
    trials may run at once (``controller/nodes/trial_pool.py``)."""

    def __init__(self, ctx: LineContext, study: optuna.Study) -> None:
        self.ctx = ctx
        self.study = study

    def prepare(self, plan: TrialPlan, row: TrialRunRow | None) -> LiveTrial:
        """Ask Optuna (a row left `running` by a crash keeps its number and parameters),
        apply the placement knobs, and announce the trial."""
        ctx = self.ctx
        trial: optuna.Trial | None = None
        if row is None:
            trial, row = self._ask(plan)
        params = json.loads(row.params)
        placement: dict[str, Any] = {"device": str(params.get("device", "auto"))}
        if "power_limit_w" in params:
            placement["power_limit"] = ctx.set_power_limit(float(params["power_limit_w"]), plan.key)
        text = label(plan, row, params, ctx.policy.tuning.trials_per_cycle)
        ctx.reporter.trial_started(text, plan.max_tokens, plan.key)
        return LiveTrial(plan, row, self._job(plan, row, params, placement), text, placement, trial)

    def progress(self, live: LiveTrial, p: Any, others: list[list[tuple[int, float]]]) -> None:
        """A progress report: show it, keep the curve, decide on pruning against the cycle's
        other trials (``others``: finished ones and those running beside it), at the same
        token count."""
        ctx, plan = self.ctx, live.plan
        ctx.reporter.trial_progress(p, plan.key)
        live.curve.append((int(p.tokens), float(p.loss)))
        if live.trial is not None and ctx.policy.tuning.objectives.kind == "quality":
            live.trial.report(p.loss, p.tokens)  # intermediate values for optuna-dashboard
        if not live.prune_now:
            live.prune_now, live.prune_median = should_prune(
                p.tokens, p.loss, plan.max_tokens, others, ctx.policy
            )

    def finish(self, live: LiveTrial, outcome: TrialOutcome) -> TrialRunRow:
        """Save the trial `trained` or `crashed` (not settled). An interrupted trial's energy
        is booked and :class:`CycleInterrupted` raised: it runs again on resume."""
        ctx, plan, row = self.ctx, live.plan, live.row
        ctx.power_limit_released(plan.key)  # its share of the facility cap is free again
        # a trial that ran to its end is not pruned, even if its last report was judged late
        pruned = live.prune_now and outcome.status == "interrupted" and not ctx.stop_event.is_set()
        if outcome.status == "interrupted" and not pruned:
            self.book_abandoned(plan, outcome)
            ctx.reporter.trial_finished(f"{live.text}: interrupted (resumes on restart)", plan.key)
            raise CycleInterrupted(plan.key)
        result = self._result(plan, outcome, live.placement, pruned, live.prune_median, live.curve)
        result |= {"started_at": live.started_at, "ended_at": utcnow_iso()}
        if result["artefact_path"] and ctx.files is not None:  # a new leader may need it
            result["artefact_sha256"] = ctx.files.publish_model(result["artefact_path"])
        row.result = json.dumps(result, sort_keys=True, default=str)
        row.status = "trained" if outcome.status == "ok" or pruned else "crashed"
        row.error = outcome.error[:2000]
        ctx.book.put_trial(row)
        return row

    def _ask(self, plan: TrialPlan) -> tuple[optuna.Trial, TrialRunRow]:
        """Ask Optuna and write the trial's number and parameters *before* training."""
        ctx = self.ctx
        trial = self._ask_new(plan)
        trial.set_user_attr("trial_key", plan.key)
        trial.set_user_attr("cycle", plan.cid)
        params = {**ctx.policy.tuning.fixed, **trial.params}
        row = TrialRunRow(
            key=plan.key,
            cycle_id=plan.cid,
            study_name=self.study.study_name,
            optuna_number=trial.number,
            params=json.dumps(params, sort_keys=True),
            status="running",
            result="{}",
        )
        ctx.book.put_trial(row)
        return trial, row

    def _ask_new(self, plan: TrialPlan) -> optuna.Trial:
        """A trial whose parameters this cycle has not run yet, nor is running: a repeat is
        recorded as failed at once (audited) and Optuna asked again, a few times at most,
        then an unrun point of a finite space is enqueued (audited). A finite space the
        cycle has wholly run asks once: a repeat is all there is."""
        ran = self._cycle_points(plan.cid)
        choices = _finite_choices(plan.dists)
        unrun = unrun_points(choices, ran) if choices else None
        if unrun == []:
            return self.study.ask(fixed_distributions=plan.dists)
        for _ in range(_MAX_ASKS - 1):
            trial = self.study.ask(fixed_distributions=plan.dists)
            earlier = duplicate_of(trial.params, ran)
            if earlier is None:
                return trial
            self._skip_repeat(trial, earlier, plan)
        if unrun:
            point = unrun[len(ran) % len(unrun)]
            action = unrun_point_action(point, _MAX_ASKS - 1)
            self.ctx.record(action, plan.cid, f"trainer:unrun:{plan.key}")
            self.ctx.reporter.info(f"[trainer] {action.reason}")
            self.study.enqueue_trial(point)
        return self.study.ask(fixed_distributions=plan.dists)

    def _cycle_points(self, cid: str) -> list[tuple[int, dict[str, Any]]]:
        """(number, parameters) of the cycle's trials that ran or are running (a running
        one has its cycle mark; skipped repeats are not points of their own)."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return [
            (t.number, t.params)
            for t in self.study.get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("cycle") == cid and "duplicate_of" not in t.user_attrs
        ]

    def _skip_repeat(self, trial: optuna.Trial, earlier: int, plan: TrialPlan) -> None:
        """The repeat is told FAIL, which samplers ignore: a copy of the earlier result
        would count the same point twice, and in a study that later cycles share, such
        copies pile up around the best point and draw ever more repeats. Marked and audited
        before the tell: a crash in between leaves an orphan that ``fail_orphans`` settles,
        never an unaudited tell."""
        trial.set_user_attr("trial_key", f"{plan.key}:repeat-{trial.number}")
        trial.set_user_attr("cycle", plan.cid)
        trial.set_user_attr("duplicate_of", earlier)
        action = skip_duplicate_action(trial.number, trial.params, earlier)
        self.ctx.record(action, plan.cid, f"trainer:repeat:{trial.number}")
        self.ctx.reporter.info(f"[trainer] {action.reason}")
        self.study.tell(trial, state=TrialState.FAIL)

    def _job(
        self, plan: TrialPlan, row: TrialRunRow, params: dict[str, Any], placement: dict[str, Any]
    ) -> TrialJob:
        ctx = self.ctx
        # placement knobs are applied by the controller; the rest goes to the workload
        workload_params = {k: v for k, v in params.items() if k not in PLACEMENT_PARAMS}
        return TrialJob(
            key=plan.key,
            workload=ctx.workload_spec,
            request=TrainRequest(
                params=workload_params,
                train_files=plan.train_files,
                valid_files=plan.valid_files,
                max_tokens=plan.max_tokens,
                out_path=str(ctx.trials_dir / plan.cid / f"trial-{plan.index:03d}.pt"),
                seed=ctx.policy.tuning.seed + (row.optuna_number or 0),
                threads=plan.threads or ctx.threads,
                device=placement["device"],
            ),
            watts_per_core=ctx.policy.energy.watts_per_core,
            prefer_gpu=ctx.policy.energy.prefer_gpu,
            max_joules=plan.max_joules,
        )

    def book_abandoned(self, plan: TrialPlan, outcome: TrialOutcome) -> None:
        """The energy of an attempt abandoned at shutdown is still booked."""
        ctx, energy, startup = self.ctx, outcome.energy, outcome.startup_energy
        if energy is None:
            return
        attempt = f"{plan.key}:interrupted:{utcnow_iso()}"
        ctx.ledger.record(
            key=attempt,
            policy_name=ctx.name,
            cycle_id=plan.cid,
            kind="train",
            tokens=outcome.result.tokens if outcome.result else 0,
            joules=energy.joules,
            method=energy.method,
            node=outcome.node or None,
        )
        if startup is not None:
            book_worker_startup(
                ctx, attempt, plan.cid, startup.joules, startup.method, outcome.node or None
            )

    def _result(
        self,
        plan: TrialPlan,
        outcome: TrialOutcome,
        placement: dict[str, Any],
        pruned: bool,
        median: float | None,
        curve: list[tuple[int, float]],
    ) -> dict[str, Any]:
        res, energy, startup = outcome.result, outcome.energy, outcome.startup_energy
        tokens = res.tokens if res else 0
        joules = energy.joules if energy else 0.0
        seconds = res.seconds if res else 0.0
        return {
            "tokens": tokens,
            "joules": joules,
            "energy_method": energy.method if energy else "estimated",
            "energy_source": energy.source if energy else "unknown (worker died)",
            "valid_bpb": res.valid_bpb if res else None,
            "seconds": seconds,
            "device": res.device if res else "",
            "precision": res.precision if res else "",
            "stopped_reason": "pruned"
            if pruned
            else (outcome.stop_reason or (res.stopped_reason if res else "")),
            "max_joules": round(plan.max_joules, 3),
            "n_params": res.n_params if res else 0,
            "artefact_path": "" if pruned else (res.artefact_path if res else ""),
            "energy_cost": energy_cost(
                self.ctx.policy,
                tokens=tokens,
                joules=joules,
                seconds=seconds or 0.0,
                max_power_w=self.ctx.max_power_w,
            ),
            "pruned": pruned,
            "pruned_against_median_loss": median if pruned else None,
            "placement": placement,
            # which worker process ran it, and its how-manieth trial; a fresh worker's
            # start-up is booked beside the trial (ledger), not in its cost (tuning)
            "worker": {
                "pid": outcome.worker_pid,
                "trial": outcome.worker_trial,
                "startup_joules": startup.joules if startup else 0.0,
                "startup_method": startup.method if startup else None,
            },
            "node": outcome.node,
            "lost_attempts": list(outcome.lost),
            "curve": curve[:: max(1, len(curve) // 40)],
        }
