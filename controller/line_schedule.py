"""A line's jobs on the factory's scheduler: its cycle schedule, a deferred retraining's
energy window, a failed cycle's retry. Jobs only *request* work on the line's queue; the
line's thread runs it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from policies.model import Policy


class LineSchedule:
    def __init__(
        self,
        scheduler: BackgroundScheduler,
        name: str,
        requests: queue.Queue[tuple[str, str]],
        stop_event: threading.Event,
        say: Callable[[str], None],
    ) -> None:
        self.scheduler, self.name, self.requests = scheduler, name, requests
        self.stop_event, self.say = stop_event, say

    def job_id(self, what: str) -> str:
        return f"{self.name}:{what}"

    def cycles(self, policy: Policy) -> None:
        """Request a cycle on the policy's schedule (`every_s` or `cron`)."""
        sched = policy.triggers.schedule
        trigger: Any
        if sched.cron:
            trigger = CronTrigger.from_crontab(sched.cron, timezone=UTC)
        else:
            trigger = IntervalTrigger(seconds=sched.every_s or 3600.0, timezone=UTC)
        self.scheduler.add_job(
            lambda: self.requests.put(("cycle", "schedule")),
            trigger,
            id=self.job_id("cycle"),
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    def retry_after(self, hours: float) -> None:
        """A deferred retraining comes back when its energy window opens."""
        when = datetime.now(UTC) + timedelta(hours=hours)
        self.scheduler.add_job(
            lambda: self.requests.put(("cycle", "energy window")),
            DateTrigger(run_date=when),
            id=self.job_id("energy-window"),
            replace_existing=True,
        )
        self.say(f"[energy] retraining deferred to {when.isoformat(timespec='minutes')}")

    def retry_later(self, cycle_id: str, delay_s: float) -> None:
        """Resume a failed cycle after its retry delay, unless the line stops first."""
        if not self.stop_event.wait(delay_s):
            self.requests.put(("resume", cycle_id))

    def remove(self) -> None:
        for what in ("cycle", "energy-window"):
            job = self.scheduler.get_job(self.job_id(what))
            if job is not None:
                job.remove()
