"""The policy an operator writes: goals, limits and knobs, validated at the boundary.

Policies are the *desired* half of the controller loop. Everything here is a frozen
pydantic model so a loaded policy can be hashed, stored, and handed to pure decision
functions without anyone mutating it underneath them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a policy must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StdlibErasSource(_Strict):
    """Built-in demo data: the Python standard library's own sources, split into eras.

    Era ``k`` becomes visible once ``k`` production cycles have completed, which plays the
    "new data arrives" scenario on any machine offline. The files are read in place.
    """

    kind: Literal["stdlib_eras"] = "stdlib_eras"
    eras: list[list[str]] = Field(
        default_factory=lambda: [
            ["email", "json", "http", "urllib", "xml"],
            ["asyncio", "concurrent", "multiprocessing"],
        ],
        min_length=1,
        description="Each era is a list of stdlib package names whose .py files form it.",
    )
    max_files_per_era: int = Field(default=400, gt=0)


class DirectorySource(_Strict):
    """An operator's folder: every new file (by content hash) is ingested exactly once."""

    kind: Literal["directory"] = "directory"
    path: str
    glob: str = "**/*"


class TrafficOnlySource(_Strict):
    """No files: the line learns only from the traffic it serves (`data.capture`)."""

    kind: Literal["traffic"] = "traffic"


DataSourceSpec = Annotated[
    StdlibErasSource | DirectorySource | TrafficOnlySource, Field(discriminator="kind")
]


class CapturePolicy(_Strict):
    """Served prompts kept as training data. Off unless `enabled`; a request with
    `"store": false` is never kept, and `redact` patterns are applied before anything is
    written. Kept prompts become a data file (ingested like any other) once `batch_bytes`
    of them have gathered."""

    enabled: bool = False
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="Share of answered prompts kept."
    )
    max_bytes_per_day: int = Field(default=5_000_000, gt=0, description="Per line, UTC day.")
    retention_days: float = Field(
        default=30.0, gt=0, description="Kept text older than this is deleted (audited)."
    )
    redact: list[str] = Field(
        default_factory=list,
        description="Regular expressions; every match becomes '[redacted]' before writing.",
    )
    batch_bytes: int = Field(default=20_000, gt=0)
    min_prompt_bytes: int = Field(default=16, ge=1, description="Shorter prompts are not kept.")
    opt_in: bool = Field(
        default=False,
        description='Keep only requests that say "store": true (OpenAI\'s default); '
        'otherwise every request but those that say "store": false.',
    )

    @model_validator(mode="after")
    def _patterns(self) -> CapturePolicy:
        for pattern in self.redact:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"redact pattern {pattern!r} is not a regular expression: {exc}"
                ) from exc
        return self


class DataPolicy(_Strict):
    source: DataSourceSpec = Field(default_factory=StdlibErasSource)
    capture: CapturePolicy = Field(default_factory=CapturePolicy)
    holdout_fraction: float = Field(
        default=0.1, gt=0.0, lt=0.5, description="Tail of each file kept out of training."
    )
    max_file_bytes: int = Field(default=2_000_000, gt=0)
    settle_s: float = Field(
        default=2.0, ge=0, description="Ignore files modified more recently (still being written)."
    )
    eval_max_bytes: int = Field(
        default=120_000, gt=0, description="Bytes per held-out set scored by evaluations."
    )

    @model_validator(mode="after")
    def _traffic_needs_capture(self) -> DataPolicy:
        if isinstance(self.source, TrafficOnlySource) and not self.capture.enabled:
            raise ValueError("source kind 'traffic' needs capture.enabled: true")
        if self.capture.enabled and self.capture.batch_bytes * 2 > self.max_file_bytes:
            raise ValueError(
                "capture.batch_bytes must be at most half of max_file_bytes "
                "(a batch file is about batch_bytes, plus its last prompt)"
            )
        return self


class BudgetPolicy(_Strict):
    """Daily limits. Tokens are the unit of work, joules the cost."""

    training_tokens_per_day: int = Field(default=200_000_000, gt=0)
    energy_kwh_per_day: float = Field(default=5.0, gt=0)
    agent_llm_tokens_per_day: int = Field(default=50_000, ge=0)
    tokens_per_trial: int = Field(default=600_000, gt=0)
    training_tokens_per_cycle: int | None = Field(default=None, gt=0)
    energy_kwh_per_cycle: float | None = Field(default=None, gt=0)


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[int | float | str | bool] = Field(min_length=1)


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


