"""The trainer node: plan the search, run the allowed trials (up to `parallel_trials` at
once; each keyed, so a resumed node re-runs only the unfinished ones), choose the candidate,
register it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

import optuna

from adapters.store.datasets import DatasetVersion
from adapters.store.tables import TrialRunRow
from adapters.workload.protocol import honoured_knobs
from agents.actions import Action
from agents.energy import (
    TrainingAllowance,
    TrialBudget,
    TrialBudgetObservation,
    decide_trial_budget,
)
from agents.placement import plan_placement, with_placement
from agents.trainer import (
    SearchObservation,
    TrialSummary,
    choose_candidate,
    distributions,
    pareto_front,
    plan_search,
)
from controller.budget import eval_key
from controller.context import CycleInterrupted, CycleState, LineContext
from controller.nodes.settle import settle
from controller.nodes.study import fail_orphans, has_finished_trials, open_study
from controller.nodes.trial_pool import TrialPool
from controller.nodes.trial_run import TrialPlan, TrialRunner
from controller.retry import PermanentError


class TrainerNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        allowance = TrainingAllowance(**(state.get("allowance") or {}))
        dataset = ctx.catalog.get(state["dataset_version"] or "")
        if dataset is None:  # retrying cannot bring it back
            raise PermanentError(f"dataset version {state.get('dataset_version')} is not stored")
        cycle = ctx.book.get(cid)
        study = open_study(ctx.policy, ctx.study_storage(), cycle.number if cycle else 0)
        fail_orphans(study, ctx.book, cid)
        dists = self._plan(study, cid)
        summaries = self._run_trials(study, dists, dataset, allowance, cid)
        if ctx.budget is not None:
            ctx.budget.want(0)  # no more trials this cycle: the share goes back to the pool
        front = pareto_front(summaries)
        if front:
            ctx.book.save_pareto(cid, summaries, {t.key for t in front})
        best, action = choose_candidate(summaries, ctx.policy)
        if ctx.policy.tuning.objectives.kind != "quality":
            action = action.with_figures(
                pareto_front=[
                    {"trial": t.number, "bpb": t.valid_bpb, "energy_cost": t.energy_cost}
                    for t in front
                ]
            )
        ctx.record(action, cid, "trainer:choose_candidate")
        trials = [s.__dict__ for s in summaries]
        if best is None:
            if ctx.budget is not None:
                ctx.budget.release(eval_key(cid))  # nothing to evaluate
            return {"trials": trials, "candidate_version": None}
        version = self._register(best, summaries, dataset, cid)
        return {"trials": trials, "candidate_version": version}

    def _plan(self, study: optuna.Study, cid: str) -> dict[str, Any]:
        """The search space as it can be applied here, and the cycle's first trial."""
        ctx = self.ctx
        champion = ctx.champion()
        placement = plan_placement(ctx.device, ctx.policy, honoured_knobs(ctx.workload))
        policy = with_placement(ctx.policy, placement)
        if placement.action is not None:
            ctx.record(placement.action, cid, "energy:placement_knobs")
        plan = plan_search(
            SearchObservation(
                power_knob_problem=ctx.power_knob_problem,
                champion_version=champion.version if champion else None,
                # a champion trained before a knob was searched ran at the knob's default
                champion_params=placement.defaults | champion.params if champion else None,
                study_has_finished_trials=has_finished_trials(study),
            ),
            policy,
        )
        dists = {k: v for k, v in distributions(policy).items() if k not in plan.drop}
        for key, action in plan.actions:
            if key != plan.first_trial_key:
                ctx.record(action, cid, key)
                continue
            if ctx.audit.has_key(f"{cid}:{key}"):
                continue  # enqueued before a crash: never twice
            # intent first: a crash in between loses the first trial, never doubles it
            ctx.record(action, cid, key)
            study.enqueue_trial(plan.first_trial or {})
        return dists

    def _run_trials(
        self,
        study: optuna.Study,
        dists: dict[str, Any],
        dataset: DatasetVersion,
        allowance: TrainingAllowance,
        cid: str,
    ) -> list[TrialSummary]:
        """Run the cycle's trials, up to ``parallel_trials`` at once; rows settled before a
        restart are kept, rows trained but not settled are settled, rows left `running`
        run again with their Optuna number and parameters."""
        ctx = self.ctx
        files = (ctx.trains(dataset.file_hashes), ctx.holdouts(dataset.file_hashes))
        done: dict[int, TrialSummary] = {}
        todo: list[tuple[TrialPlan, TrialRunRow | None]] = []
        for i in range(allowance.trials):
            key = f"{cid}:trial:{i:03d}"
            row = ctx.book.trial(key)
            plan = TrialPlan(cid, i, key, dists, *files, 0, 0.0)
            if row is None or row.status == "running":
                todo.append((plan, row))
                continue
            if row.status in ("trained", "crashed"):  # before a restart: settle it now
                row = settle(ctx, study, plan, row, allowance.trials)
            done[i] = _summary(row)
        _CycleTrials(ctx, TrialRunner(ctx, study), allowance, done, cid).run(todo)
        return [done[i] for i in sorted(done)]

    def _register(
        self, best: TrialSummary, summaries: list[TrialSummary], dataset: DatasetVersion, cid: str
    ) -> int:
        ctx = self.ctx
        model = ctx.registry.register(
            policy_name=ctx.name,
            key=f"{cid}:candidate",
            artefact=ctx.local_artefact(best.artefact_path, best.artefact_sha256),
            cycle_id=cid,
            dataset_version=dataset.version,
            trial_key=best.key,
            params=best.params,
            tokens=sum(s.tokens for s in summaries),
            joules=sum(s.joules for s in summaries),
            energy_method=_trial_method(ctx.book.trials(cid)),
            valid_bpb=best.valid_bpb,
        )
        ctx.registry.set_challenger(
            ctx.name,
            model.version,
            by="trainer-agent",
            reason=f"candidate of {cid}",
            key=f"{cid}:challenger",
        )
        ctx.record(
            Action(
                "trainer",
                "register_candidate",
                "taken",
                f"registered v{model.version} from trial {best.number}",
                {
                    "version": model.version,
                    "sha256": model.artefact_sha256,
                    "dataset_version": dataset.version,
                    "params": best.params,
                    "cycle_tokens": model.tokens,
                    "cycle_joules": round(model.joules, 3),
                    "energy_method": model.energy_method,
                },
            ),
            cid,
            "trainer:register",
        )
        return model.version


