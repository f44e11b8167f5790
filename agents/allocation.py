"""Allocation agent (decide side): each line's share of the factory's budgets for today.

Pure. Lines of one factory draw on the same day's training tokens and joules. Each resource
is shared out on its own, in the order an operator can check by hand:

1. guarantees: a line that asks gets up to its `guarantee_pct` of the factory's daily limit
   (less what it has spent today), higher priority first when the day cannot cover them all;
2. the rest by strict priority tiers, higher first; within a tier by weight, water-filling
   (a line that needs less than its share leaves the excess to its tier, then lower tiers).

An idle line needs nothing, so its unspent guarantee goes to the others; when it asks again
step 1 serves it first and the borrowers get what is left (from their next trial on: a
running trial keeps what it reserved). Entitlement (guarantee plus a weight share of the
unguaranteed limit) is only the yardstick for the audit: what a line holds beyond it is
*borrowed*.

`tokens_left` / `joules_left` of a resource the factory does not limit are None: the factory
sets no ceiling, and the line's own policy budgets (its energy agent) still hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from agents.actions import Action, Outcome
from agents.energy import J_PER_KWH
from policies.factory import FactoryPolicy

Kind = Literal["tokens", "energy"]
KINDS: tuple[Kind, ...] = ("tokens", "energy")
PARTIAL_TRIAL = 0.25
"""A last trial counts when the grant holds this share of one (the trainer shortens it)."""


@dataclass(frozen=True)
class LineClaim:
    """One current line as the allocator sees it; spending is today's."""

    line: str
    owner: str
    priority: int = 0
    weight: float = 1.0
    guarantee_pct: float = 0.0
    spent_tokens: int = 0
    spent_joules: float = 0.0
    demand_trials: int = 0  # trials it wants now; 0: idle
    tokens_per_trial: int = 0
    joules_per_trial: float = 0.0  # expected (measured history or the policy's prior)
    cap_tokens: int | None = None  # its own policy's daily budget; None: no own cap
    cap_joules: float | None = None
    previous_tokens: int | None = None  # `allowed_tokens` of its last allowance, or None
    previous_joules: float | None = None  # `allowed_joules` of its last allowance, or None


@dataclass(frozen=True)
class FactoryObservation:
    spent_tokens_today: int  # the whole factory, lines since removed included
    spent_joules_today: float
    lines: tuple[LineClaim, ...]


@dataclass(frozen=True)
class LineAllowance:
    """What one line may still spend today; None: the factory does not limit that resource."""

    line: str
    owner: str
    outcome: Outcome
    demand_trials: int
    trials: int  # of its demanded trials, how many the grant covers
    tokens_left: int | None
    joules_left: float | None
    allowed_tokens: int | None  # spent + left: today's ceiling (next claim's previous_tokens)
    allowed_joules: float | None
    entitlement_tokens: int | None
    entitlement_joules: float | None
    borrowed_tokens: int
    borrowed_joules: float
    reclaimed_tokens: int
    reclaimed_joules: float
    reason: str


@dataclass(frozen=True)
class AllocationDecision:
    allowances: dict[str, LineAllowance]
    actions: tuple[Action, ...]
    figures: dict[str, object]


@dataclass(frozen=True)
class _Ask:
    """One line's claim on one resource."""

    line: str
    priority: int
    weight: float
    guarantee_pct: float
    spent: float
    need: float
    own_capped: bool
    previous: float | None


@dataclass(frozen=True)
class _Share:
    need: float
    grant: float
    guaranteed: float
    entitlement: float | None
    borrowed: float
    reclaimed: float
    allowed: float  # spent + grant


@dataclass(frozen=True)
class _Pool:
    """One resource of the factory for today, shared out."""

    kind: Kind
    limit: float | None
    spent: float
    asks: dict[str, _Ask]
    shares: dict[str, _Share]

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else max(0.0, self.limit - self.spent)

    @property
    def tol(self) -> float:
        return 0.5 if self.kind == "tokens" else 1e-9 * max(1.0, self.limit or 1.0)


def decide_allocation(obs: FactoryObservation, policy: FactoryPolicy) -> AllocationDecision:
    """Each line's grant of today's factory tokens and joules, with reasons and figures."""
    _check(obs)
    kwh = policy.limits.energy_kwh_per_day
    limits: dict[Kind, float | None] = {
        "tokens": policy.limits.training_tokens_per_day,
        "energy": None if kwh is None else kwh * J_PER_KWH,
    }
    spent: dict[Kind, float] = {"tokens": obs.spent_tokens_today, "energy": obs.spent_joules_today}
    pools: dict[Kind, _Pool] = {}
    for kind in KINDS:
        asks = {a.line: a for a in (_ask(c, kind) for c in obs.lines)}
        shares = _allocate(limits[kind], spent[kind], list(asks.values()), kind == "tokens")
        pools[kind] = _Pool(kind, limits[kind], spent[kind], asks, shares)
    allowances: dict[str, LineAllowance] = {}
    actions: list[Action] = []
    for claim in obs.lines:
        allowance = _allowance(claim, obs, pools)
        allowances[claim.line] = allowance
        figures = _line_figures(claim, allowance, pools)
        actions.append(Action("energy", "allocate", allowance.outcome, allowance.reason, figures))
    return AllocationDecision(allowances, tuple(actions), _factory_figures(pools))


