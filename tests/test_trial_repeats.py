"""A trial that would repeat parameters the cycle ran, or is running, is not trained: it is
recorded as failed (samplers ignore it, so the point counts once) and audited."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from agents.trainer import duplicate_of
from controller.nodes.trial_run import TrialPlan, TrialRunner
from policies.loader import load_policy

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


def test_a_repeat_in_the_cycle_is_failed_not_copied_and_audited() -> None:
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
    # a copy of 2.5 would count the point twice for every later cycle's sampler
    assert repeat.state == optuna.trial.TrialState.FAIL and repeat.value is None
    assert repeat.user_attrs["duplicate_of"] == 1


def test_a_pruned_repeat_is_skipped_and_other_cycles_do_not_count() -> None:
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
    assert {t.state for t in told} == {optuna.trial.TrialState.FAIL}


def test_an_exhausted_space_runs_the_repeat_without_asking_again() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    _finished(study, 16, "c1", 2.0)
    _finished(study, 32, "c1", 2.1)
    runner, recorded = _runner(study)
    trial = runner._ask_new(_plan("c1"))
    assert trial.params["batch_size"] in (16, 32) and recorded == []
    assert len(study.get_trials(deepcopy=False)) == 5  # 2 draws, 2 finished, this one


def test_a_repeat_of_a_trial_still_running_is_skipped() -> None:
    """Parallel trials: the point running beside this ask counts as run."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    running = study.ask(fixed_distributions=DISTS)
    running.set_user_attr("cycle", "c1")
    study.enqueue_trial({"batch_size": running.params["batch_size"]})
    runner, recorded = _runner(study)
    trial = runner._ask_new(_plan("c1"))
    assert trial.params != running.params
    assert [a.figures["duplicate_of"] for a, _, _ in recorded][:1] == [running.number]


def test_repeats_do_not_pile_up_in_a_study_later_cycles_share() -> None:
    """Ten cycles of a TPE search on a 4-point space, 4 trials each: every cycle trains
    each point once, and the study holds exactly those trained results."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for cycle in range(10):
        cid = f"c{cycle}"
        runner, _ = _runner(study)
        dists = {"batch_size": CategoricalDistribution([8, 16, 32, 64])}
        plan = TrialPlan(cid, 1, f"{cid}:t", dists, [], [], 1000, 1.0)
        trained = []
        for _ in range(4):
            trial = runner._ask_new(plan)
            trial.set_user_attr("cycle", cid)
            trained.append(trial.params["batch_size"])
            study.tell(trial, 1.0 + trial.params["batch_size"] / 100)
        assert sorted(trained) == [8, 16, 32, 64], cid
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 40


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


def test_a_cycle_reopened_after_a_crash_does_not_replay_its_draws(tmp_path: Path) -> None:
    """The seed moves with the trials the study holds: a restart mid-cycle draws afresh."""
    from controller.nodes.study import open_study

    policy = load_policy(Path(__file__).parent / "configs" / "tiny.yaml")
    policy = policy.model_copy(
        update={"tuning": policy.tuning.model_copy(update={"sampler": "random"})}
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}
    first = open_study(policy, storage, 3).ask(fixed_distributions=dists).params
    again = open_study(policy, storage, 3).ask(fixed_distributions=dists).params
    assert first != again
