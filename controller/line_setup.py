"""What a production line works with, built from the factory's shared services: its
context (adapters, store, policy) and its view of the factory's GPUs.

Wiring only: the line (`controller/line.py`) calls these when it starts and when it adopts
an edited policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters.cluster import make_cluster
from adapters.cluster.slots import SlottedCluster
from adapters.data_sources import make_source
from adapters.llm import make_advisor
from adapters.store.captures import CaptureLog
from adapters.store.feedback import FeedbackLog
from adapters.traffic_capture import CaptureSpec
from adapters.traffic_source import TrafficSource
from adapters.workload.loader import load_workload
from agents.placement import DeviceView
from controller.context import LineContext
from controller.ingest import Ingestor
from controller.progress import ProgressReporter
from policies.model import CategoricalParam, Policy

if TYPE_CHECKING:
    from controller.gpu import FactoryGpus
    from controller.services import FactoryServices


def build_context(
    s: FactoryServices,
    policy: Policy,
    stop_event: threading.Event,
    on_champion_changed: Callable[[], None],
) -> LineContext:
    """The line's context over the factory's services (its own audit view, ingestor,
    cluster behind the factory's slots, share of the budgets and serving endpoint)."""
    st = s.settings
    audit = s.audit.for_line(policy.name)
    traffic = traffic_source(s, policy)
    ingestor = Ingestor(
        policy_name=policy.name,
        data_policy=policy.data,
        catalog=s.catalog,
        audit=audit,  # type: ignore[arg-type]
        data_dir=st.state_dir / "data",
        quarantine_dir=st.state_dir / "quarantine",
        files=s.files,
    )
    prefix = f"[{policy.name}] " if s.many_lines else ""
    ctx = LineContext(
        policy=policy,
        store=s.store,
        audit=audit,
        registry=s.registry,
        ledger=s.ledger,
        catalog=s.catalog,
        book=s.book,
        cluster=SlottedCluster(make_cluster(policy.cluster), s.slots, policy.name),
        workload=load_workload(policy.workload),
        workload_spec=policy.workload,
        source=make_source(policy.data, offered(traffic)),
        kept_traffic=traffic,
        ingestor=ingestor,
        trials_dir=st.state_dir / "trials",
        threads=st.threads,
        reporter=ProgressReporter(s.console, prefix=prefix),
        stop_event=stop_event,
        on_champion_changed=on_champion_changed,
        advisor=make_advisor(policy.advisor),
        rollouts=s.rollouts,
        feedback=FeedbackLog(s.store),
        runtime=st.runtime,
        study_storage=s.study_storage,
        trial_slots=lambda: s.slots.slots,
        measuring=s.measuring,
        booked_cpu=s.booked_cpu,
        shares_clock=s.serving is not None or s.many_lines,
        files=s.files,
    )
    wire_gpu(s.gpus, ctx)
    if s.serving is not None:
        ctx.traffic = s.serving.server.line(policy.name)
        wire_capture(s, policy)
    if s.budget is not None:
        ctx.budget = s.budget.line(policy.name)
    return ctx


def wire_gpu(gpus: FactoryGpus, ctx: LineContext) -> None:
    """The GPU knobs the line's policy may use here, and how many GPUs its trials share."""
    ctx.max_power_w = gpus.max_power_w(ctx.policy)
    ctx.power_knob_problem = gpus.knob_problem(ctx.policy)
    ctx.gpu_count = gpus.trial_devices()
    if ctx.policy.cluster.kind != "local":  # trials run elsewhere: this GPU is not theirs
        ctx.power_knob_problem = "trials run on a Ray cluster, not on this machine's GPU"
    if ctx.power_knob_problem is None:
        ctx.set_power_limit = lambda watts, key: gpus.set_power_limit(ctx.policy, watts, key)
        ctx.power_limit_released = gpus.trial_ended
    if ctx.policy.cluster.kind == "local":
        shape = largest_shape(ctx.policy)
        ctx.device = gpus.device_view(
            ctx.power_knob_problem,
            _estimate(ctx, "bytes_per_sample", shape),
            _estimate(ctx, "tokens_per_sample", shape),
        )
    else:
        ctx.device = DeviceView(False, "a Ray cluster's nodes (not probed from here)")


def largest_shape(policy: Policy) -> dict[str, Any]:
    """The fixed parameters with each searched number at its largest: memory and tokens a
    sample are estimated where the search may go, not only where it starts."""
    shape: dict[str, Any] = dict(policy.tuning.fixed)
    for name, spec in policy.tuning.search_space.items():
        if isinstance(spec, CategoricalParam):
            numbers = [c for c in spec.choices if type(c) in (int, float)]
            if numbers and len(numbers) == len(spec.choices):
                shape[name] = max(numbers)
        else:
            shape[name] = spec.high
    return shape


def _estimate(ctx: LineContext, what: str, shape: dict[str, Any]) -> int | None:
    """The workload's estimate at the largest shape (at the fixed one when the largest
    is not a valid model, e.g. heads that do not divide the width), if it gives one."""
    estimate = getattr(ctx.workload, what, None)
    if estimate is None:
        return None
    for params in (shape, dict(ctx.policy.tuning.fixed)):
        try:
            return int(estimate(params))
        except Exception:  # an estimate is never worth a line
            continue
    return None


def traffic_source(s: FactoryServices, policy: Policy) -> TrafficSource:
    """The line's kept traffic: data while its policy captures, and expired by the
    retention whatever the policy says now (an earlier policy may have kept some)."""
    folder = s.settings.state_dir / "traffic" / policy.name
    return TrafficSource(policy.name, CaptureLog(s.store), folder, policy.data.capture)


def offered(traffic: TrafficSource) -> TrafficSource | None:
    """The kept traffic as a data source, only while capture is on."""
    return traffic if traffic.spec.enabled else None


def wire_capture(s: FactoryServices, policy: Policy) -> None:
    """Tell serving what to keep of this line's traffic (nothing unless the policy asks)."""
    if s.serving is None:
        return
    spec = policy.data.capture
    s.serving.server.line(policy.name).capture = (
        CaptureSpec(
            sample_rate=spec.sample_rate,
            max_bytes_per_day=spec.max_bytes_per_day,
            redact=tuple(spec.redact),
            min_prompt_bytes=spec.min_prompt_bytes,
            max_prompt_bytes=min(spec.batch_bytes, 65_536),
            opt_in=spec.opt_in,
        )
        if spec.enabled
        else None
    )
