"""SlotPool and SlottedCluster: at most N trials at once across lines, first come first
served, never a slot held without a trial. Over a fake inner cluster whose trials end when
the test says so (threads and events, no processes, no sleeps)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from adapters.cluster import (
    LocalProcessCluster,
    SlotPool,
    SlottedCluster,
    TrialJob,
    TrialOutcome,
)
from adapters.workload.protocol import TrainRequest
from policies.model import LocalClusterPolicy

WAIT_S = 10.0  # a generous bound for things that happen at once; never a guessed moment


@dataclass
class GatedCluster:
    """A trial starts (``started`` is set) and runs until its ``finish`` event is set."""

    started: dict[str, threading.Event] = field(default_factory=dict)
    finish: dict[str, threading.Event] = field(default_factory=dict)
    raises: bool = False
    closed: int = 0

    @property
    def description(self) -> str:
        return "gated test cluster"

    def gate(self, key: str) -> None:
        self.started[key], self.finish[key] = threading.Event(), threading.Event()

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome:
        self.started[job.key].set()
        assert self.finish[job.key].wait(WAIT_S), f"{job.key} was never finished"
        if self.raises:
            raise RuntimeError("the inner cluster broke")
        return TrialOutcome("ok")

    def close(self) -> None:
        self.closed += 1


def _job(key: str) -> TrialJob:
    return TrialJob(key=key, workload="bytelm", request=TrainRequest({}, [], [], 1, "/dev/null"))


class Line(threading.Thread):
    """One production line running one trial through its slotted cluster."""

    def __init__(self, cluster: SlottedCluster, key: str, stop: threading.Event | None = None):
        super().__init__(daemon=True)
        self.cluster, self.key, self.stop = cluster, key, stop
        self.outcome: TrialOutcome | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stop = self.stop.is_set if self.stop is not None else None
            self.outcome = self.cluster.run(_job(self.key), should_stop=stop)
        except BaseException as exc:  # the test looks at it
            self.error = exc


def _wait_until(cond: Callable[[], bool]) -> None:
    """Wait for a state another thread is about to reach (it does not depend on timing)."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError("condition never became true")


@pytest.fixture
def inner() -> GatedCluster:
    return GatedCluster()


@pytest.fixture
def lines(inner: GatedCluster) -> Iterator[list[Line]]:
    started: list[Line] = []
    yield started
    for ev in inner.finish.values():
        ev.set()
    for line in started:
        line.join(WAIT_S)


def _start(
    lines: list[Line],
    pool: SlotPool,
    inner: GatedCluster,
    name: str,
    stop: threading.Event | None = None,
) -> Line:
    inner.gate(name)
    line = Line(SlottedCluster(inner, pool, name), name, stop)
    line.start()
    lines.append(line)
    return line


def test_at_most_slots_trials_run_and_the_next_waits_its_turn(
    inner: GatedCluster, lines: list[Line]
) -> None:
    pool = SlotPool(2)
    a, b = (_start(lines, pool, inner, n) for n in ("a", "b"))
    assert inner.started["a"].wait(WAIT_S) and inner.started["b"].wait(WAIT_S)
    c = _start(lines, pool, inner, "c")
    _wait_until(lambda: pool.waiting() == ["c"])
    d = _start(lines, pool, inner, "d")
    _wait_until(lambda: pool.waiting() == ["c", "d"])  # first come, first served
    assert (pool.in_use, sorted(pool.holders())) == (2, ["a", "b"])
    assert not inner.started["c"].is_set()
    inner.finish["b"].set()
    b.join(WAIT_S)
    assert inner.started["c"].wait(WAIT_S) and not inner.started["d"].is_set()
    assert sorted(pool.holders()) == ["a", "c"] and pool.waiting() == ["d"]
    for name in ("a", "c", "d"):
        inner.finish[name].set()
    for line in (a, c, d):
        line.join(WAIT_S)
    assert all(ln.outcome is not None and ln.outcome.status == "ok" for ln in (a, b, c, d))
    assert pool.in_use == 0 and pool.holders() == [] and pool.waiting() == []


def test_a_stop_while_waiting_is_interrupted_without_running(
    inner: GatedCluster, lines: list[Line]
) -> None:
    pool = SlotPool(1)
    _start(lines, pool, inner, "a")
    assert inner.started["a"].wait(WAIT_S)
    stop = threading.Event()
    b = _start(lines, pool, inner, "b", stop=stop)
    _wait_until(lambda: pool.waiting() == ["b"])
    stop.set()
    b.join(WAIT_S)
    assert b.outcome is not None and b.outcome.status == "interrupted"
    assert "waiting for a trial slot" in b.outcome.error
    assert not inner.started["b"].is_set()
    assert pool.holders() == ["a"] and pool.waiting() == []


def test_the_slot_comes_back_when_the_inner_run_raises(
    inner: GatedCluster, lines: list[Line]
) -> None:
    pool = SlotPool(1)
    inner.raises = True
    a = _start(lines, pool, inner, "a")
    assert inner.started["a"].wait(WAIT_S)
    assert pool.holders() == ["a"]
    inner.finish["a"].set()
    a.join(WAIT_S)
    assert isinstance(a.error, RuntimeError) and pool.in_use == 0


def test_growing_lets_waiters_in_and_shrinking_waits_for_running_trials(
    inner: GatedCluster, lines: list[Line]
) -> None:
    pool = SlotPool(1)
    _start(lines, pool, inner, "a")
    assert inner.started["a"].wait(WAIT_S)
    _start(lines, pool, inner, "b")
    _wait_until(lambda: pool.waiting() == ["b"])
    assert pool.resize(2) is True
    assert inner.started["b"].wait(WAIT_S) and pool.in_use == 2
    assert pool.resize(1, timeout_s=0.0) is False  # both still run: none is cut short ...
    assert pool.slots == 1 and pool.in_use == 2
    _start(lines, pool, inner, "c")
    _wait_until(lambda: pool.waiting() == ["c"])
    shrunk: list[bool] = []
    waiter = threading.Thread(target=lambda: shrunk.append(pool.resize(1)))
    waiter.start()
    inner.finish["a"].set()  # ... one ends: the pool is within its size, c still waits
    waiter.join(WAIT_S)
    assert shrunk == [True] and pool.holders() == ["b"] and pool.waiting() == ["c"]
    inner.finish["b"].set()
    assert inner.started["c"].wait(WAIT_S)


@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_slots_are_a_positive_whole_number(slots: object) -> None:
    with pytest.raises(ValueError, match="slots"):
        SlotPool(slots)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slots"):
        SlotPool(1).resize(slots)  # type: ignore[arg-type]


def test_releasing_a_slot_nobody_holds_is_an_error() -> None:
    with pytest.raises(ValueError):
        SlotPool(1).release("nobody")


def test_close_and_configure_reach_the_inner_cluster(inner: GatedCluster) -> None:
    pool = SlotPool(3)
    slotted = SlottedCluster(inner, pool, "a")
    assert "gated test cluster" in slotted.description and "3" in slotted.description
    slotted.close()
    assert inner.closed == 1
    local = LocalProcessCluster()
    slotted = SlottedCluster(local, pool, "a")
    assert slotted.configure(LocalClusterPolicy(reuse_workers=False)) is True
    assert slotted.inner is local and local.reuse_workers is False
