"""Energy agent (decide side): may this cycle spend tokens and joules, how many, and when?

Pure: from the ledger, the policy's budgets and its price or carbon windows, decide how many
trials fit and what each may spend. A budget set below one trial's need can never be met
and is *refused*; a day whose budget is spent is *deferred* to the next day; a deferrable
retraining waits for the cheapest allowed window unless quality has fallen below the floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.actions import Action
from policies.model import EnergyWindow, Policy

J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyObservation:
    day_tokens: int
    day_joules: float
    joules_per_token: float | None  # measured or estimated history; None before any trial
    energy_method: str  # how the history was obtained ("measured" / "estimated")
    hour_utc: float = 12.0  # now, as hours since midnight UTC (for price/carbon windows)
    champion_new_bpb: float | None = None  # the champion's quality on the new data
    deferred_h: float = 0.0  # how long this retraining has already waited for a window
    # this line's share of the factory's shared budgets (None: no factory-wide limit)
    share_tokens_left: int | None = None
    share_joules_left: float | None = None
    share_trials: int | None = None  # of the planned trials, how many the share holds now
    share_pending: bool = False  # other lines hold reservations that may come back today
    share_reason: str = ""


@dataclass(frozen=True)
class TrainingAllowance:
    trials: int
    tokens_per_trial: int
    joules_per_trial: float
    tokens_left: int
    joules_left: float


@dataclass(frozen=True)
class EnergyDecision:
    allowance: TrainingAllowance | None
    actions: tuple[Action, ...]
    defer_for_h: float | None = None  # wait this long, then try again (a cheaper window)
    figures: dict[str, object] = field(default_factory=dict)


def window_value(w: EnergyWindow, by: str) -> float | None:
    return w.price_per_kwh if by == "price" else w.carbon_g_per_kwh


def current_window(windows: list[EnergyWindow], hour: float) -> EnergyWindow | None:
    return next((w for w in windows if w.start_hour <= hour % 24 < w.end_hour), None)


def cheapest_start(
    windows: list[EnergyWindow], hour: float, horizon_h: float, by: str
) -> tuple[float, EnergyWindow] | None:
    """The cheapest window starting (or already running) within the horizon: (wait_h, window)."""
    best: tuple[float, float, EnergyWindow] | None = None
    for w in windows:
        value = window_value(w, by)
        if value is None:
            continue
        for day in (0, 24):
            start = w.start_hour + day
            end = w.end_hour + day
            wait = 0.0 if start <= hour < end else start - hour
            if wait < 0 or wait > horizon_h:
                continue
            if best is None or (value, wait) < (best[0], best[1]):
                best = (value, wait, w)
    return None if best is None else (best[1], best[2])


def decide_energy(obs: EnergyObservation, policy: Policy) -> EnergyDecision:
    b, e = policy.budgets, policy.energy
    planned = policy.tuning.trials_per_cycle
    per_trial = b.tokens_per_trial
    jpt = obs.joules_per_token or e.prior_joules_per_token
    basis = obs.energy_method if obs.joules_per_token else "prior estimate"
    day_joules_budget = b.energy_kwh_per_day * J_PER_KWH
    cycle_joules_budget = b.energy_kwh_per_cycle * J_PER_KWH if b.energy_kwh_per_cycle else None
    trial_joules = per_trial * jpt
    figures: dict[str, object] = {
        "planned_trials": planned,
        "tokens_per_trial": per_trial,
        "joules_per_token": round(jpt, 9),
        "joules_per_token_basis": basis,
        "trial_joules_needed": round(trial_joules, 3),
        "day_tokens_used": obs.day_tokens,
        "day_tokens_budget": b.training_tokens_per_day,
        "day_joules_used": round(obs.day_joules, 3),
        "day_joules_budget": round(day_joules_budget, 3),
        "cycle_tokens_budget": b.training_tokens_per_cycle,
        "cycle_joules_budget": None if cycle_joules_budget is None else round(cycle_joules_budget),
    }
    # budgets that can never hold one trial: refused
    for name, budget in (
        ("training_tokens_per_day", b.training_tokens_per_day),
        ("training_tokens_per_cycle", b.training_tokens_per_cycle),
    ):
        if budget is not None and budget < per_trial:
            short = per_trial - budget
            return _no(
                "refused",
                f"{name}={budget} is below one trial's need of {per_trial} tokens "
                f"(shortfall {short}); no trial can ever run",
                figures | {"shortfall_tokens": short, "budget": name},
            )
    for name, kwh, joules in (
        ("energy_kwh_per_day", b.energy_kwh_per_day, day_joules_budget),
        ("energy_kwh_per_cycle", b.energy_kwh_per_cycle, cycle_joules_budget),
    ):
        if joules is not None and joules < trial_joules:
            short = trial_joules - joules
            return _no(
                "refused",
                f"{name}={kwh} ({joules:.0f} J) is below one trial's need of "
                f"{trial_joules:.0f} J ({basis}; shortfall {short:.0f} J)",
                figures | {"shortfall_joules": round(short, 3), "budget": name},
            )
    # the day is spent: deferred
    day_tokens_left = b.training_tokens_per_day - obs.day_tokens
    day_joules_left = day_joules_budget - obs.day_joules
    if day_tokens_left < per_trial:
        short = per_trial - max(day_tokens_left, 0)
        return _no(
            "deferred",
            f"today's training-token budget is spent: {max(day_tokens_left, 0)} tokens left, "
            f"one trial needs {per_trial} (shortfall {short}); waiting for tomorrow",
            figures | {"shortfall_tokens": short, "budget": "training_tokens_per_day"},
        )
    if day_joules_left < trial_joules:
        short = trial_joules - max(day_joules_left, 0.0)
        return _no(
            "deferred",
            f"today's energy budget is spent: {max(day_joules_left, 0):.0f} J left, one trial "
            f"needs {trial_joules:.0f} J ({basis}; shortfall {short:.0f} J); "
            "waiting for tomorrow",
            figures | {"shortfall_joules": round(short, 3), "budget": "energy_kwh_per_day"},
        )
    shared = _factory_share(obs, per_trial, trial_joules, figures)
    if shared is not None:
        return shared
    # when: the cheapest allowed window, unless quality is below the floor
    deferral, note = _timing(obs, policy)
    if deferral is not None:
        return deferral
    tokens_left = min(day_tokens_left, b.training_tokens_per_cycle or day_tokens_left)
    joules_left = min(day_joules_left, cycle_joules_budget or day_joules_left)
    fit = min(planned, tokens_left // per_trial, int(joules_left // trial_joules))
    allowance = TrainingAllowance(
        trials=fit,
        tokens_per_trial=per_trial,
        joules_per_trial=trial_joules,
        tokens_left=tokens_left,
        joules_left=joules_left,
    )
    reason = f"{fit} of {planned} planned trials fit the budgets"
    if fit < planned:
        reason += " (trimmed to stay within budget)"
    window = current_window(e.windows, obs.hour_utc)
    if window is not None:
        value = window_value(window, e.prefer_windows_by)
        reason += f"; in the {window.start_hour:02d}-{window.end_hour:02d} UTC window"
        figures |= {"window": f"{window.start_hour}-{window.end_hour}", "window_value": value}
    allow = Action("energy", "allow_training", "taken", reason, figures | {"trials": fit})
    return EnergyDecision(allowance, (note, allow) if note is not None else (allow,))


def _timing(obs: EnergyObservation, policy: Policy) -> tuple[EnergyDecision | None, Action | None]:
    """(a deferral to a cheaper window, or None to go now; a note when the floor overrides)."""
    e = policy.energy
    if not e.windows:
        return None, None
    by = e.prefer_windows_by
    now = current_window(e.windows, obs.hour_utc)
    now_value = window_value(now, by) if now is not None else None
    horizon = max(0.0, e.max_defer_h - obs.deferred_h)
    best = cheapest_start(e.windows, obs.hour_utc, horizon, by)
    figures: dict[str, object] = {
        "hour_utc": round(obs.hour_utc, 2),
        "current_window_value": now_value,
        "by": by,
        "deferred_h": round(obs.deferred_h, 2),
        "max_defer_h": e.max_defer_h,
    }
    if best is None or best[0] <= 0:
        return None, None  # already in the cheapest reachable window, or none reachable
    wait_h, window = best
    best_value = window_value(window, by)
    if now_value is not None and best_value is not None and best_value >= now_value:
        return None, None
    figures |= {
        "cheapest_window": f"{window.start_hour}-{window.end_hour}",
        "cheapest_value": best_value,
        "wait_h": round(wait_h, 3),
    }
    floor = policy.triggers.quality_floor_bpb
    if floor is not None and obs.champion_new_bpb is not None and obs.champion_new_bpb > floor:
        # quality first: an urgent retraining does not wait for cheap energy
        return None, Action(
            "energy",
            "wait_for_window",
            "refused",
            f"not waiting {wait_h:.1f} h for the cheaper {by} window: the champion's "
            f"{obs.champion_new_bpb:.3f} bits/byte on new data is worse than the quality "
            f"floor ({floor:.3f}); training now",
            figures | {"quality_floor_bpb": floor, "champion_new_bpb": obs.champion_new_bpb},
        )
    unit = "/kWh" if by == "price" else " g/kWh"
    return EnergyDecision(
        None,
        (
            Action(
                "energy",
                "allow_training",
                "deferred",
                f"deferrable retraining waits {wait_h:.1f} h for the {window.start_hour:02d}-"
                f"{window.end_hour:02d} UTC window ({by} {best_value}{unit} vs "
                f"{'unknown' if now_value is None else now_value} now); quality is not below "
                "the floor",
                figures,
            ),
        ),
        defer_for_h=wait_h,
    ), None


def _factory_share(
    obs: EnergyObservation, per_trial: int, trial_joules: float, figures: dict[str, object]
) -> EnergyDecision | None:
    """Deferred when the line's share of the factory's budgets holds no trial and nothing
    held by other lines may come back today. The share does not trim the cycle: each trial
    reserves its own share when it starts (what others leave by then is used too)."""
    if obs.share_trials is None:
        return None
    figures |= {
        "share_trials": obs.share_trials,
        "share_tokens_left": obs.share_tokens_left,
        "share_joules_left": None
        if obs.share_joules_left is None
        else round(obs.share_joules_left, 3),
        "share_held_by_others": obs.share_pending,
    }
    if obs.share_trials > 0 or obs.share_pending:
        return None
    return _no(
        "deferred",
        f"this line's share of the factory's budgets holds no trial today "
        f"({obs.share_reason or 'the factory allocation'}); waiting for tomorrow",
        figures | {"budget": "factory share"},
    )


@dataclass(frozen=True)
class TrialBudgetObservation:
    """Before each trial: what the cycle's allowance has left and how many trials remain."""

    allowance: TrainingAllowance
    spent_tokens: int
    spent_joules: float
    trials_left: int  # this one included


