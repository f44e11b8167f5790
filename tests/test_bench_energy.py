"""Energy-to-target reporting on made-up arms: no ratio from a missed target (its joules are
a lower bound), and the controller's own joules always shown as estimated."""

from __future__ import annotations

from typing import Any

import pytest

from bench import energy_to_target
from bench.daemon_runs import overhead, to_target

UNTUNED = "(d)/(c) untuned / controller"


def _trial(joules: float, reached: bool, method: str = "measured") -> dict[str, Any]:
    return {"joules": joules, "startup_joules": 0.0, "reached": reached, "method": method}


def _arm(*trials: dict[str, Any]) -> dict[str, Any]:
    """An arm as run_arm records it, built from its trials through to_target."""
    own = overhead(
        {"controller_cpu_s": 1.5, "controller_joules": 22.5, "controller_share_pct": 0.8}
    )
    return {"trials": list(trials), **to_target(list(trials)), "controller": own}


def test_two_arms_that_missed_give_no_ratio_even_where_it_would_read_2x() -> None:
    # both spend their whole budget without reaching: 2,000 J / 1,000 J would "meet" 2x
    arms = {
        "untuned": _arm(_trial(2_000.0, reached=False)),
        "controller": _arm(_trial(500.0, False), _trial(500.0, False)),
    }
    r = energy_to_target.ratios(arms)[UNTUNED]
    assert r["ratio"] is None and r["why"] == "n/a: (d) untuned did not reach the target"


@pytest.mark.parametrize(
    ("untuned_reached", "controller_reached", "why"),
    [
        (False, True, "n/a: (d) untuned did not reach the target"),
        (True, False, "n/a: (c) controller did not reach the target"),
    ],
)
def test_one_arm_that_missed_gives_no_ratio(
    untuned_reached: bool, controller_reached: bool, why: str
) -> None:
    arms = {
        "untuned": _arm(_trial(2_000.0, untuned_reached)),
        "controller": _arm(_trial(1_000.0, controller_reached)),
    }
    assert energy_to_target.ratios(arms)[UNTUNED] == {"ratio": None, "why": why}


def test_two_reaching_arms_give_the_ratio_of_joules_to_target() -> None:
    arms = {
        "untuned": _arm(_trial(2_000.0, True)),
        "controller": _arm(_trial(300.0, False), _trial(700.0, True), _trial(9.0, True)),
    }
    assert energy_to_target.ratios(arms)[UNTUNED] == {"ratio": 2.0, "why": None}


def test_the_controllers_joules_keep_their_estimated_label() -> None:
    summary = {
        "controller_cpu_s": 1.0,
        "controller_joules": 15.0,
        "controller_energy": "estimated",
        "controller_share_pct": 1.2,
    }
    assert overhead(summary)["controller_energy"] == "estimated"
    # a summary from a build that wrote no label: the figure was the same CPU-time estimate
    assert overhead({"controller_cpu_s": 1.0})["controller_energy"] == "estimated"


def test_the_report_labels_the_share_estimated_under_measured_joules(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    arms = {
        "controller": _arm(_trial(1_000.0, False)),
        "untuned": _arm(_trial(2_000.0, False)),
    }
    result = {
        "target_bpb": 3.0,
        "energy": "measured",
        "arms": arms,
        "ratios": energy_to_target.ratios(arms),
        "ratio_worker_per_trial_over_reused": {},
        "ceiling": {},
        "warm_start": {},
        "seconds": 1.0,
    }
    energy_to_target.report(result, tmp_path / "out.json")
    out = capsys.readouterr().out
    assert "joules measured" in out and "0.80% (estimated)" in out
    assert f"{UNTUNED}: n/a: (d) untuned did not reach the target" in out
    assert not [line for line in out.splitlines() if line.endswith("x")]  # no ratio printed