PLACEMENT_PARAMS = ("device", "power_limit_w")
"""Tunables the controller applies itself (through adapters) instead of passing to the workload."""


class ObjectivePolicy(_Strict):
    """What a trial is scored on.

    quality: validation bits/byte only. quality_and_energy: two objectives, bits/byte and
    joules per training token (Pareto front). zeus_cost: bits/byte and the Zeus-style cost per
    token, (eta*E + (1-eta)*P_max*T) / tokens, trading energy against time.
    """

    kind: Literal["quality", "quality_and_energy", "zeus_cost"] = "quality"
    eta: float = Field(default=0.5, ge=0, le=1)
    max_power_w: float | None = Field(
        default=None, gt=0, description="P_max for zeus_cost; default: the device's maximum."
    )


class SelectionPolicy(_Strict):
    """Which trial becomes the candidate."""

    rule: Literal["best_quality", "least_energy_within"] = "best_quality"
    quality_tolerance_pct: float = Field(
        default=1.0, ge=0, description="least_energy_within: allowed loss against the best, %."
    )


class PruningPolicy(_Strict):
    """Stop hopeless trials early: a trial whose training loss is worse, by more than
    `margin_pct`, than the median of earlier trials of the cycle at the same token count."""

    enabled: bool = False
    startup_trials: int = Field(default=2, ge=1, description="Earlier trials needed to compare.")
    warmup_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="Never prune before this share of the budget."
    )
    margin_pct: float = Field(default=10.0, ge=0)