@dataclass(frozen=True)
class TrialBudget:
    max_tokens: int
    max_joules: float


def decide_trial_budget(
    obs: TrialBudgetObservation, policy: Policy
) -> tuple[TrialBudget | None, Action | None]:
    """A trial's own limits: at most a trial's tokens, and its share of the joules left (what
    is left split over the trials still to run, never less than the planned per-trial
    need), so one trial cannot spend what the cycle's later trials were allowed.
    Returns (None, refusal) when the allowance is spent."""
    a = obs.allowance
    tokens_left = a.tokens_left - obs.spent_tokens
    joules_left = a.joules_left - obs.spent_joules
    max_tokens = min(a.tokens_per_trial, tokens_left)
    if max_tokens <= 0 or joules_left <= 0:
        return None, Action(
            "trainer",
            "run_trial",
            "refused",
            "the cycle's token or energy allowance is spent",
            {"tokens_left": tokens_left, "joules_left": round(joules_left, 3)},
        )
    share = max(a.joules_per_trial, joules_left / max(1, obs.trials_left))
    return TrialBudget(max_tokens, min(joules_left, share)), None


def _no(outcome: str, reason: str, figures: dict[str, object]) -> EnergyDecision:
    action = Action("energy", "allow_training", outcome, reason, figures)  # type: ignore[arg-type]
    return EnergyDecision(None, (action,))


