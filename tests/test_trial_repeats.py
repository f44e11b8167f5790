"""A trial that would repeat parameters the cycle already ran is told that result, not run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from agents.trainer import duplicate_of
from controller.nodes.trial_run import TrialPlan, TrialRunner

DISTS = {"batch_size": CategoricalDistribution([16, 32])}


def test_only_the_same_parameters_are_a_repeat() -> None:
    finished = [(0, {"lr": 0.003, "batch_size": 32}), (1, {"lr": 0.001, "batch_size": 32})]
    assert duplicate_of({"lr": 0.001, "batch_size": 32}, finished) == 1
    assert duplicate_of({"lr": 0.001, "batch_size": 16}, finished) is None
    assert duplicate_of({"lr": 0.001}, finished) is None


def _finished(study: optuna.Study, batch: int, cycle: str, value: float | None) -> None:
    trial = study.ask(fixed_distributions=DISTS)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # consume the sampler's draw
    done = optuna.trial.create_trial(
        params={"batch_size": batch},
        distributions=DISTS,
        value=value,
        state=optuna.trial.TrialState.COMPLETE
        if value is not None
        else optuna.trial.TrialState.PRUNED,
        user_attrs={"cycle": cycle},
    )
    study.add_trial(done)


def _runner(study: optuna.Study) -> tuple[TrialRunner, list[Any]]:
    recorded: list[Any] = []
    ctx = SimpleNamespace(
        record=lambda action, cid, key: recorded.append((action, cid, key)),
        reporter=SimpleNamespace(info=lambda text: None),
    )
    return TrialRunner(ctx, study), recorded  # type: ignore[arg-type]


def _plan(cid: str) -> TrialPlan:
    return TrialPlan(cid, 1, f"{cid}:t001", DISTS, [], [], 1000, 1.0)


def test_a_repeat_in_the_cycle_is_told_the_earlier_result_and_audited() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    _finished(study, 32, "c1", 2.5)
    study.enqueue_trial({"batch_size": 32})  # what the sampler asks next: a repeat
    runner, recorded = _runner(study)
    trial = runner._ask_new(_plan("c1"))
    assert trial.params == {"batch_size": 16}  # something this cycle has not run
    (action, cid, key), *_ = recorded
    assert action.action == "skip_duplicate" and action.figures["duplicate_of"] == 1
    assert cid == "c1" and key.startswith("trainer:repeat:")
    repeat = study.get_trials(deepcopy=False)[2]
    assert repeat.state == optuna.trial.TrialState.COMPLETE and repeat.value == 2.5
    assert repeat.user_attrs["duplicate_of"] == 1


def test_a_pruned_repeat_is_pruned_and_other_cycles_do_not_count() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    _finished(study, 16, "c0", 2.0)  # another cycle, other data: may run again
    _finished(study, 32, "c1", None)  # pruned in this cycle
    study.enqueue_trial({"batch_size": 32})
    runner, recorded = _runner(study)
    trial = runner._ask_new(_plan("c1"))
    assert trial.params == {"batch_size": 16}
    assert recorded and {a.action for a, _, _ in recorded} == {"skip_duplicate"}
    told = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("duplicate_of")]
    assert len(told) == len(recorded)
    assert {t.state for t in told} == {optuna.trial.TrialState.PRUNED}


def test_an_exhausted_space_runs_the_repeat_without_asking_again() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    _finished(study, 16, "c1", 2.0)
    _finished(study, 32, "c1", 2.1)
    runner, recorded = _runner(study)
    trial = runner._ask_new(_plan("c1"))
    assert trial.params["batch_size"] in (16, 32) and recorded == []
    assert len(study.get_trials(deepcopy=False)) == 5  # 2 draws, 2 finished, this one


def test_a_pruned_repeat_carries_the_earlier_curve() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    curve = optuna.trial.create_trial(
        params={"batch_size": 32},
        distributions=DISTS,
        state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1000: 4.0, 2000: 3.9},
        user_attrs={"cycle": "c1"},
    )
    study.add_trial(curve)
    study.enqueue_trial({"batch_size": 32})
    runner, _ = _runner(study)
    runner._ask_new(_plan("c1"))
    repeat = study.get_trials(deepcopy=False)[1]
    assert repeat.state == optuna.trial.TrialState.PRUNED
    assert repeat.intermediate_values == {1000: 4.0, 2000: 3.9}


def test_a_trial_asked_but_never_marked_is_failed_before_the_next_cycle_asks() -> None:
    from controller.nodes.study import fail_orphans

    study = optuna.create_study()
    unmarked = study.ask(fixed_distributions=DISTS)  # a crash right after the ask
    repeat = study.ask(fixed_distributions=DISTS)  # a repeat marked, then a crash
    repeat.set_user_attr("trial_key", "c1:t001:repeat-1")
    repeat.set_user_attr("cycle", "c1")
    book = SimpleNamespace(trial=lambda key: None, get=lambda cid: None)
    fail_orphans(study, book, "c1")  # type: ignore[arg-type]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {
        unmarked.number: optuna.trial.TrialState.FAIL,
        repeat.number: optuna.trial.TrialState.FAIL,
    }