class TuningPolicy(_Strict):
    trials_per_cycle: int = Field(default=3, gt=0, le=1000)
    sampler: Literal["tpe", "random"] = "tpe"
    objectives: ObjectivePolicy = Field(default_factory=ObjectivePolicy)
    selection: SelectionPolicy = Field(default_factory=SelectionPolicy)
    pruning: PruningPolicy = Field(default_factory=PruningPolicy)
    seed: int = 0
    search_space: dict[str, ParamSpec] = Field(
        default_factory=lambda: {
            "lr": FloatParam(type="float", low=1e-3, high=1e-2, log=True),
            "batch_size": CategoricalParam(type="categorical", choices=[16, 32]),
        }
    )
    fixed: dict[str, int | float | str | bool] = Field(
        default_factory=lambda: {"d_model": 128, "n_layers": 2, "n_heads": 4, "context": 128}
    )
    warm_start: bool = True
    parallel_trials: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Trials of a cycle that run at once (capped by the factory's slots); "
        "TPE then samples with a constant liar so concurrent trials spread out.",
    )
    baseline: dict[str, int | float | str | bool] | None = Field(
        default=None,
        description="The operator's known-good configuration: the first trial of a cold study.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> TuningPolicy:
        both = sorted(set(self.search_space) & set(self.fixed))
        if both:
            raise ValueError(f"parameters both tuned and fixed: {', '.join(both)}")
        if self.baseline is not None:
            unknown = sorted(set(self.baseline) - set(self.search_space))
            if unknown:
                raise ValueError(f"baseline names parameters not in the search space: {unknown}")
        if self.pruning.enabled and self.objectives.kind != "quality":
            raise ValueError("pruning works with the single 'quality' objective only")
        return self


class SchedulePolicy(_Strict):
    every_s: float | None = Field(default=3600.0, gt=0)
    cron: str | None = Field(default=None, description="Crontab expression (5 fields).")

    @model_validator(mode="after")
    def _one(self) -> SchedulePolicy:
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError("cron needs 5 fields: minute hour day month day_of_week")
        return self


class DriftPolicy(_Strict):
    js_divergence: float = Field(
        default=0.006, ge=0, le=1, description="Byte-distribution JS divergence (base 2)."
    )
    loss_increase_pct: float = Field(
        default=3.0, ge=0, description="Champion bits/byte on new data over its reference, %."
    )


class LivePolicy(_Strict):
    """Watching the champion in production: the prompts it serves against its training data
    (byte-distribution JS divergence) and its bits/byte on them against its own evaluation.
    Either crossing its threshold is live drift: retrain, on captured traffic when
    `data.capture` is on."""

    enabled: bool = True
    every_s: float = Field(default=300.0, gt=0, description="How often the sample is judged.")
    min_prompts: int = Field(
        default=64, ge=1, le=256, description="Served prompts a judgement needs (sample: 256)."
    )
    min_bytes: int = Field(
        default=8000, ge=1, description="Bytes of served prompts a judgement needs."
    )
    js_divergence: float = Field(default=0.02, ge=0, le=1)
    loss_increase_pct: float = Field(
        default=10.0, ge=0, description="Live bits/byte over the champion's evaluation, %."
    )


class RetrainValuePolicy(_Strict):
    """Whether a retraining pays: its gain per kWh predicted from the line's own history of
    retrainings. Without a threshold the prediction is recorded (and later compared with the
    outcome) but never defers."""

    min_gain_pct_per_kwh: float | None = Field(
        default=None, ge=0, description="Defer a retraining predicted to gain less (% per kWh)."
    )
    min_history: int = Field(default=4, ge=1, description="Past retrainings a prediction needs.")
    max_staleness_h: float | None = Field(
        default=168.0, gt=0, description="A champion older than this is never kept by the rule."
    )
    confidence: float = Field(default=0.8, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _never_for_good(self) -> RetrainValuePolicy:
        if self.min_gain_pct_per_kwh is not None and self.max_staleness_h is None:
            raise ValueError(
                "a threshold needs max_staleness_h: a deferred line records no new history, "
                "so without it the rule could keep the same champion for ever"
            )
        return self


class TriggerPolicy(_Strict):
    schedule: SchedulePolicy = Field(default_factory=SchedulePolicy)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    live: LivePolicy = Field(default_factory=LivePolicy)
    value: RetrainValuePolicy = Field(default_factory=RetrainValuePolicy)
    quality_floor_bpb: float | None = Field(
        default=None,
        gt=0,
        description="Champion bits/byte on new data above this: retrain now, never deferred.",
    )
    retrain_on_new_data: bool = Field(
        default=False, description="Retrain on any new data, drifted or not."
    )


class GatePolicy(_Strict):
    """Promotion gates: a candidate is blessed only when every gate passes."""

    max_bpb: float = Field(default=4.0, gt=0, description="Absolute ceiling on recent bits/byte.")
    min_improvement_pct: float = Field(
        default=0.5, description="Required gain over the champion on recent data, %."
    )
    max_reference_regression_pct: float = Field(
        default=5.0, ge=0, description="Allowed loss of quality on reference data, %."
    )
    bootstrap: BootstrapGate = Field(default_factory=lambda: BootstrapGate())
    feedback_min_corrections: int = Field(
        default=20, ge=1, description="Corrections from clients before feedback_bpb is measured."
    )
    metrics: dict[GateMetric, MetricGate] = Field(
        default_factory=dict,
        description="Further thresholds per metric: absolute bounds and changes against the "
        "champion (absolute and relative). Serving figures are measured by the evaluator; "
        "feedback_bpb is bits/byte on the corrections clients sent (skipped while none).",
    )


GateMetric = Literal[
    "recent_bpb", "reference_bpb", "latency_ms_per_token", "tokens_per_joule", "feedback_bpb"
]


class MetricGate(_Strict):
    """Bounds on one metric of the candidate. Absolute: `max`/`min`. Against the champion:
    `max_increase`/`max_decrease` in the metric's unit, `*_pct` in % of the champion's value.
    Lower is better for bits/byte and latency, higher for tokens per joule; give the bounds
    that make sense for the metric (any combination is checked as written)."""

    max: float | None = None
    min: float | None = None
    max_increase: float | None = Field(default=None, ge=0)
    max_increase_pct: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max_decrease_pct: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> MetricGate:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError(
                "give at least one of max, min, max_increase, max_increase_pct, "
                "max_decrease, max_decrease_pct"
            )
        return self


class BootstrapGate(_Strict):
    """Paired bootstrap over evaluation chunks: promote only when the lower confidence bound
    of the improvement on recent data clears `min_improvement_pct`."""

    enabled: bool = True
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    resamples: int = Field(default=2000, ge=100, le=100_000)
    seed: int = 0


class EnergyWindow(_Strict):
    """A daily window of electricity price and/or carbon intensity (UTC hours, end exclusive)."""

    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    price_per_kwh: float | None = Field(default=None, ge=0)
    carbon_g_per_kwh: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> EnergyWindow:
        if self.end_hour <= self.start_hour:
            raise ValueError("end_hour must be after start_hour (split windows that wrap midnight)")
        if self.price_per_kwh is None and self.carbon_g_per_kwh is None:
            raise ValueError("give price_per_kwh and/or carbon_g_per_kwh")
        return self


class EnergyPolicy(_Strict):
    watts_per_core: float = Field(default=15.0, gt=0, description="Host estimate: W per busy core.")
    prefer_gpu: bool = True
    gpu: Literal["auto", "nvml", "simulated", "replay", "none"] = Field(
        default="auto",
        description="GPU adapter: NVML when present; a simulated H200 or a replayed H200 "
        "trace (labelled so) for planning and tests.",
    )
    allow_power_limits: bool = Field(
        default=False, description="May the controller set GPU power limits (restored on exit)?"
    )
    facility_power_cap_w: float | None = Field(
        default=None, gt=0, description="Sum of GPU power limits across concurrent jobs."
    )
    windows: list[EnergyWindow] = Field(default_factory=list)
    prefer_windows_by: Literal["price", "carbon"] = "price"
    max_defer_h: float = Field(
        default=12.0, ge=0, description="Longest a deferrable retraining waits for a window."
    )
    prior_joules_per_token: float = Field(
        default=0.001,
        gt=0,
        description="Planning estimate of J/token before any trial has been measured.",
    )
    placement: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: the device's knobs the operator did not name (precision, batch "
        "sizes that fit, gradient accumulation, permitted power limits) join the search, "
        "if the workload honours them; off: only the search space as written.",
    )

    @field_validator("placement", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML reads an unquoted ``off`` (and ``on``) as a boolean: take what was meant."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value


class LocalClusterPolicy(_Strict):
    """Trials in worker processes on this machine. Workers are processes of their own (a crash
    fails one trial); reusing one keeps its interpreter, torch and CUDA context, which on a
    GPU cost several times the energy of a small trial."""

    kind: Literal["local"] = "local"
    reuse_workers: bool = Field(
        default=True, description="Run the next trial in the worker that finished the last."
    )
    worker_idle_s: float = Field(
        default=300.0, gt=0, description="An idle worker exits after this long (frees the GPU)."
    )
    max_trials_per_worker: int = Field(
        default=50, ge=1, description="Retire a worker after this many trials."
    )


class RayClusterPolicy(_Strict):
    """Trials on a Ray cluster: each runs in a Ray actor with the resources asked here, its
    artefact sent back through Ray's object store, its energy measured on the node it ran on.
    Ray is imported only in the daemon's driver processes, never in the daemon itself."""

    kind: Literal["ray"]
    address: str | None = Field(
        default=None,
        description="'auto', 'host:port' of a running cluster's head; none: start a head "
        "on this machine for the daemon (stopped when it exits).",
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs a trial reserves.")
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs a trial reserves; default 1 when its device asks for a GPU "
        "('cuda...'), else 0.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources a trial needs, e.g. {gpu_a: 1}."
    )
    max_retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Runs of a trial on another node after its node "
        "was lost (the trial fails after that).",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray's runtime_env for the trials (e.g. env_vars, py_modules for a "
        "workload that the nodes do not have installed); passed to Ray as written.",
    )
    reuse_workers: bool = Field(
        default=True, description="Keep a trial's actor (its torch import) for the next trial."
    )
    worker_idle_s: float = Field(default=300.0, gt=0)
    max_trials_per_worker: int = Field(default=50, ge=1)


def _local_unless_said(value: Any) -> Any:
    """A cluster section without ``kind`` is local: files written before there was a choice."""
    if isinstance(value, dict) and "kind" not in value:
        return {"kind": "local", **value}
    return value


ClusterPolicy = Annotated[
    LocalClusterPolicy | RayClusterPolicy,
    BeforeValidator(_local_unless_said),
    Field(discriminator="kind"),
]
"""Where trials run, chosen by ``cluster.kind`` (default ``local``); an unknown kind is an
error naming ``kind``. ``adapters.cluster.make_cluster`` builds the adapter for each kind."""


class AdvisorPolicy(_Strict):
    """Optional LLM advisor (LiteLLM). It explains decisions; guardrails stay in code."""

    model: str = Field(description="LiteLLM model name, e.g. 'openai/gpt-4o-mini'.")
    api_base: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key (never the key)."
    )
    max_tokens: int = Field(default=200, gt=0)
    timeout_s: float = Field(default=20.0, gt=0)


