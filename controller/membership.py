"""This daemon's place among the members sharing one PostgreSQL database.

A thread of its own asks for the lease (a follower) or renews it (the leader) every
`lease.renew_s`, publishes the member's row, and tells the runner through `changes` when
this member must start acting ("lead") or stop at once ("follow"). A leader stops acting
when its own clock says the lease has run out unrenewed (the database unreachable, the
process paused), when the lease names someone else, or when a write of its is fenced.

Only a leader writes the log: a new leader audits how its term began (and whose ended);
refusals reported by a stale member are audited by the leader that sees them; a clean
stop is audited by the leader itself, still in its term, before it hands the lease back.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.store.audit import AuditLog
from adapters.store.db import utcnow_iso
from adapters.store.fencing import Fence
from adapters.store.lease import LeaseOutcome, LeaseTable
from controller.settings import LeaseSettings


@dataclass(frozen=True)
class RoleChange:
    role: str  # leader | follower
    epoch: int
    why: str  # vacant | expired | released | lost | fenced | lapsed
    reason: str


class Membership:
    def __init__(
        self,
        lease: LeaseTable,
        fence: Fence,
        audit: AuditLog,
        settings: LeaseSettings,
        say: Callable[[str], None],
    ) -> None:
        self.lease = lease
        self.fence = fence
        self.audit = audit  # fenced: only the leader writes through it
        self.settings = settings
        self._say = say
        # False while the last term's lines are still ending (set by the runner's roles)
        self.may_lead: Callable[[], bool] = lambda: True
        self._unaudited: LeaseOutcome | None = None  # a new term whose audit failed
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = utcnow_iso()
        self.serving_url = ""
        self.changes: queue.Queue[RoleChange] = queue.Queue()
        self._epoch: int | None = None  # the term this member leads
        self._last_epoch = 0
        self._deadline = 0.0  # monotonic: when our lease runs out by our own clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        fence.on_refused(self._refused)

    @property
    def leading(self) -> bool:
        return self._epoch is not None

    @property
    def role(self) -> dict[str, object]:
        """What `/healthz` and `/metrics` show of this member."""
        return {
            "member": self.id,
            "role": "leader" if self.leading else "follower",
            "epoch": self._epoch or self._last_epoch,
        }

    def start(self) -> None:
        self.lease.ensure()
        self.round()  # at once: a lone member leads before its lines are built
        self._thread = threading.Thread(target=self._loop, name="membership", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.renew_s):
            try:
                self.round()
            except Exception as exc:  # the database away: a leader's clock still runs out
                self._say(f"[member] lease round failed: {type(exc).__name__}: {exc}")
                self.check_clock()

    def round(self) -> None:
        """Ask or renew, then publish this member's row (and, as leader, audit refusals)."""
        self.check_clock()
        asked = time.monotonic()
        with self._lock:
            epoch = self._epoch
        if epoch is not None or self.may_lead():
            outcome = self.lease.attempt(self.id, epoch, self.settings.ttl_s)
            self._apply(outcome, asked, epoch)
        self._beat()
        if self.leading:
            if self._unaudited is not None:
                self._audit_term(self._unaudited)
            self._audit_refusals()

    def check_clock(self) -> None:
        """Our own clock says the lease ran out unrenewed: stop acting now (the runner's
        main thread asks too, twice a second, so a stuck round cannot delay it)."""
        with self._lock:
            epoch = self._epoch if time.monotonic() >= self._deadline else None
        if epoch is not None:
            self._lose("lapsed", "my lease ran out before I could renew it", epoch)

    def _apply(self, outcome: LeaseOutcome, asked: float, asked_as: int | None) -> None:
        action = outcome.decision.action
        # the database started the lease no earlier than we asked: our own clock's
        # deadline, counted from then, never outlives it (less a margin for drift)
        deadline = asked + self.settings.ttl_s - min(1.0, self.settings.ttl_s * 0.1)
        if action == "renew":
            with self._lock:
                if self._epoch == asked_as:  # not lost meanwhile
                    self._deadline = deadline
        elif action == "acquire" and outcome.epoch is not None:
            self.fence.enter_term(outcome.epoch)
            with self._lock:
                self._epoch = self._last_epoch = outcome.epoch
                self._deadline = deadline
            self.changes.put(  # first: an audit that fails must not leave a term unused
                RoleChange("leader", outcome.epoch, outcome.decision.why, outcome.decision.reason)
            )
            self._unaudited = outcome
            self._audit_term(outcome)
        elif action == "lost" and asked_as is not None:
            self._lose("lost", outcome.decision.reason, asked_as)

    def _lose(self, why: str, reason: str, epoch: int) -> None:
        """Stop acting at once: the runner stops the lines (their cycles stay checkpointed).
        Only the term named: one begun meanwhile is not ended by news about an older one."""
        with self._lock:
            if self._epoch != epoch:
                return
            self._epoch = None
        self._say(f"[member] {self.id} no longer leads (term {epoch}): {reason}")
        self.changes.put(RoleChange("follower", epoch, why, reason))

    def _refused(self, message: str) -> None:
        """A write of ours was fenced: report it (the leader audits it), and stop acting if
        it was a write of the term we lead (a straggler of an older term changes nothing)."""
        try:
            self.lease.report_fenced(self.id, message)
        except Exception as exc:
            self._say(f"[member] could not report a fenced write: {exc}")
        found = re.search(r"a write of term (\d+)", message)
        with self._lock:
            current = self._epoch
        if current is not None and (found is None or int(found.group(1)) == current):
            self._lose("fenced", message, current)

    def _beat(self, stopped: bool = False) -> None:
        with self._lock:
            leading, epoch = self._epoch is not None, self._epoch or self._last_epoch
        role = "stopped" if stopped else "leader" if leading else "follower"
        self.lease.beat(
            {
                "id": self.id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "role": role,
                "epoch": epoch,
                "serving_url": "" if stopped else self.serving_url,
            }
        )

    def _audit_term(self, outcome: LeaseOutcome) -> None:
        """How a term began; retried on later rounds until it is written (keyed: once)."""
        try:
            self._append_term(outcome)
            self._unaudited = None
        except Exception as exc:
            self._say(f"[member] the new term's audit failed, trying again: {exc}")

    def _append_term(self, outcome: LeaseOutcome) -> None:
        view, epoch = outcome.view, outcome.epoch
        before = f"{view.holder}'s term {view.epoch}" if view.holder else f"term {view.epoch}"
        self.audit.append(
            agent="controller",
            action="lead",
            outcome="taken",
            reason=f"{self.id} leads term {epoch}: {outcome.decision.reason} (after {before})",
            figures={
                "member": self.id,
                "epoch": epoch,
                "why": outcome.decision.why,
                "previous_holder": view.holder or None,
                "previous_epoch": view.epoch,
                "late_s": round(max(0.0, view.now - view.expires_at), 3) if view.holder else None,
                "ttl_s": self.settings.ttl_s,
            },
            key=f"lead:{epoch}",
        )
        self._say(f"[member] {self.id} leads term {epoch} ({outcome.decision.reason})")

    def _audit_refusals(self) -> None:
        """Writes of stale members that the fence refused, once each report."""
        for member in self.lease.members():
            if member.id == self.id or member.fenced_writes <= member.fenced_seen:
                continue
            new = member.fenced_writes - member.fenced_seen
            self.audit.append(
                agent="controller",
                action="fence",
                outcome="refused",
                reason=f"{new} write(s) of {member.id} (term {member.epoch}) refused in term "
                f"{self._epoch}: {member.fenced_detail}",
                figures={
                    "member": member.id,
                    "stale_epoch": member.epoch,
                    "epoch": self._epoch,
                    "refused": new,
                    "detail": member.fenced_detail,
                },
                key=f"fence:{member.id}:{member.fenced_writes}",
            )
            self.lease.mark_seen(member.id, member.fenced_writes)

    def stop(self, step_down_audit: bool = True) -> None:
        """A clean stop: as leader, audit it in our own term, then hand the lease back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.renew_s + 6)
        with self._lock:
            epoch, self._epoch = self._epoch, None
        if epoch is not None and step_down_audit:
            self.audit.append(
                agent="controller",
                action="step_down",
                outcome="taken",
                reason=f"{self.id} stops and hands back the lease of term {epoch}",
                figures={"member": self.id, "epoch": epoch, "why": "stepped down"},
                key=f"step_down:{epoch}",
            )
        if epoch is not None:
            self.lease.release(self.id, epoch)
        self._beat(stopped=True)