def _check(obs: FactoryObservation) -> None:
    names = [c.line for c in obs.lines]
    if len(set(names)) != len(names):
        raise ValueError(f"line names must be unique: {names}")
    if any(not c.weight > 0 for c in obs.lines):
        raise ValueError("every line's weight must be above 0")


def _ask(c: LineClaim, kind: Kind) -> _Ask:
    if kind == "tokens":
        spent, per, cap, prev = c.spent_tokens, c.tokens_per_trial, c.cap_tokens, c.previous_tokens
    else:
        spent, per, cap, prev = c.spent_joules, c.joules_per_trial, c.cap_joules, c.previous_joules
    want = max(0, c.demand_trials) * max(0.0, per)
    room = None if cap is None else max(0.0, cap - spent)
    need = want if room is None else min(want, room)
    return _Ask(
        line=c.line,
        priority=c.priority,
        weight=c.weight,
        guarantee_pct=c.guarantee_pct,
        spent=spent,
        need=float(need),
        own_capped=room is not None and room < want,
        previous=prev,
    )


def _allocate(
    limit: float | None, spent_total: float, asks: list[_Ask], whole: bool
) -> dict[str, _Share]:
    """Guarantees first, then strict priority tiers by weight; None limit: every need."""
    if limit is None:
        return {a.line: _Share(a.need, a.need, 0.0, None, 0.0, 0.0, a.spent + a.need) for a in asks}
    remaining = max(0.0, limit - spent_total)
    owed = {a.line: min(a.need, max(0.0, a.guarantee_pct / 100 * limit - a.spent)) for a in asks}
    first = _tiers(remaining, asks, owed)
    rest = {a.line: max(0.0, a.need - first[a.line]) for a in asks}
    second = _tiers(max(0.0, remaining - sum(first.values())), asks, rest)
    grants = {a.line: min(a.need, first[a.line] + second[a.line]) for a in asks}
    if whole:
        grants = _whole(grants, {a.line: a.need for a in asks}, remaining)
    entitled = _entitlements(limit, asks)
    shares = {}
    for a in asks:
        grant = grants[a.line]
        allowed = a.spent + grant
        reclaimed = 0.0
        if a.previous is not None:
            reclaimed = max(0.0, min(a.previous, a.spent + a.need) - allowed)
        shares[a.line] = _Share(
            need=a.need,
            grant=grant,
            guaranteed=min(first[a.line], grant),
            entitlement=entitled[a.line],
            borrowed=max(0.0, allowed - entitled[a.line]),
            reclaimed=reclaimed,
            allowed=allowed,
        )
    return shares


def _tiers(amount: float, asks: list[_Ask], caps: dict[str, float]) -> dict[str, float]:
    """Strict priority tiers, higher first; within a tier, weighted water-filling."""
    given = {a.line: 0.0 for a in asks}
    left = amount
    for priority in sorted({a.priority for a in asks}, reverse=True):
        tier = sorted((a for a in asks if a.priority == priority), key=lambda a: a.line)
        filled = _water_fill(left, [(a.line, a.weight, caps[a.line]) for a in tier])
        given |= filled
        left = max(0.0, left - sum(filled.values()))
    return given


def _water_fill(amount: float, members: list[tuple[str, float, float]]) -> dict[str, float]:
    """Share `amount` by weight, none above its cap; a capped member's excess goes to the rest."""
    given = {name: 0.0 for name, _, _ in members}
    open_ = [m for m in members if m[2] > 0]
    left = amount
    while open_ and left > 0:
        total_w = sum(w for _, w, _ in open_)
        full = [m for m in open_ if m[2] <= left * m[1] / total_w]
        if not full:
            for name, w, _ in open_:
                given[name] = left * w / total_w
            break
        for name, _, cap in full:
            given[name] = cap
        left -= sum(cap for _, _, cap in full)
        open_ = [m for m in open_ if m not in full]
    return given


