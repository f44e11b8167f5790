"""The factory's GPUs shared by trials of several lines: one device, one power limit at a
time; the facility cap bounds it; every setting audited with its line."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from adapters.store.audit import AuditLog
from adapters.store.db import Store
from controller.gpu import FactoryGpus
from policies.loader import parse_policy


@dataclass
class _Result:
    status: str
    previous: float
    message: str = ""


class _Guard:
    def __init__(self) -> None:
        self.applied: list[float] = []

    def apply_power_limit_w(self, index: int, watts: float, reason: str) -> _Result:
        self.applied.append(watts)
        return _Result("applied", 700.0)


def _gpus(store: Store, cap: float | None = None) -> tuple[FactoryGpus, _Guard]:
    gpus = FactoryGpus(store, AuditLog(store), None)
    device = SimpleNamespace(index=0, power_limit_min_w=200.0, power_limit_max_w=700.0)
    gpus.gpu = SimpleNamespace(devices=lambda: [device])
    gpus.guard = guard = _Guard()  # type: ignore[assignment]
    gpus.facility_cap_w = cap
    return gpus, guard


def test_one_trial_at_a_time_holds_the_device_limit(store: Store) -> None:
    gpus, guard = _gpus(store)
    a, b = parse_policy("name: a"), parse_policy("name: b")
    assert gpus.set_power_limit(a, 400.0, "a-c1:trial:000").startswith("applied")
    refused = gpus.set_power_limit(b, 300.0, "b-c1:trial:000")
    assert refused.startswith("refused") and "a-c1:trial:000" in refused
    assert guard.applied == [400.0]  # b's trial did not move a's limit
    gpus.trial_ended("a-c1:trial:000")
    assert gpus.set_power_limit(b, 300.0, "b-c1:trial:001").startswith("applied")
    events = [e for e in AuditLog(store).events(agent="energy") if e.action == "set_power_limit"]
    assert [(e.line, e.outcome) for e in events] == [
        ("a", "taken"),
        ("b", "refused"),
        ("b", "taken"),
    ]


def test_the_facility_cap_bounds_the_limit(store: Store) -> None:
    gpus, guard = _gpus(store, cap=350.0)
    status = gpus.set_power_limit(parse_policy("name: a"), 500.0, "a-c1:trial:000")
    assert guard.applied == [350.0] and "facility cap 350 W" in status