@dataclass(frozen=True)
class PowerRequest:
    job: str
    requested_w: float
    min_w: float
    max_w: float


def allocate_power_limits(cap_w: float, requests: list[PowerRequest]) -> dict[str, float] | None:
    """Power limits for concurrent jobs whose sum stays under the facility cap.

    Water-filling: every job first gets its device minimum; what is left is shared out
    equally, no job above what it asked for (clamped to its device's range). None when
    even the minimums do not fit under the cap.
    """
    want = {r.job: min(max(r.requested_w, r.min_w), r.max_w) for r in requests}
    limits = {r.job: r.min_w for r in requests}
    left = cap_w - sum(limits.values())
    if left < -1e-9:
        return None
    open_jobs = [r.job for r in requests if want[r.job] > limits[r.job]]
    while left > 1e-9 and open_jobs:
        share = left / len(open_jobs)
        still_open = []
        for job in open_jobs:
            give = min(share, want[job] - limits[job])
            limits[job] += give
            left -= give
            if want[job] - limits[job] > 1e-9:
                still_open.append(job)
        open_jobs = still_open
    return limits


def hour_of_day_utc(unix_s: float) -> float:
    return (unix_s % 86400.0) / 3600.0


__all__ = [
    "J_PER_KWH",
    "EnergyDecision",
    "EnergyObservation",
    "PowerRequest",
    "TrainingAllowance",
    "TrialBudget",
    "TrialBudgetObservation",
    "allocate_power_limits",
    "cheapest_start",
    "current_window",
    "decide_energy",
    "decide_trial_budget",
    "hour_of_day_utc",
]