class ServingPolicy(_Strict):
    max_tokens: int = Field(default=256, gt=0)


class RolloutPolicy(_Strict):
    """Canary rollout: the challenger takes `steps` percent of live traffic in turn, each held
    for `step_interval_s` while its live figures are compared with the champion's."""

    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: [10.0, 50.0, 100.0], min_length=1
    )
    step_interval_s: float = Field(default=60.0, gt=0)
    min_requests: int = Field(
        default=20, ge=1, description="Challenger requests a step needs to be judged."
    )
    max_error_rate_pct: float = Field(
        default=1.0, ge=0, le=100, description="Failure limit: challenger's failed requests, %."
    )
    max_error_rate_increase_pct: float = Field(
        default=0.5, ge=0, description="Allowed rise of the error rate over the champion's, points."
    )
    max_latency_p99_increase_pct: float = Field(
        default=50.0, ge=0, description="Allowed rise of p99 latency over the champion's, %."
    )
    max_latency_p99_ms: float | None = Field(default=None, gt=0)
    loss_sample_rate: float = Field(
        default=0.25, ge=0, le=1, description="Share of live prompts scored by both models."
    )
    min_loss_samples: int = Field(default=8, ge=1)
    max_online_loss_increase_pct: float = Field(
        default=2.0, ge=0, description="Allowed rise of bits/byte on live prompts, %."
    )
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    min_feedback: int = Field(
        default=10,
        ge=1,
        description="Ratings each version needs (since the rollout began) for feedback to count.",
    )
    max_feedback_drop: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Allowed fall of the challenger's mean rating (0..1) below the champion's; "
        "confidently more rolls it back.",
    )
    on_inconclusive: Literal["pause", "extend", "rollback", "proceed"] = Field(
        default="pause",
        description="pause: wait for `aifactory rollout continue|abort`; extend: hold the step "
        "again (up to max_extensions, then pause); rollback; proceed (trust the offline gates).",
    )
    max_extensions: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _rising(self) -> RolloutPolicy:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must rise (for example [10, 50, 100])")
        return self


