"""The line's Optuna study: one per policy and objective kind, in the store's database,
owned by the daemon (ask/tell); trial workers never write it."""

from __future__ import annotations

import optuna

from adapters.store.cycles import CycleBook
from adapters.store.db import member_connect_args
from policies.model import Policy

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_name(policy: Policy) -> str:
    kind = policy.tuning.objectives.kind
    return f"aifactory-{policy.name}" + ("" if kind == "quality" else f"-{kind}")


def open_storage(url: str, idle_tx_timeout_s: float | None = None) -> optuna.storages.RDBStorage:
    """One Optuna storage for the whole factory: made once, so lines starting together do
    not race to create its tables, and no engine is left behind per cycle. With other
    members on the database, its connections get their settings too."""
    if idle_tx_timeout_s is None:
        return optuna.storages.RDBStorage(url)
    engine_kwargs = {"connect_args": member_connect_args(idle_tx_timeout_s)}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def open_study(
    policy: Policy, storage: optuna.storages.BaseStorage, cycle_number: int
) -> optuna.Study:
    """A study's directions cannot change, hence one per objective kind; it opens in
    optuna-dashboard with the same database URL."""
    tuning = policy.tuning
    # pruning is decided by agents.trainer.should_prune on token-aligned loss curves
    # (progress arrives at irregular token counts, which step-indexed pruners cannot compare)
    study = optuna.create_study(
        study_name=study_name(policy),
        storage=storage,
        directions=["minimize"] if tuning.objectives.kind == "quality" else ["minimize"] * 2,
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once the history is known
        pruner=optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    # a different but reproducible stream per cycle, and per restart within one: the trials
    # the study already holds move the seed, so a cycle resumed after a crash does not
    # replay the draws it made before it
    asked = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(tuning.sampler, tuning.seed + cycle_number + asked)
    return study


def _sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # a constant liar: trials running at once (parallel_trials) count as bad results while
    # they run, so concurrent asks do not all sample the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def fail_orphans(study: optuna.Study, book: CycleBook, cid: str) -> None:
    """Trials asked for but never recorded (a crash in between) must not stay RUNNING, nor
    may a RUNNING trial of a cycle that has ended: with a constant liar, TPE would count it
    as a bad result for ever. It runs before the cycle's first ask, when nothing of this
    line's study is being asked."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        key, cycle = t.user_attrs.get("trial_key"), t.user_attrs.get("cycle")
        if cycle is None:  # the key is set first, the cycle last: a crash in between, or
            stale = True  # before either, leaves a trial no cycle will settle
        elif cycle == cid:
            stale = bool(key) and book.trial(key) is None
        else:
            row = book.get(cycle) if cycle else None
            stale = row is not None and row.status in ("completed", "failed")
        if stale:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def has_finished_trials(study: optuna.Study) -> bool:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return bool(study.get_trials(deepcopy=False, states=done))
