"""The controller's own cost per cycle: process CPU less the booked in-process work."""

from __future__ import annotations

import time

import pytest

from controller.cycle_cost import BookedCpu, CycleCpu, controller_figures


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_booked_in_process_work_is_not_the_controllers() -> None:
    booked = [0.0]
    cpu = CycleCpu(lambda: booked[0])
    mark = cpu.mark()
    _burn(0.05)  # the controller's own work
    start = time.process_time()
    _burn(0.2)  # evaluation, booked on the ledger with its window's CPU
    booked[0] += time.process_time() - start
    cpu.add("c1", mark)
    own = cpu.take("c1")
    assert 0.04 <= own < 0.15
    assert cpu.take("c1") is None  # taken once; an untimed cycle is unknown, not free


def test_segments_of_one_cycle_add_up() -> None:
    cpu = CycleCpu(lambda: 0.0)
    for _ in range(2):  # paused for a person, then resumed
        mark = cpu.mark()
        _burn(0.03)
        cpu.add("c1", mark)
    assert cpu.take("c1") >= 0.06


def test_figures_are_a_share_of_everything_the_cycle_spent() -> None:
    fig = controller_figures(2.0, 15.0, train_joules=2_000.0, eval_joules=970.0)
    assert fig["controller_joules"] == 30.0 and fig["controller_energy"] == "estimated"
    assert fig["controller_share_pct"] == pytest.approx(1.0)
    assert controller_figures(0.0, 15.0, 0.0, 0.0)["controller_share_pct"] is None


def test_every_lines_booked_work_comes_off_every_lines_figure() -> None:
    """The process clock counts all threads: line B's evaluation, booked while line A's
    cycle runs, is not line A's controller either."""
    booked = BookedCpu()  # the daemon's one
    line_a = CycleCpu(lambda: booked.total)
    mark = line_a.mark()
    start = time.process_time()
    _burn(0.2)  # line B's evaluation
    booked.add(time.process_time() - start)
    line_a.add("a1", mark)
    assert line_a.take("a1") < 0.1
    nothing = controller_figures(None, 15.0, 100.0, 10.0)
    assert nothing["controller_cpu_s"] is None and nothing["controller_share_pct"] is None


def test_a_clock_shared_with_serving_is_labelled_an_upper_bound() -> None:
    assert controller_figures(1.0, 15.0, 100.0, 0.0)["controller_upper_bound"] is False
    shared = controller_figures(1.0, 15.0, 100.0, 0.0, upper_bound=True)
    assert shared["controller_upper_bound"] is True
    assert controller_figures(None, 15.0, 1.0, 0.0, True)["controller_upper_bound"] is True