class DemoTrafficPolicy(_Strict):
    """Demo only: the daemon sends its own line requests (labelled `aifactory-demo-<n>`),
    pieces of the standard library. `by_champion[k]` names what users ask about while
    champion v(k+1) serves; the last entry goes on. A real line leaves `demo` out."""

    rate_per_s: float = Field(default=4.0, gt=0, le=200)
    workers: int = Field(default=2, ge=1, le=16)
    max_tokens: int = Field(default=16, ge=1)
    by_champion: list[list[str]] = Field(min_length=1)


class DemoPolicy(_Strict):
    traffic: DemoTrafficPolicy | None = None


class Policy(_Strict):
    """One production line: what to train, on what, within which limits, and when to ship."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    workload: str = Field(default="bytelm", description="'bytelm' or 'package.module:object'.")
    data: DataPolicy = Field(default_factory=DataPolicy)
    budgets: BudgetPolicy = Field(default_factory=BudgetPolicy)
    tuning: TuningPolicy = Field(default_factory=TuningPolicy)
    triggers: TriggerPolicy = Field(default_factory=TriggerPolicy)
    gates: GatePolicy = Field(default_factory=GatePolicy)
    approval: Literal["auto", "required"] = "auto"
    energy: EnergyPolicy = Field(default_factory=EnergyPolicy)
    serving: ServingPolicy = Field(default_factory=ServingPolicy)
    cluster: ClusterPolicy = Field(default_factory=LocalClusterPolicy)
    rollout: RolloutPolicy | None = Field(
        default=None,
        description="Canary rollout after blessing; without it a blessed model is promoted "
        "at once.",
    )
    advisor: AdvisorPolicy | None = None
    demo: DemoPolicy | None = None

    def canonical_json(self) -> str:
        """Stable text form; the policy version is its hash. Settings added since policies
        were first versioned are left out while at their default (the cluster's `kind`,
        `tuning.parallel_trials`, capture, live monitoring, feedback), so a policy written
        before them keeps its version."""
        data = self.model_dump(mode="json")
        for path, default in _ADDED_SINCE_FIRST_VERSION:
            *parents, key = path
            node = data
            for name in parents:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, dict) and key in node and node[key] == default:
                del node[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def version(self) -> str:
        """The hash of the canonical form: computed once (the model is frozen)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def policy_json_schema() -> dict[str, Any]:
    return Policy.model_json_schema()


#: (path, default) of every setting added after policies were first versioned: left out of
#: the canonical form while at its default.
_ADDED_SINCE_FIRST_VERSION: list[tuple[tuple[str, ...], Any]] = [
    (("cluster", "kind"), "local"),
    (("tuning", "parallel_trials"), 1),
    (("data", "capture"), CapturePolicy().model_dump(mode="json")),
    (("triggers", "live"), LivePolicy().model_dump(mode="json")),
    (("triggers", "value"), RetrainValuePolicy().model_dump(mode="json")),
    (("gates", "feedback_min_corrections"), 20),
    (("rollout", "min_feedback"), 10),
    (("rollout", "max_feedback_drop"), 0.1),
    (("demo",), None),
    (("energy", "placement"), "auto"),
]