Launch = Literal["started", "wait", "spent"]


class _CycleTrials:
    """The trials of one cycle still to run, run up to ``parallel_trials`` at once (capped
    by the factory's slots): each within its budget, reserved before it starts, so
    concurrent trials cannot overrun a budget together."""

    def __init__(
        self,
        ctx: LineContext,
        runner: TrialRunner,
        allowance: TrainingAllowance,
        done: dict[int, TrialSummary],
        cid: str,
    ) -> None:
        self.ctx, self.runner, self.allowance, self.done = ctx, runner, allowance, done
        # pruning compares with the cycle's trials finished before (a resumed cycle) and
        # those of this run, finished or running
        self.pool = TrialPool(ctx, runner, _curves(ctx.book.trials(cid)))
        self.grants: dict[str, tuple[int, float]] = {}  # running trials' reservations
        self.width = max(1, min(ctx.policy.tuning.parallel_trials, ctx.trial_slots()))
        if self.width > 1 and _shares_a_gpu(ctx):
            ctx.record(
                Action(
                    "trainer",
                    "parallel_trials",
                    "refused",
                    f"{self.width} trials at once would share this machine's GPU, and each "
                    "would be charged the board's whole energy: they run one at a time (a "
                    "Ray cluster gives each trial a GPU of its own)",
                    {"parallel_trials": self.width, "gpus": ctx.gpu_count},
                ),
                cid,
                "trainer:parallel_trials",
            )
            self.width = 1

    def run(self, todo: list[tuple[TrialPlan, TrialRunRow | None]]) -> None:
        interrupted: CycleInterrupted | None = None
        try:
            while todo or self.pool:
                while todo and len(self.pool) < self.width and interrupted is None:
                    if self.ctx.stop_event.is_set():  # the unrun trials run on resume
                        interrupted = CycleInterrupted(todo[0][0].key)
                        break
                    verdict = self._launch(*todo[0], trials_left=len(todo))
                    if verdict == "wait":  # a running trial may leave some budget unspent
                        break
                    todo.pop(0)
                    if verdict == "spent":
                        self._close_unrun(todo)
                        todo.clear()
                if not self.pool:
                    break
                try:
                    self._collect()
                except CycleInterrupted as exc:  # the others are stopping too: collect them
                    interrupted = interrupted or exc
                if self.ctx.budget is not None:  # what a trial costs, measured: a truer demand
                    self.ctx.budget.want(len(todo), self._mean_joules())
        finally:
            try:
                self.pool.abort()  # something raised: no trial outlives the node
            finally:
                for key in list(self.grants):
                    self._release(key)
        if interrupted is not None:
            raise interrupted

    def _collect(self) -> None:
        """The next trial to end: saved, settled, its reservation ended."""
        live, outcome = self.pool.next_done()
        try:
            row = self.runner.finish(live, outcome)
            row = settle(self.ctx, self.runner.study, live.plan, row, self.allowance.trials)
            self.done[live.plan.index] = _summary(row)
        finally:
            self._release(live.plan.key)  # on the ledger now (or it runs again on resume)
        self._audit_cluster(live.plan)

    def _audit_cluster(self, plan: TrialPlan) -> None:
        """The cluster went away and came back while this trial ran: the gap, audited."""
        take = getattr(self.ctx.cluster, "take_events", None)
        for n, event in enumerate(take() if take is not None else []):
            self.ctx.record(
                Action(
                    "trainer",
                    "cluster_reconnected",
                    "taken",
                    f"the Ray cluster at {event['address']} was unreachable for "
                    f"{event['gap_s']:g} s (from {event['unreachable_since']}); trials run "
                    "there again",
                    event,
                ),
                plan.cid,
                f"trainer:cluster:{plan.index:03d}:{n}",
            )

    def _launch(self, plan: TrialPlan, row: TrialRunRow | None, trials_left: int) -> Launch:
        """Start one trial: "started", "wait" (nothing fits while other trials of the cycle
        run) or "spent" (nothing is left for it)."""
        ctx, i = self.ctx, plan.index
        budget, refusal = decide_trial_budget(self._observe(trials_left), ctx.policy)
        grant = None
        if budget is not None:  # a trial's need: as measured in this cycle, else the plan's
            expected_j = self._mean_joules() or self.allowance.joules_per_trial
            grant = self._reserve(plan.key, budget, expected_j, plan.cid, i)
        if grant is None:
            if self.pool:
                return "wait"
            if ctx.stop_event.is_set():  # not spent: stopped while it waited for a share
                raise CycleInterrupted(plan.key)
            if refusal is not None:
                ctx.record(refusal, plan.cid, f"trainer:skip:{i:03d}")
            self._close_unrun([(plan, row)])
            return "spent"
        self.grants[plan.key] = grant
        plan = replace(
            plan,
            max_tokens=grant[0],
            max_joules=grant[1],
            threads=max(1, ctx.threads // self.width),
        )
        self.pool.start(self.runner.prepare(plan, row))
        return "started"

    def _observe(self, trials_left: int) -> TrialBudgetObservation:
        """What the cycle has spent: settled trials as booked, running ones at the most
        their reservation lets them spend; ``trials_left``: this one and those after it."""
        spent = list(self.done.values())
        return TrialBudgetObservation(
            self.allowance,
            spent_tokens=sum(s.tokens for s in spent) + sum(t for t, _ in self.grants.values()),
            spent_joules=sum(s.joules for s in spent) + sum(j for _, j in self.grants.values()),
            trials_left=trials_left,
        )

    def _reserve(
        self, key: str, budget: TrialBudget, expected_j: float, cid: str, i: int
    ) -> tuple[int, float] | None:
        """Reserve the trial's tokens and joules in the factory's budgets (so concurrent
        trials of other lines cannot overrun them together); None when nothing is left.
        While trials of this cycle run it does not wait for other lines: what its own
        trials leave unspent comes back first, and it asks again when one ends."""
        ctx = self.ctx
        tokens, joules = budget.max_tokens, budget.max_joules
        if ctx.budget is None:
            return tokens, joules
        grant = ctx.budget.reserve(
            key, tokens, joules, ctx.stop_event, expected_j, wait=not self.pool
        )
        useless = grant.tokens <= 0 or grant.joules <= 0
        if grant.action is not None and not (useless and self.pool):
            ctx.record(grant.action, cid, f"energy:reserve:{i:03d}")
        return None if useless else (grant.tokens, grant.joules)

    def _release(self, key: str) -> None:
        self.grants.pop(key, None)
        if self.ctx.budget is not None:
            self.ctx.budget.release(key)

    def _close_unrun(self, todo: list[tuple[TrialPlan, TrialRunRow | None]]) -> None:
        """Trials asked before a crash that will not run now must not stay `running`."""
        for plan, row in todo:
            if row is not None:
                row.status, row.error = "crashed", "not resumed: the allowance is spent"
                self.ctx.book.put_trial(row)
                settled = settle(self.ctx, self.runner.study, plan, row, plan.index + 1)
                self.done[plan.index] = _summary(settled)

    def _mean_joules(self) -> float:
        spent = [s.joules for s in self.done.values() if s.joules > 0]
        return sum(spent) / len(spent) if spent else 0.0


def _shares_a_gpu(ctx: LineContext) -> bool:
    """Would concurrent local trials run on (and meter) the same GPU?"""
    p = ctx.policy
    return p.cluster.kind == "local" and p.energy.prefer_gpu and ctx.gpu_count > 0


def _curves(rows: list[TrialRunRow]) -> list[list[tuple[int, float]]]:
    """Loss curves of the cycle's finished, unpruned trials (what pruning compares against)."""
    out = []
    for r in rows:
        result = json.loads(r.result or "{}")
        if r.status == "complete" and not result.get("pruned") and result.get("curve"):
            out.append([(int(t), float(v)) for t, v in result["curve"]])
    return out


def _summary(row: TrialRunRow) -> TrialSummary:
    r = json.loads(row.result or "{}")
    return TrialSummary(
        key=row.key,
        number=row.optuna_number,
        status=row.status,
        valid_bpb=r.get("valid_bpb"),
        tokens=int(r.get("tokens") or 0),
        joules=float(r.get("joules") or 0.0),
        params=json.loads(row.params),
        artefact_path=r.get("artefact_path") or "",
        artefact_sha256=r.get("artefact_sha256") or "",
        seconds=r.get("seconds"),
        energy_cost=r.get("energy_cost"),
    )


def _trial_method(rows: list[TrialRunRow]) -> str:
    methods = {json.loads(r.result or "{}").get("energy_method") for r in rows} - {None}
    return "measured" if methods == {"measured"} else "estimated"