def _whole(grants: dict[str, float], needs: dict[str, float], total: float) -> dict[str, float]:
    """Whole tokens that still add up: floors, then leftover units to the largest remainders."""
    target = math.floor(min(total, sum(needs.values())) + 1e-6)
    out = {n: float(min(math.floor(g + 1e-6), needs[n])) for n, g in grants.items()}
    left = target - int(sum(out.values()))
    for n in sorted(grants, key=lambda n: (-(grants[n] - out[n]), n)):
        if left <= 0:
            break
        if out[n] + 1 <= needs[n]:
            out[n] += 1
            left -= 1
    return out


def _entitlements(limit: float, asks: list[_Ask]) -> dict[str, float]:
    """Guarantee plus a weight share of what the guarantees leave: the audit's yardstick."""
    guaranteed = {a.line: a.guarantee_pct / 100 * limit for a in asks}
    pool = max(0.0, limit - sum(guaranteed.values()))
    total_w = sum(a.weight for a in asks) or 1.0
    return {a.line: guaranteed[a.line] + pool * a.weight / total_w for a in asks}


def _trials(claim: LineClaim, pools: dict[Kind, _Pool]) -> tuple[int, bool]:
    """(trials the grants cover, whether the last one is shortened to fit)."""
    per = {"tokens": float(claim.tokens_per_trial), "energy": claim.joules_per_trial}
    fits: list[tuple[int, bool]] = []  # per resource: (trials, the last one partial)
    for kind, pool in pools.items():
        if per[kind] > 0:
            whole, part = divmod(pool.shares[claim.line].grant + pool.tol, per[kind])
            partial = part >= PARTIAL_TRIAL * per[kind]
            fits.append((int(whole) + partial, partial))
    fit = min([max(0, claim.demand_trials), *(n for n, _ in fits)])
    return fit, fit > 0 and any(n == fit and partial for n, partial in fits)


def _allowance(
    claim: LineClaim, obs: FactoryObservation, pools: dict[Kind, _Pool]
) -> LineAllowance:
    trials, shortened = _trials(claim, pools)
    t, e = pools["tokens"].shares[claim.line], pools["energy"].shares[claim.line]
    short = any(
        p.limit is not None and p.shares[claim.line].grant < p.shares[claim.line].need - p.tol
        for p in pools.values()
    )
    outcome: Outcome = "taken"
    if claim.demand_trials > 0 and trials == 0:
        outcome = "refused"
    elif short or trials < claim.demand_trials:
        outcome = "deferred"
    limited_t, limited_e = pools["tokens"].limit is not None, pools["energy"].limit is not None
    return LineAllowance(
        line=claim.line,
        owner=claim.owner,
        outcome=outcome,
        demand_trials=claim.demand_trials,
        trials=trials,
        tokens_left=int(t.grant) if limited_t else None,
        joules_left=e.grant if limited_e else None,
        allowed_tokens=int(t.allowed) if limited_t else None,
        allowed_joules=e.allowed if limited_e else None,
        entitlement_tokens=None if t.entitlement is None else int(t.entitlement),
        entitlement_joules=e.entitlement,
        borrowed_tokens=round(t.borrowed),
        borrowed_joules=e.borrowed,
        reclaimed_tokens=round(t.reclaimed),
        reclaimed_joules=e.reclaimed,
        reason=_reason(claim, obs, pools, trials, shortened),
    )


def _amount(kind: Kind, value: float) -> str:
    if kind == "tokens":
        return f"{value:,.0f} tokens"
    if value >= 0.01 * J_PER_KWH:
        return f"{value / J_PER_KWH:.2f} kWh"
    return f"{value:,.0f} J"


def _reason(
    claim: LineClaim, obs: FactoryObservation, pools: dict[Kind, _Pool], trials: int, short: bool
) -> str:
    """One sentence in operator terms: where the grant comes from and how many trials fit."""
    if claim.demand_trials <= 0:
        lent = [
            _amount(
                p.kind, max(0.0, claim.guarantee_pct / 100 * p.limit - p.asks[claim.line].spent)
            )
            for p in pools.values()
            if p.limit is not None and claim.guarantee_pct > 0
        ]
        note = f"; its {claim.guarantee_pct:g}% guarantee ({', '.join(lent)} unspent) is lent"
        return f"{claim.line} is idle (wants no trials){note if lent else ''} until it asks again"
    parts = [p for p in (_resource_phrase(claim, obs, pool) for pool in pools.values()) if p]
    fit = f"{trials} of {claim.demand_trials} trials fit"
    if short:
        fit += " (the last one shortened)"
    return f"{claim.line}: {'; '.join([*parts, fit])}"


