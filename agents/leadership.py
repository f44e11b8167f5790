"""Who leads: a pure decision over the lease as the database shows it.

Every daemon on one PostgreSQL database is a member; exactly one holds the lease and acts.
The decision runs inside the transaction that holds the lease row, so two members asking
at once see one another's outcome, never the same vacancy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LeaseAction = Literal["acquire", "renew", "follow", "lost"]


@dataclass(frozen=True)
class LeaseView:
    """The lease row and the database's clock, read under the row's lock."""

    holder: str
    epoch: int
    expires_at: float
    now: float
    released: bool = False  # the last holder handed it back (a clean stop)


@dataclass(frozen=True)
class LeaseDecision:
    action: LeaseAction
    reason: str
    why: str = ""  # for a new leader: how the term began (vacant | expired | released)


def decide_lease(view: LeaseView, me: str, my_epoch: int | None) -> LeaseDecision:
    """`my_epoch` is the term this member believes it leads (None: it follows).

    A leader renews only the very term it holds; if the row names another holder or a
    newer epoch, its term is over (lost: it must stop acting at once). A follower takes a
    lease that is vacant, released or expired, and otherwise follows.
    """
    if my_epoch is not None:
        if view.holder == me and view.epoch == my_epoch:
            if view.expires_at <= view.now:
                # nobody took it yet, but the term lapsed: acting on would mean acting
                # unleased; step down, and ask again as a follower (a new, fenced term)
                return LeaseDecision("lost", f"term {my_epoch} lapsed before it was renewed")
            return LeaseDecision("renew", f"renewing term {my_epoch}")
        return LeaseDecision(
            "lost",
            f"term {my_epoch} is over: the lease is held by {view.holder or 'nobody'} "
            f"in term {view.epoch}",
        )
    if not view.holder:
        why = "released" if view.released else "vacant"
        return LeaseDecision("acquire", f"the lease is {why}", why)
    if view.expires_at <= view.now:
        late = view.now - view.expires_at
        return LeaseDecision(
            "acquire",
            f"{view.holder}'s term {view.epoch} expired {late:.1f}s ago",
            "expired",
        )
    return LeaseDecision(
        "follow",
        f"{view.holder} leads term {view.epoch} for {view.expires_at - view.now:.1f}s more",
    )
