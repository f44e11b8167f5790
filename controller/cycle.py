"""One production cycle as a LangGraph StateGraph, checkpointed after every step.

    data -> energy -> trainer -> evaluator -> [approval] -> deployer -> report
      \\________ nothing to do / refused / deferred _________________/

Nodes observe through adapters, call the agents' pure decision functions, apply the
resulting actions through adapters and audit each one. Every side effect carries a key
derived from the cycle id, so a node re-run after a crash (the checkpointer restarts the
step that was in flight) finds its earlier effects instead of repeating them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, TypedDict

import optuna
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from adapters.cluster.base import Cluster, TrialJob
from adapters.data_sources import DataSource
from adapters.energy import HostCpuEnergyMeter
from adapters.llm import Advisor, AdvisorError
from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog, DatasetVersion
from adapters.store.db import Store, utcnow_iso
from adapters.store.ledger import Ledger, today_utc
from adapters.store.registry import CHAMPION, ModelRegistry, ModelVersion
from adapters.store.rollouts import RolloutBook
from adapters.store.tables import TrialRunRow
from adapters.workload.protocol import TrainRequest, Workload
from agents.actions import Action
from agents.advisor import decide_advice
from agents.data import DataObservation, decide_data
from agents.deployer import decide_deploy
from agents.drift import js_divergence
from agents.energy import EnergyObservation, decide_energy, hour_of_day_utc
from agents.evaluator import Scores, judge
from agents.trainer import (
    TrialSummary,
    choose_candidate,
    distributions,
    energy_cost,
    pareto_front,
    should_prune,
    warm_start_params,
)
from controller.ingest import Ingestor
from controller.progress import ProgressReporter
from controller.rollout import LiveTraffic, RolloutStage
from policies.model import PLACEMENT_PARAMS, Policy

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The evaluator's serving measurement: greedy generations from fixed prompts, alternating
# candidate and champion; short enough to add about a second per cycle on a small model.
_SERVING_PROMPTS = ("def ", "import ", "class ", "    return ")
_SERVING_TOKENS = 32
_SERVING_ROUNDS = 5


class CycleInterrupted(Exception):
    """The daemon is stopping; the cycle stays checkpointed and resumes on restart."""


def _merge(a: dict[str, float] | None, b: dict[str, float] | None) -> dict[str, float]:
    return {**(a or {}), **(b or {})}


class CycleState(TypedDict, total=False):
    cycle_id: str
    trigger: str
    dataset_version: str | None
    retrain: bool
    allowance: dict[str, Any] | None
    trials: list[dict[str, Any]]
    new_files: list[str]
    champion_new_bpb: float | None
    new_since: float | None
    defer_for_h: float | None
    candidate_version: int | None
    blessed: bool
    approved: bool | None
    promoted: bool
    rollout: str | None  # running | paused | promoted | rolled_back | aborted
    canary_step: int
    canary_extensions: int
    canary_champion: dict[str, Any]
    canary_carry: dict[str, Any]  # evidence of a step being extended
    stage_s: Annotated[dict[str, float], _merge]


@dataclass
class FactoryContext:
    """Everything a cycle touches, built once by the daemon and passed in explicitly."""

    policy: Policy
    store: Store
    audit: AuditLog
    registry: ModelRegistry
    ledger: Ledger
    catalog: DataCatalog
    book: CycleBook
    cluster: Cluster
    workload: Workload
    workload_spec: str
    source: DataSource
    ingestor: Ingestor
    trials_dir: Path
    threads: int = 2
    reporter: ProgressReporter = field(default_factory=ProgressReporter)
    stop_event: threading.Event = field(default_factory=threading.Event)
    on_champion_changed: Callable[[], None] = lambda: None
    advisor: Advisor | None = None
    max_power_w: float = 0.0  # P_max for the Zeus-style cost (device maximum or host estimate)
    set_power_limit: Callable[[float, str], str] = lambda watts, key: "no GPU: knob ignored"
    power_knob_problem: str | None = "no GPU adapter"  # None: power limits may be set
    rollouts: RolloutBook | None = None
    traffic: LiveTraffic | None = None  # the serving endpoint's live figures (canary)

    @property
    def name(self) -> str:
        return self.policy.name

    def record(self, action: Action, cycle_id: str, key: str) -> None:
        self.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
            figures=action.figures,
            cycle_id=cycle_id,
            policy_version=self.policy.version,
            key=f"{cycle_id}:{key}",
        )

    def champion(self) -> ModelVersion | None:
        v = self.registry.alias(self.name, CHAMPION)
        return self.registry.get(self.name, v) if v is not None else None

    def champion_version(self) -> int | None:
        return self.registry.alias(self.name, CHAMPION)


def _timed(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def node(self: ProductionCycle, state: CycleState) -> dict[str, Any]:
            started = time.perf_counter()
            out = fn(self, state)
            # a node that runs more than once in a cycle (canary steps) adds up its time
            before = (state.get("stage_s") or {}).get(name, 0.0)
            out["stage_s"] = {name: round(before + time.perf_counter() - started, 3)}
            return out

        node.__name__ = fn.__name__
        return node

    return wrap


class ProductionCycle:
    """The graph's nodes, bound to one factory context."""

    def __init__(self, ctx: FactoryContext) -> None:
        self.ctx = ctx
        self.rollout = RolloutStage(ctx, CycleInterrupted)

    # data ---------------------------------------------------------------------------

    def _holdouts(self, hashes: tuple[str, ...] | list[str]) -> list[str]:
        return [str(self.ctx.ingestor.blob_paths(h)[1]) for h in hashes]

    def _trains(self, hashes: tuple[str, ...] | list[str]) -> list[str]:
        return [str(self.ctx.ingestor.blob_paths(h)[0]) for h in hashes]

    def _evaluate(self, artefact: str, files: list[str]) -> Any:
        return self.ctx.workload.evaluate(
            artefact,
            files,
            max_bytes=self.ctx.policy.data.eval_max_bytes,
            threads=self.ctx.threads,
        )

    def _book_eval(self, key: str, cid: str, tokens: int, reading: Any) -> None:
        """Evaluation work goes on the ledger too: it counts against the day's energy."""
        self.ctx.ledger.record(
            key=key,
            policy_name=self.ctx.name,
            cycle_id=cid,
            kind="eval",
            tokens=tokens,
            joules=reading.joules,
            method=reading.method,
        )

    def _score(self, artefact: str, files: list[str]) -> tuple[float, int]:
        res = self.ctx.workload.evaluate(
            artefact,
            files,
            max_bytes=self.ctx.policy.data.eval_max_bytes,
            threads=self.ctx.threads,
        )
        return res.bpb, res.tokens

    @_timed("data")
    def data(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        completed = ctx.book.completed_count(ctx.name)
        report = ctx.ingestor.ingest(
            ctx.source, completed, cycle_id=cid, policy_version=ctx.policy.version
        )
        dataset = ctx.catalog.latest(ctx.name)
        fresh = [f.sha256 for f in ctx.catalog.unassigned(ctx.name)]
        if fresh:
            dataset = self._new_dataset(dataset, fresh, cid)
        # "new" means no model has been trained on it yet: a deferred or failed cycle leaves
        # its data new for the next one (re-running this node computes the same answer)
        trained = self._last_trained_dataset()
        new = (
            sorted(set(dataset.file_hashes) - set(trained.file_hashes if trained else ()))
            if dataset is not None
            else []
        )
        if report.quarantined or fresh:
            ctx.record(
                Action(
                    "data",
                    "ingest",
                    "taken",
                    f"{len(fresh)} file(s) ingested into dataset "
                    f"{dataset.version if dataset else '-'}, {len(report.quarantined)} "
                    "quarantined",
                    {
                        "ingested": len(fresh),
                        "untrained_files": len(new),
                        "quarantined": len(report.quarantined),
                        "dataset_version": dataset.version if dataset else None,
                        "source": ctx.source.description,
                    },
                ),
                cid,
                "data:ingest",
            )
        champion = ctx.champion()
        obs = DataObservation(
            new_files=len(new),
            new_bytes=sum(f.size_bytes for f in ctx.catalog.files(ctx.name, new)),
            quarantined=len(report.quarantined),
            dataset_version=dataset.version if dataset else None,
            has_champion=champion is not None,
        )
        if champion is not None and new:
            obs = self._drift(obs, champion, new, cid)
        decision = decide_data(obs, ctx.policy)
        for i, action in enumerate(decision.actions):
            ctx.record(action, cid, f"data:{action.action}:{i}")
        ctx.reporter.info(f"[data] {decision.actions[-1].reason}")
        first_seen = [f.first_seen for f in ctx.catalog.files(ctx.name, new) if f.first_seen]
        return {
            "dataset_version": obs.dataset_version,
            "retrain": decision.retrain,
            "new_files": new,
            "champion_new_bpb": obs.champion_new_bpb,
            "new_since": _iso_to_unix(min(first_seen)) if first_seen else None,
        }

    def _last_trained_dataset(self) -> DatasetVersion | None:
        versions = self.ctx.registry.versions(self.ctx.name)
        return self.ctx.catalog.get(versions[-1].dataset_version) if versions else None

    def _histogram(self, hashes: list[str] | tuple[str, ...]) -> list[int]:
        hist = [0] * 256
        for h in hashes:
            for path in self.ctx.ingestor.blob_paths(h):
                data = path.read_bytes()
                for b in set(data):
                    hist[b] += data.count(b)
        return hist

    def _new_dataset(
        self, parent: DatasetVersion | None, new: list[str], cid: str
    ) -> DatasetVersion:
        files = sorted(set(parent.file_hashes if parent else ()) | set(new))
        digest = hashlib.sha256("\n".join([self.ctx.name, *files]).encode()).hexdigest()
        hist = list(parent.byte_hist) if parent else [0] * 256
        hist = [a + b for a, b in zip(hist, self._histogram(new), strict=True)]
        n_bytes = (parent.n_bytes if parent else 0) + sum(
            r.size_bytes for r in self.ctx.catalog.files(self.ctx.name, new)
        )
        return self.ctx.catalog.create(
            policy_name=self.ctx.name,
            version=digest[:16],
            parent=parent.version if parent else None,
            file_hashes=files,
            new_file_hashes=new,
            n_bytes=n_bytes,
            byte_hist=hist,
            cycle_id=cid,
        )

    def _drift(
        self, obs: DataObservation, champion: ModelVersion, new: list[str], cid: str
    ) -> DataObservation:
        """Both drift signals: byte-distribution JS, and the champion's loss on the new data."""
        ctx = self.ctx
        trained_on = ctx.catalog.get(champion.dataset_version)
        js = js_divergence(self._histogram(new), trained_on.byte_hist) if trained_on else None
        meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
        window = meter.begin()
        tokens = 0
        try:
            artefact = ctx.registry.verified_path(champion)
            new_bpb, tokens = self._score(artefact, self._holdouts(new))
            ref_files = self._holdouts(trained_on.file_hashes) if trained_on else []
            ref_bpb, ref_tokens = self._score(artefact, ref_files) if ref_files else (None, 0)
            tokens += ref_tokens
        except Exception as exc:  # a broken champion must not stop data handling
            ctx.reporter.info(f"[data] champion could not be scored: {exc}")
            new_bpb = ref_bpb = None
        reading = meter.end(window)
        self._book_eval(f"{cid}:drift-eval", cid, tokens, reading)
        return DataObservation(
            new_files=obs.new_files,
            new_bytes=obs.new_bytes,
            quarantined=obs.quarantined,
            dataset_version=obs.dataset_version,
            has_champion=True,
            js_divergence=js,
            champion_new_bpb=new_bpb,
            champion_ref_bpb=ref_bpb,
        )

    # energy -------------------------------------------------------------------------

    @_timed("energy")
    def energy(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        day_tokens = ctx.ledger.totals(ctx.name, day=today_utc(), kind="train").tokens
        day_joules = ctx.ledger.totals(ctx.name, day=today_utc()).joules  # every kind costs
        history = ctx.ledger.totals(ctx.name, kind="train")
        new_since = state.get("new_since")
        now = time.time()
        obs = EnergyObservation(
            day_tokens=day_tokens,
            day_joules=day_joules,
            joules_per_token=history.joules / history.tokens if history.tokens else None,
            energy_method=history.method,
            hour_utc=hour_of_day_utc(now),
            champion_new_bpb=state.get("champion_new_bpb"),
            deferred_h=max(0.0, (now - new_since) / 3600.0) if new_since else 0.0,
        )
        decision = decide_energy(obs, ctx.policy)
        for i, action in enumerate(decision.actions):
            ctx.record(action, cid, f"energy:{action.action}:{i}")
        ctx.reporter.info(f"[energy] {decision.actions[-1].reason}")
        a = decision.allowance
        return {
            "allowance": None if a is None else a.__dict__.copy(),
            "defer_for_h": decision.defer_for_h,
        }

    # trainer ------------------------------------------------------------------------

    def _study(self, cycle_number: int) -> optuna.Study:
        """The policy's study, owned by the daemon (ask/tell); trial workers never write it.

        One study per policy and objective kind (a study's directions cannot change); it
        opens in optuna-dashboard with the same database URL.
        """
        tuning = self.ctx.policy.tuning
        kind = tuning.objectives.kind
        # a different but reproducible stream per cycle, so cycles do not repeat samples
        seed = tuning.seed + cycle_number
        sampler: optuna.samplers.BaseSampler = (
            optuna.samplers.RandomSampler(seed=seed)
            if tuning.sampler == "random"
            else optuna.samplers.TPESampler(seed=seed)
        )
        # pruning is decided by agents.trainer.should_prune on token-aligned loss curves
        # (progress arrives at irregular token counts, which step-indexed pruners cannot compare)
        pruner = optuna.pruners.NopPruner()
        return optuna.create_study(
            study_name=study_name(self.ctx.policy),
            storage=optuna.storages.RDBStorage(self.ctx.store.url),
            directions=["minimize"] if kind == "quality" else ["minimize", "minimize"],
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )

    def _fail_orphans(self, study: optuna.Study, cid: str) -> None:
        """Trials asked for but never recorded (a crash in between) must not stay RUNNING."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            key = t.user_attrs.get("trial_key")
            if t.user_attrs.get("cycle") == cid and key and self.ctx.book.trial(key) is None:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    @_timed("trainer")
    def trainer(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        allowance = state.get("allowance") or {}
        n_trials = int(allowance.get("trials", 0))
        dataset = ctx.catalog.get(state["dataset_version"] or "")
        assert dataset is not None
        cycle = ctx.book.get(cid)
        study = self._study(cycle.number if cycle else 0)
        self._fail_orphans(study, cid)
        dists = distributions(ctx.policy)
        if "power_limit_w" in dists and ctx.power_knob_problem:
            del dists["power_limit_w"]  # plan without the knob; never fail the cycle for it
            ctx.record(
                Action(
                    "energy",
                    "tune_power_limit",
                    "refused",
                    f"power_limit_w is in the search space but not permitted here "
                    f"({ctx.power_knob_problem}); trials run at the current limit",
                    {"problem": ctx.power_knob_problem},
                ),
                cid,
                "energy:tune_power_limit",
            )
        champion = ctx.champion()
        warm = warm_start_params(champion.params if champion else None, ctx.policy)
        if warm is not None and champion is not None:
            warm_key = f"{cid}:trainer:warm_start"
            if not ctx.audit.has_key(warm_key):
                # intent first: a crash in between loses the warm start, never doubles it
                ctx.record(
                    Action(
                        "trainer",
                        "warm_start",
                        "taken",
                        f"first trial re-runs champion v{champion.version}'s parameters "
                        "on today's data",
                        {"params": warm},
                    ),
                    cid,
                    "trainer:warm_start",
                )
                study.enqueue_trial(warm)
        baseline = ctx.policy.tuning.baseline
        if warm is None and baseline and not _finished_trials(study):
            base_key = f"{cid}:trainer:baseline"
            if not ctx.audit.has_key(base_key):
                ctx.record(
                    Action(
                        "trainer",
                        "baseline",
                        "taken",
                        "cold study: the first trial is the operator's baseline configuration",
                        {"params": baseline},
                    ),
                    cid,
                    "trainer:baseline",
                )
                study.enqueue_trial(dict(baseline))
        train_files = self._trains(dataset.file_hashes)
        valid_files = self._holdouts(dataset.file_hashes)
        tokens_left = int(allowance.get("tokens_left", 0))
        joules_left = float(allowance.get("joules_left", 0.0))
        summaries: list[TrialSummary] = []
        for i in range(n_trials):
            key = f"{cid}:trial:{i:03d}"
            row = ctx.book.trial(key)
            if row is None or row.status == "running":
                spent_t = sum(s.tokens for s in summaries)
                spent_j = sum(s.joules for s in summaries)
                budget_t = min(int(allowance["tokens_per_trial"]), tokens_left - spent_t)
                if budget_t <= 0 or joules_left - spent_j <= 0:
                    ctx.record(
                        Action(
                            "trainer",
                            "run_trial",
                            "refused",
                            "the cycle's token or energy allowance is spent",
                            {
                                "tokens_left": tokens_left - spent_t,
                                "joules_left": round(joules_left - spent_j, 3),
                            },
                        ),
                        cid,
                        f"trainer:skip:{i:03d}",
                    )
                    break
                row = self._run_trial(
                    study,
                    dists,
                    key,
                    row,
                    i,
                    train_files,
                    valid_files,
                    budget_t,
                    joules_left - spent_j,
                    cid,
                    _curves(ctx.book.trials(cid)),
                )
            if row.status in ("trained", "crashed"):
                row = self._settle(study, row, i, n_trials, dists)
            summaries.append(_summary(row))
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
        if best is None:
            return {"trials": [s.__dict__ for s in summaries], "candidate_version": None}
        model = ctx.registry.register(
            policy_name=ctx.name,
            key=f"{cid}:candidate",
            artefact=best.artefact_path,
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
        return {"trials": [s.__dict__ for s in summaries], "candidate_version": model.version}

    def _run_trial(
        self,
        study: optuna.Study,
        dists: dict[str, Any],
        key: str,
        row: TrialRunRow | None,
        i: int,
        train_files: list[str],
        valid_files: list[str],
        max_tokens: int,
        max_joules: float,
        cid: str,
        earlier_curves: list[list[tuple[int, float]]],
    ) -> TrialRunRow:
        """Train one trial; returns its row saved as `trained` or `crashed` (not yet settled).

        A row left `running` by a crash is re-run with the same Optuna trial and parameters.
        """
        ctx = self.ctx
        trial: optuna.Trial | None = None  # resumed trials are not pruned (no live handle)
        if row is None:
            trial = study.ask(fixed_distributions=dists)
            trial.set_user_attr("trial_key", key)
            trial.set_user_attr("cycle", cid)
            params = {**ctx.policy.tuning.fixed, **trial.params}
            row = TrialRunRow(
                key=key,
                cycle_id=cid,
                study_name=study.study_name,
                optuna_number=trial.number,
                params=json.dumps(params, sort_keys=True),
                status="running",
                result="{}",
            )
            ctx.book.put_trial(row)
        params = json.loads(row.params)
        # placement knobs are applied by the controller; the rest goes to the workload
        workload_params = {k: v for k, v in params.items() if k not in PLACEMENT_PARAMS}
        placement: dict[str, Any] = {"device": str(params.get("device", "auto"))}
        if "power_limit_w" in params:
            placement["power_limit"] = ctx.set_power_limit(float(params["power_limit_w"]), key)
        job = TrialJob(
            key=key,
            workload=ctx.workload_spec,
            request=TrainRequest(
                params=workload_params,
                train_files=train_files,
                valid_files=valid_files,
                max_tokens=max_tokens,
                out_path=str(ctx.trials_dir / cid / f"trial-{i:03d}.pt"),
                seed=ctx.policy.tuning.seed + (row.optuna_number or 0),
                threads=ctx.threads,
                device=placement["device"],
            ),
            watts_per_core=ctx.policy.energy.watts_per_core,
            prefer_gpu=ctx.policy.energy.prefer_gpu,
            max_joules=max_joules,
        )
        label = _label(i, row, params, dists, ctx.policy.tuning.trials_per_cycle)
        ctx.reporter.trial_started(label, max_tokens)
        curve: list[tuple[int, float]] = []
        prune: dict[str, Any] = {"now": False, "median": None}

        def on_progress(p: Any) -> None:
            ctx.reporter.trial_progress(p)
            curve.append((int(p.tokens), float(p.loss)))
            if trial is not None and ctx.policy.tuning.objectives.kind == "quality":
                trial.report(p.loss, p.tokens)  # intermediate values for optuna-dashboard
            if not prune["now"]:
                prune["now"], prune["median"] = should_prune(
                    p.tokens, p.loss, max_tokens, earlier_curves, ctx.policy
                )

        outcome = ctx.cluster.run(
            job,
            on_progress=on_progress,
            should_stop=lambda: ctx.stop_event.is_set() or bool(prune["now"]),
        )
        res, energy, startup = outcome.result, outcome.energy, outcome.startup_energy
        pruned = bool(prune["now"]) and not ctx.stop_event.is_set()
        if outcome.status == "interrupted" and not pruned:
            if energy is not None:  # the abandoned attempt still cost energy: book it
                attempt = f"{key}:interrupted:{utcnow_iso()}"
                ctx.ledger.record(
                    key=attempt,
                    policy_name=ctx.name,
                    cycle_id=cid,
                    kind="train",
                    tokens=res.tokens if res else 0,
                    joules=energy.joules,
                    method=energy.method,
                )
                if startup is not None:
                    self._book_worker_startup(attempt, cid, startup.joules, startup.method)
            ctx.reporter.trial_finished(f"{label}: interrupted (resumes on restart)")
            raise CycleInterrupted(key)
        tokens = res.tokens if res else 0
        joules = energy.joules if energy else 0.0
        seconds = res.seconds if res else 0.0
        result = {
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
            "max_joules": round(max_joules, 3),
            "n_params": res.n_params if res else 0,
            "artefact_path": "" if pruned else (res.artefact_path if res else ""),
            "energy_cost": energy_cost(
                ctx.policy,
                tokens=tokens,
                joules=joules,
                seconds=seconds or 0.0,
                max_power_w=ctx.max_power_w,
            ),
            "pruned": pruned,
            "pruned_against_median_loss": prune["median"] if pruned else None,
            "placement": placement,
            # which worker process ran it, and its how-manieth trial; a fresh worker's
            # start-up is booked beside the trial (ledger), not in its cost (tuning)
            "worker": {
                "pid": outcome.worker_pid,
                "trial": outcome.worker_trial,
                "startup_joules": startup.joules if startup else 0.0,
                "startup_method": startup.method if startup else None,
            },
            "curve": curve[:: max(1, len(curve) // 40)],
        }
        row.result = json.dumps(result, sort_keys=True, default=str)
        row.status = "trained" if outcome.status == "ok" or pruned else "crashed"
        row.error = outcome.error[:2000]
        ctx.book.put_trial(row)
        return row

    def _book_worker_startup(self, key: str, cid: str, joules: float, method: str) -> None:
        """A fresh worker's start-up, booked once beside the trial that started it: the day's
        budget counts it, the trial's own cost (which tuning compares) does not."""
        self.ctx.ledger.record(
            key=f"{key}:worker-startup",
            policy_name=self.ctx.name,
            cycle_id=cid,
            kind="train",
            tokens=0,
            joules=joules,
            method=method,
        )

    def _settle(
        self, study: optuna.Study, row: TrialRunRow, i: int, n: int, dists: dict[str, Any]
    ) -> TrialRunRow:
        """Book, tell and audit a trained or crashed trial; each step is idempotent."""
        ctx, cid = self.ctx, row.cycle_id
        r = json.loads(row.result or "{}")
        params = json.loads(row.params)
        tokens, joules = int(r.get("tokens") or 0), float(r.get("joules") or 0.0)
        method = r.get("energy_method") or "estimated"
        ctx.ledger.record(
            key=row.key,
            policy_name=ctx.name,
            cycle_id=cid,
            kind="train",
            tokens=tokens,
            joules=joules,
            method=method,
        )
        worker = r.get("worker") or {}
        if worker.get("startup_joules"):
            self._book_worker_startup(
                row.key,
                cid,
                float(worker["startup_joules"]),
                worker.get("startup_method") or "estimated",
            )
        bpb = r.get("valid_bpb")
        cost = r.get("energy_cost")
        multi = ctx.policy.tuning.objectives.kind != "quality"
        pruned = bool(r.get("pruned"))
        ok = (
            row.status == "trained"
            and not pruned
            and bpb is not None
            and math.isfinite(bpb)
            and (not multi or cost is not None)
        )
        if row.optuna_number is not None:
            trial_state = optuna.trial.TrialState
            if ok:
                values = [bpb, cost] if multi else bpb
                study.tell(row.optuna_number, values, skip_if_finished=True)
            else:
                study.tell(
                    row.optuna_number,
                    state=trial_state.PRUNED if pruned else trial_state.FAIL,
                    skip_if_finished=True,
                )
        figures = {k: v for k, v in r.items() if k != "artefact_path"} | {"params": params}
        label = _label(i, row, params, dists, n)
        first_error = row.error.splitlines()[0] if row.error else "unknown error"
        if pruned:
            ctx.record(
                Action(
                    "trainer",
                    "prune_trial",
                    "taken",
                    f"trial {row.optuna_number} pruned after {tokens:,} tokens: its training "
                    f"loss was more than {ctx.policy.tuning.pruning.margin_pct:g}% worse than the "
                    "median of earlier trials at the same token count",
                    figures,
                ),
                cid,
                f"trainer:trial:{i:03d}",
            )
            ctx.reporter.trial_finished(f"{label}: pruned after {tokens:,} tokens")
            row.status = "pruned"
            ctx.book.put_trial(row)
            return row
        if ok:
            tpj = f", {tokens / joules:,.0f} tokens/J {method}" if joules else ""
            ctx.record(
                Action(
                    "trainer",
                    "run_trial",
                    "taken",
                    f"trial {row.optuna_number} finished: {bpb:.4f} bits/byte "
                    f"({r.get('stopped_reason')})",
                    figures,
                ),
                cid,
                f"trainer:trial:{i:03d}",
            )
            ctx.reporter.trial_finished(
                f"{label}: {bpb:.4f} bits/byte, {tokens:,} tokens, {joules:,.0f} J {method}{tpj}"
            )
        else:
            ctx.record(
                Action(
                    "trainer",
                    "run_trial",
                    "failed",
                    f"trial {row.optuna_number} failed: {first_error}",
                    figures | {"error": row.error[:500]},
                ),
                cid,
                f"trainer:trial:{i:03d}",
            )
            ctx.reporter.trial_finished(f"{label}: FAILED ({first_error})")
        row.status = "complete" if ok else "failed"
        ctx.book.put_trial(row)
        return row

    # evaluator ----------------------------------------------------------------------

    @_timed("evaluator")
    def evaluator(self, state: CycleState) -> dict[str, Any]:
        """Score candidate and champion on the same held-out data, then apply the gates.

        recent: held-out tails of the data the champion never saw (all data for a first model);
        reference: held-out tails of the data the champion was trained on.
        """
        ctx, cid = self.ctx, state["cycle_id"]
        candidate = ctx.registry.get(ctx.name, int(state["candidate_version"] or 0))
        dataset = ctx.catalog.get(state["dataset_version"] or "")
        assert candidate is not None and dataset is not None
        champion = ctx.champion()
        champion_data = ctx.catalog.get(champion.dataset_version) if champion else None
        unseen = sorted(
            set(dataset.file_hashes) - set(champion_data.file_hashes if champion_data else ())
        )
        recent = self._holdouts(unseen or dataset.file_hashes)
        reference = self._holdouts(champion_data.file_hashes) if champion_data else recent
        meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
        window = meter.begin()
        tokens = 0
        problems: dict[int, str] = {}

        def scores(model: ModelVersion) -> Scores | None:
            nonlocal tokens
            try:
                path = ctx.registry.verified_path(model)
                r = self._evaluate(path, recent)
                f = self._evaluate(path, reference)
                tokens += r.tokens + f.tokens
                return Scores(r.bpb, f.bpb, tuple(r.chunk_bpb))
            except Exception as exc:
                problems[model.version] = f"{type(exc).__name__}: {exc}"
                ctx.reporter.info(f"[evaluator] v{model.version} could not be scored: {exc}")
                return None

        cand = scores(candidate)
        champ = scores(champion) if champion is not None else None
        champion_problem = None
        if champion is not None and (champ is None or not champ.finite):
            champion_problem = problems.get(champion.version, "its scores are not finite")
        served = ServingCheck(problem="not scored")
        if cand is not None:
            served = self._measure_serving(candidate, champion if champ is not None else None)
            cand = replace(
                cand, energy_method=served.method, **served.figures.get(candidate.version, {})
            )
            if champ is not None and champion is not None:
                champ = replace(
                    champ, energy_method=served.method, **served.figures.get(champion.version, {})
                )
        reading = meter.end(window)  # the serving check is evaluation work too: booked with it
        self._book_eval(f"{cid}:eval", cid, tokens, reading)
        verdict = judge(cand, champ, ctx.policy, champion_problem=champion_problem)
        action, blessed = verdict.action, verdict.blessed
        if blessed and served.problem:
            action = replace(
                action,
                outcome="refused",
                reason=f"candidate failed the load-and-query check: {served.problem}",
            )
            blessed = False
        action = action.with_figures(
            candidate=candidate.version,
            champion=champion.version if champion else None,
            recent_files=len(unseen or dataset.file_hashes),
            reference_files=len(champion_data.file_hashes) if champion_data else 0,
            eval_tokens=tokens,
            eval_joules=round(reading.joules, 3),
            energy_method=reading.method,
            **({"serving_energy_method": served.method} if served.method else {}),
        )
        figures = action.figures
        ctx.record(action, cid, "evaluator:bless")
        ctx.registry.set_verdict(
            ctx.name, candidate.version, "blessed" if blessed else "refused", figures
        )
        ctx.reporter.info(
            f"[evaluator] v{candidate.version} {'BLESSED' if blessed else 'REFUSED'}: "
            f"{action.reason}"
        )
        return {"blessed": blessed}

    def _measure_serving(
        self, candidate: ModelVersion, champion: ModelVersion | None
    ) -> ServingCheck:
        """Load the candidate the way serving will and ask it test requests (the
        load-and-query check), then time generation of candidate and champion in alternating
        rounds so both see the same machine load."""
        ctx = self.ctx
        gens: dict[int, Any] = {}
        try:
            gens[candidate.version] = ctx.workload.load(
                ctx.registry.verified_path(candidate), threads=1
            )
            first = gens[candidate.version].generate("def ", max_tokens=8, temperature=0.0, seed=0)
            if first.completion_tokens <= 0:
                return ServingCheck(problem="empty completion")
        except Exception as exc:
            return ServingCheck(problem=f"{type(exc).__name__}: {exc}")
        if champion is not None:
            with contextlib.suppress(Exception):  # a broken champion is judged elsewhere
                gens[champion.version] = ctx.workload.load(
                    ctx.registry.verified_path(champion), threads=1
                )
        meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
        per_token: dict[int, list[float]] = {v: [] for v in gens}
        spent: dict[int, list[float]] = {v: [0.0, 0.0] for v in gens}  # tokens, joules
        try:
            for round_ in range(_SERVING_ROUNDS):
                for version, gen in gens.items():
                    window = meter.begin()
                    try:
                        done = gen.generate(
                            _SERVING_PROMPTS[round_ % len(_SERVING_PROMPTS)],
                            max_tokens=_SERVING_TOKENS,
                            temperature=0.0,
                            seed=round_,
                        )
                    except Exception as exc:
                        if version == candidate.version:
                            return ServingCheck(problem=f"{type(exc).__name__}: {exc}")
                        continue
                    reading = meter.end(window)
                    tokens = max(1, done.completion_tokens)
                    per_token[version].append(1000.0 * reading.seconds / tokens)
                    spent[version][0] += tokens
                    spent[version][1] += reading.joules
        finally:
            for gen in gens.values():
                close = getattr(gen, "close", None)
                if callable(close):
                    close()
        figures = {
            version: {
                "latency_ms_per_token": statistics.median(times),
                "tokens_per_joule": spent[version][0] / spent[version][1]
                if spent[version][1] > 0
                else None,
            }
            for version, times in per_token.items()
            if times
        }
        return ServingCheck(problem="", method=meter.method, figures=figures)

    # approval and deployer ------------------------------------------------------------

    @_timed("approval")
    def approval(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        version = int(state["candidate_version"] or 0)
        request = ctx.book.request_approval(ctx.name, cid, version)
        ctx.record(
            Action(
                "deployer",
                "request_approval",
                "deferred",
                f"v{version} awaits a person: `aifactory approve {request.id}` or "
                f"`aifactory reject {request.id} --reason ...`",
                {"approval_id": request.id, "candidate": version},
            ),
            cid,
            "deployer:request_approval",
        )
        answer = interrupt({"approval_id": request.id, "candidate_version": version})
        approved = bool(answer.get("approved"))
        ctx.record(
            Action(
                "deployer",
                "approval",
                "taken" if approved else "refused",
                f"{'approved' if approved else 'rejected'} by {answer.get('by', '?')}: "
                f"{answer.get('reason', '')}",
                {"approval_id": request.id, "by": answer.get("by"), "reason": answer.get("reason")},
            ),
            cid,
            "deployer:approval",
        )
        return {"approved": approved}

    @_timed("deployer")
    def deployer(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        champion = ctx.champion()
        candidate = state.get("candidate_version")
        decision = decide_deploy(
            bool(state.get("blessed")),
            candidate,
            champion.version if champion else None,
            ctx.policy,
            state.get("approved"),
        )
        promoted = False
        if decision.step == "promote" and candidate is not None and champion is not None:
            spec = ctx.policy.rollout
            if spec is not None and ctx.traffic is not None and ctx.rollouts is not None:
                return self.rollout.begin(cid, candidate, champion.version, decision.action.reason)
            if spec is not None:
                reason = "serving is off: no live traffic to run a canary on"
                decision = replace(
                    decision,
                    action=replace(decision.action, reason=f"{decision.action.reason} ({reason})"),
                )
        if decision.step == "promote" and candidate is not None:
            ctx.registry.promote(
                ctx.name,
                candidate,
                by="deployer-agent",
                reason=decision.action.reason,
                key=f"{cid}:promote",
            )
            ctx.on_champion_changed()
            promoted = True
        ctx.record(decision.action, cid, "deployer:promote")
        ctx.reporter.info(f"[deployer] {decision.action.reason}")
        return {"promoted": promoted}

    @_timed("canary")
    def canary(self, state: CycleState) -> dict[str, Any]:
        return self.rollout.canary(state)

    def canary_review(self, state: CycleState) -> dict[str, Any]:
        return self.rollout.canary_review(state)

    # report -------------------------------------------------------------------------

    @_timed("report")
    def report(self, state: CycleState) -> dict[str, Any]:
        """Ask the optional LLM advisor to explain the cycle, within the agent-token budget."""
        ctx, cid = self.ctx, state["cycle_id"]
        spec = ctx.policy.advisor
        key = f"{cid}:advisor:explain"
        if ctx.advisor is None or spec is None or ctx.audit.has_key(key):
            return {}
        events = [e for e in ctx.audit.events(cycle_id=cid) if e.agent != "controller"]
        question = "What did this production cycle decide, and why?\n" + "\n".join(
            f"- {e.agent}/{e.action}: {e.outcome}: {e.reason}" for e in events
        )
        used = ctx.ledger.totals(ctx.name, day=today_utc(), kind="llm").tokens
        gate = decide_advice(
            used_today=used,
            budget=ctx.policy.budgets.agent_llm_tokens_per_day,
            prompt_tokens_estimate=len(question) // 3 + 64,
            max_tokens=spec.max_tokens,
        )
        if gate.outcome != "taken":
            ctx.record(gate, cid, "advisor:explain")
            return {}
        try:
            answer = ctx.advisor.explain(question, spec.max_tokens)
        except AdvisorError as exc:
            ctx.record(
                Action(
                    "advisor",
                    "explain",
                    "failed",
                    f"advisor unavailable: {exc}",
                    gate.figures | {"model": spec.model},
                ),
                cid,
                "advisor:explain",
            )
            return {}
        ctx.ledger.record(
            key=key,
            policy_name=ctx.name,
            cycle_id=cid,
            kind="llm",
            tokens=answer.total_tokens,
            joules=0.0,
            method="unmetered",
        )
        ctx.record(
            Action(
                "advisor",
                "explain",
                "taken",
                answer.text[:4000] or "(empty answer)",
                gate.figures
                | {
                    "model": answer.model,
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": answer.completion_tokens,
                },
            ),
            cid,
            "advisor:explain",
        )
        ctx.reporter.info(f"[advisor] {answer.text[:300]}")
        return {}

    # graph --------------------------------------------------------------------------

    def build(self, checkpointer: Any) -> Any:
        g = StateGraph(CycleState)
        g.add_node("data", self.data)
        g.add_node("energy", self.energy)
        g.add_node("trainer", self.trainer)
        g.add_node("evaluator", self.evaluator)
        g.add_node("approval", self.approval)
        g.add_node("deployer", self.deployer)
        g.add_node("canary", self.canary)
        g.add_node("canary_review", self.canary_review)
        g.add_node("report", self.report)
        g.add_edge(START, "data")
        g.add_conditional_edges(
            "data", lambda s: "energy" if s.get("retrain") else "report", ["energy", "report"]
        )
        g.add_conditional_edges(
            "energy",
            lambda s: "trainer" if (s.get("allowance") or {}).get("trials") else "report",
            ["trainer", "report"],
        )
        g.add_conditional_edges(
            "trainer",
            lambda s: "evaluator" if s.get("candidate_version") else "report",
            ["evaluator", "report"],
        )
        g.add_conditional_edges("evaluator", self._after_eval, ["approval", "deployer"])
        g.add_edge("approval", "deployer")
        g.add_conditional_edges("deployer", _after_rollout_step, ["canary", "report"])
        g.add_conditional_edges(
            "canary", _after_rollout_step, ["canary", "canary_review", "report"]
        )
        g.add_conditional_edges("canary_review", _after_rollout_step, ["canary", "report"])
        g.add_edge("report", END)
        return g.compile(checkpointer=checkpointer)

    def _after_eval(self, state: CycleState) -> str:
        if state.get("blessed") and self.ctx.policy.approval == "required":
            return "approval"
        return "deployer"


@dataclass(frozen=True)
class ServingCheck:
    """The evaluator's serving measurement: `problem` is '' when the candidate answered;
    `figures` holds latency per token and tokens/J per version, measured by `method`."""

    problem: str
    method: str | None = None
    figures: dict[int, dict[str, float | None]] = field(default_factory=dict)


def _after_rollout_step(state: CycleState) -> str:
    rollout = state.get("rollout")
    if rollout == "running":
        return "canary"
    if rollout == "paused":
        return "canary_review"
    return "report"


def _iso_to_unix(text: str) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _finished_trials(study: optuna.Study) -> bool:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return bool(study.get_trials(deepcopy=False, states=done))


def _curves(rows: list[TrialRunRow]) -> list[list[tuple[int, float]]]:
    """Loss curves of the cycle's finished, unpruned trials (what pruning compares against)."""
    out = []
    for r in rows:
        result = json.loads(r.result or "{}")
        if r.status == "complete" and not result.get("pruned") and result.get("curve"):
            out.append([(int(t), float(v)) for t, v in result["curve"]])
    return out


def study_name(policy: Policy) -> str:
    kind = policy.tuning.objectives.kind
    return f"aifactory-{policy.name}" + ("" if kind == "quality" else f"-{kind}")


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
        seconds=r.get("seconds"),
        energy_cost=r.get("energy_cost"),
    )


def _trial_method(rows: list[TrialRunRow]) -> str:
    methods = {json.loads(r.result or "{}").get("energy_method") for r in rows} - {None}
    return "measured" if methods == {"measured"} else "estimated"


def _label(i: int, row: TrialRunRow, params: dict[str, Any], dists: dict[str, Any], n: int) -> str:
    return f"[trainer] trial {i + 1}/{n} (#{row.optuna_number}) {_short(params, dists)}"


def _short(params: dict[str, Any], dists: dict[str, Any]) -> str:
    parts = []
    for k in dists:
        v = params.get(k)
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