def _resource_phrase(claim: LineClaim, obs: FactoryObservation, pool: _Pool) -> str:
    """One resource's part of the reason, e.g. "0.90 kWh of 1.50 kWh needed, 0.90 kWh from
    its 30% guarantee"; empty when the factory does not limit it."""
    kind, share, ask = pool.kind, pool.shares[claim.line], pool.asks[claim.line]
    label = "energy" if kind == "energy" else "training-token"
    if pool.limit is None:
        return ""
    if pool.remaining is not None and pool.remaining <= pool.tol and share.need > 0:
        used, limit = _amount(kind, pool.spent), _amount(kind, pool.limit)
        return f"the factory's daily {label} limit is spent ({used} of {limit}), nothing more today"
    if ask.own_capped and share.need <= pool.tol:
        return f"its own daily {label} budget is spent"
    need = _amount(kind, share.need)
    full = share.grant >= share.need - pool.tol
    parts = [f"all {need} needed" if full else f"{_amount(kind, share.grant)} of {need} needed"]
    if share.guaranteed > pool.tol:
        amount = _amount(kind, share.guaranteed)
        parts.append(f"{amount} from its {claim.guarantee_pct:g}% guarantee")
    if share.borrowed > pool.tol:
        lenders = _lenders(claim.line, obs, pool)
        parts.append(f"{_amount(kind, share.borrowed)} borrowed from {lenders or 'the pool'}")
    if share.reclaimed > pool.tol:
        gainers = _gainers(claim.line, pool)
        back = f"{_amount(kind, share.reclaimed)} of its earlier grant taken back"
        parts.append(back + (f" for {gainers}" if gainers else ""))
    if ask.own_capped:
        parts.append(f"capped by its own daily {label} budget")
    return ", ".join(parts)


def _lenders(line: str, obs: FactoryObservation, pool: _Pool) -> str:
    """Lines holding less than their entitlement: whose share a borrower is using."""
    idle = {c.line for c in obs.lines if c.demand_trials <= 0}
    names = [
        n + (" (idle)" if n in idle else "")
        for n, s in sorted(pool.shares.items())
        if n != line and s.entitlement is not None and s.allowed < s.entitlement - pool.tol
    ]
    return ", ".join(names)


def _gainers(line: str, pool: _Pool) -> str:
    """Lines whose ceiling rose since the last allocation: who a taken-back grant went to."""
    names = []
    for n, s in sorted(pool.shares.items()):
        before = pool.asks[n].previous
        if n != line and s.allowed > (pool.asks[n].spent if before is None else before) + pool.tol:
            names.append(n)
    return ", ".join(names)


def _num(value: float | None, digits: int = 3) -> float | None:
    """A finite figure for the audit, or None for unlimited."""
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _line_figures(
    claim: LineClaim, a: LineAllowance, pools: dict[Kind, _Pool]
) -> dict[str, object]:
    t, e = pools["tokens"].shares[claim.line], pools["energy"].shares[claim.line]
    kwh = None if a.joules_left is None else a.joules_left / J_PER_KWH
    return {
        "line": claim.line,
        "owner": claim.owner,
        "priority": claim.priority,
        "weight": claim.weight,
        "guarantee_pct": claim.guarantee_pct,
        "demand_trials": claim.demand_trials,
        "trials": a.trials,
        "tokens_per_trial": claim.tokens_per_trial,
        "joules_per_trial": _num(claim.joules_per_trial),
        "tokens_spent": claim.spent_tokens,
        "tokens_need": int(t.need),
        "tokens_left": a.tokens_left,
        "tokens_entitlement": a.entitlement_tokens,
        "tokens_borrowed": a.borrowed_tokens,
        "tokens_reclaimed": a.reclaimed_tokens,
        "joules_spent": _num(claim.spent_joules),
        "joules_need": _num(e.need),
        "joules_left": _num(a.joules_left),
        "kwh_left": _num(kwh, 6),
        "joules_entitlement": _num(a.entitlement_joules),
        "joules_borrowed": _num(a.borrowed_joules),
        "joules_reclaimed": _num(a.reclaimed_joules),
    }


def _factory_figures(pools: dict[Kind, _Pool]) -> dict[str, object]:
    t, e = pools["tokens"], pools["energy"]
    return {
        "factory_tokens_limit": None if t.limit is None else int(t.limit),
        "factory_tokens_spent": int(t.spent),
        "factory_tokens_remaining": None if t.remaining is None else int(t.remaining),
        "factory_joules_limit": _num(e.limit),
        "factory_kwh_limit": _num(None if e.limit is None else e.limit / J_PER_KWH, 6),
        "factory_joules_spent": _num(e.spent),
        "factory_joules_remaining": _num(e.remaining),
        "tokens_granted": sum(int(s.grant) for s in t.shares.values()) if t.limit else None,
        "joules_granted": _num(sum(s.grant for s in e.shares.values())) if e.limit else None,
    }


__all__ = [
    "PARTIAL_TRIAL",
    "AllocationDecision",
    "FactoryObservation",
    "LineAllowance",
    "LineClaim",
    "decide_allocation",
]
