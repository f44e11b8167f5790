"""Trial slots shared by many production lines: at most N trials run at once, factory-wide.

Where it sits in the loop: the *act* side, between a line's trainer and its cluster. Every
line keeps its own cluster (its own warm worker), wrapped in a :class:`SlottedCluster` over
one shared :class:`SlotPool`; a trial waits for a slot, runs, and hands the slot back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters.cluster.base import Cluster, ClusterView, TrialJob, TrialOutcome
from adapters.cluster.factory import reconfigure
from adapters.workload.protocol import TrainProgress

if TYPE_CHECKING:
    from policies.model import ClusterPolicy

__all__ = ["SlotPool", "SlottedCluster"]


class SlotPool:
    """``slots`` trials may run at once across the factory; who runs them, who waits.

    Contract: thread-safe (each line runs its trials on its own thread). Slots go to waiters
    first come, first served. :meth:`acquire` gives up as soon as it sees ``should_stop``
    true (polled every ``stop_poll_s``), so a stopping daemon never waits for another line's
    trial. :meth:`resize` puts the new size in force at once: no slot is handed out beyond
    it, and running trials are never cut short (shrinking waits for them to finish).
    """

    def __init__(self, slots: int, stop_poll_s: float = 0.1) -> None:
        _check_slots(slots)
        self._slots = slots
        self._stop_poll_s = stop_poll_s
        self._cond = threading.Condition()
        self._holders: list[str] = []
        self._queue: deque[tuple[object, str]] = deque()

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def in_use(self) -> int:
        with self._cond:
            return len(self._holders)

    def holders(self) -> list[str]:
        """Names holding a slot now, in the order they got it (for status)."""
        with self._cond:
            return list(self._holders)

    def waiting(self) -> list[str]:
        """Names waiting for a slot, first in line first."""
        with self._cond:
            return [name for _, name in self._queue]

    def acquire(self, name: str, should_stop: Callable[[], bool] | None = None) -> bool:
        """Wait for a slot and take it for ``name``; False if asked to stop first."""
        ticket = (object(), name)
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and len(self._holders) < self._slots):
                    if should_stop is not None and should_stop():
                        return False
                    self._cond.wait(self._stop_poll_s if should_stop is not None else None)
                self._holders.append(name)
                return True
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may go (or may now be first)

    def release(self, name: str) -> None:
        """Hand ``name``'s slot back; a name that holds none is an error (a bookkeeping bug)."""
        with self._cond:
            self._holders.remove(name)  # ValueError if it held none
            self._cond.notify_all()

    def resize(self, slots: int, timeout_s: float | None = None) -> bool:
        """Set the number of slots; True once no more than ``slots`` are in use (False if
        ``timeout_s`` passed first: the new size holds anyway, running trials finish)."""
        _check_slots(slots)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._slots = slots
            self._cond.notify_all()  # growing lets waiters in at once
            while len(self._holders) > slots:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True


def _check_slots(slots: int) -> None:
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be a whole number >= 1, not {slots!r}")


class SlottedCluster:
    """A line's cluster whose trials run only while they hold a slot of a shared pool.

    Contract (that of :class:`~adapters.cluster.base.Cluster`, plus): ``run`` waits for a
    slot, then runs the trial on ``inner``, and always hands the slot back, also when
    ``inner.run`` raises; a slot is never held while no trial runs. Asked to stop while
    waiting, it returns an ``interrupted`` outcome without having run anything (the trial may
    be run again). ``close`` closes ``inner`` only: the pool belongs to the factory.
    """

    def __init__(self, inner: Cluster, pool: SlotPool, name: str) -> None:
        self.inner = inner
        self.pool = pool
        self.name = name

    @property
    def description(self) -> str:
        return f"{self.inner.description}; one of {self.pool.slots} factory trial slot(s)"

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome:
        if not self.pool.acquire(self.name, should_stop):
            return TrialOutcome("interrupted", error="stopped while waiting for a trial slot")
        try:
            return self.inner.run(job, on_progress, should_stop)
        finally:
            self.pool.release(self.name)

    def configure(self, spec: ClusterPolicy) -> bool:
        """Apply an edited ``cluster`` section to ``inner`` (rebuilt if its kind changed)."""
        self.inner = reconfigure(self.inner, spec)
        return True

    def close(self) -> None:
        self.inner.close()

    def take_events(self) -> list[dict[str, Any]]:
        """The inner cluster's events (a Ray cluster that went away and came back)."""
        take = getattr(self.inner, "take_events", None)
        return take() if take is not None else []

    def status(self) -> dict[str, Any]:
        """The inner cluster's view, with the factory's slots."""
        view = self.inner.status() if isinstance(self.inner, ClusterView) else {}
        return view | {"slots": self.pool.slots, "slots_in_use": self.pool.in_use}
