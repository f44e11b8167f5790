"""What one production line's cycle works with: its context (adapters, store, policy) and
the state LangGraph checkpoints between nodes.

Built by the line (`controller/line.py`) and handed to every node explicitly; nodes import
these types from here, never from each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypedDict

from adapters.cluster.base import Cluster
from adapters.data_sources import DataSource
from adapters.energy import EnergyReading
from adapters.llm import Advisor
from adapters.store.audit import AuditLog, LineAudit
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store
from adapters.store.feedback import FeedbackLog
from adapters.store.ledger import Ledger
from adapters.store.registry import CHAMPION, ModelRegistry, ModelVersion
from adapters.store.rollouts import RolloutBook
from adapters.store.shared_files import SharedFiles
from adapters.workload.protocol import Workload
from agents.actions import Action
from agents.placement import DeviceView
from controller.cycle_cost import BookedCpu
from controller.ingest import Ingestor
from controller.progress import ProgressReporter
from controller.settings import RuntimeSettings
from policies.model import Policy

if TYPE_CHECKING:
    from adapters.serving import LiveWindow
    from controller.budget import LineBudget


class CycleInterrupted(Exception):
    """The daemon (or this line) is stopping; the cycle stays checkpointed and resumes."""


def _merge(a: dict[str, float] | None, b: dict[str, float] | None) -> dict[str, float]:
    return {**(a or {}), **(b or {})}


class CycleState(TypedDict, total=False):
    cycle_id: str
    trigger: str
    dataset_version: str | None
    retrain: bool
    allowance: dict[str, Any] | None
    trials: list[dict[str, Any]]
    new_files: list[str]
    champion_new_bpb: float | None
    new_since: float | None
    defer_for_h: float | None
    candidate_version: int | None
    blessed: bool
    approved: bool | None
    promoted: bool
    rollout: str | None  # running | paused | promoted | rolled_back | aborted
    canary_step: int
    canary_extensions: int
    canary_champion: dict[str, Any]
    canary_carry: dict[str, Any]  # evidence of a step being extended
    drift: dict[str, Any]  # the data node's drift figures (the retraining's features)
    value: dict[str, Any]  # the predicted gain per kWh, when one was made
    stage_s: Annotated[dict[str, float], _merge]


class LiveTraffic(Protocol):
    """What the canary reads from serving for its line: the live figures since the last
    call, and what is served; and the live watch: a sample of served prompts per version."""

    def take_window(self) -> LiveWindow: ...

    def take_prompts(self) -> list[str]: ...

    @property
    def current(self) -> Any: ...

    @property
    def challenger(self) -> tuple[Any, float] | None: ...

    def live_count(self, version: int) -> int: ...

    def take_live_sample(self, version: int) -> list[str]: ...

    def keep_live_only(self, version: int) -> None: ...

    def publish_live(self, version: int, figures: dict[str, float]) -> None: ...


@dataclass
class LineContext:
    """Everything one line's cycle touches, built once by the line and passed in explicitly."""

    policy: Policy
    store: Store
    audit: AuditLog | LineAudit  # a line's view: its events carry the line
    registry: ModelRegistry
    ledger: Ledger
    catalog: DataCatalog
    book: CycleBook
    cluster: Cluster
    workload: Workload
    workload_spec: str
    source: DataSource
    ingestor: Ingestor
    trials_dir: Path
    threads: int = 2
    reporter: ProgressReporter = field(default_factory=ProgressReporter)
    stop_event: threading.Event = field(default_factory=threading.Event)
    on_champion_changed: Callable[[], None] = lambda: None
    advisor: Advisor | None = None
    max_power_w: float = 0.0  # P_max for the Zeus-style cost (device maximum or host estimate)
    set_power_limit: Callable[[float, str], str] = lambda watts, key: "no GPU: knob ignored"
    power_knob_problem: str | None = "no GPU adapter"  # None: power limits may be set
    device: DeviceView = field(default_factory=lambda: DeviceView(False, "not probed"))
    power_limit_released: Callable[[str], None] = lambda key: None  # a trial ended
    rollouts: RolloutBook | None = None
    traffic: LiveTraffic | None = None  # the serving endpoint's live figures (canary)
    feedback: FeedbackLog | None = None  # clients' ratings of answers (canary, gates)
    budget: LineBudget | None = None  # this line's share of the factory's budgets
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    study_storage: Callable[[], Any] = lambda: None  # the factory's one Optuna storage
    trial_slots: Callable[[], int] = lambda: 1  # the factory's slots: caps parallel_trials
    gpu_count: int = 0  # GPUs local trials use (NVML): concurrent trials would share them
    # held around in-process energy windows (evaluation, drift): process CPU time would
    # count two lines' concurrent windows twice
    measuring: threading.Lock = field(default_factory=threading.Lock)
    booked_cpu: BookedCpu = field(default_factory=BookedCpu)  # the daemon's, every line's
    # serving or other lines run in this process: its clock counts them in the controller's
    # CPU figure, which is then an upper bound
    shares_clock: bool = False
    files: SharedFiles | None = None  # files every member reads (a shared store)
    kept_traffic: Any = None  # adapters.traffic_source.TrafficSource: expired by retention

    @property
    def name(self) -> str:
        return self.policy.name

    def record(self, action: Action, cycle_id: str, key: str) -> None:
        self.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
            figures=action.figures,
            cycle_id=cycle_id,
            policy_version=self.policy.version,
            key=f"{cycle_id}:{key}",
        )

    def champion(self) -> ModelVersion | None:
        v = self.registry.alias(self.name, CHAMPION)
        return self.registry.get(self.name, v) if v is not None else None

    def champion_version(self) -> int | None:
        return self.registry.alias(self.name, CHAMPION)

    # data the nodes share ------------------------------------------------------------

    def holdouts(self, hashes: tuple[str, ...] | list[str]) -> list[str]:
        """Paths of the held-out tails of the given files (those not expired since)."""
        usable = self.catalog.usable(self.name, hashes)
        return [self.local(self.ingestor.blob_paths(h)[1]) for h in usable]

    def trains(self, hashes: tuple[str, ...] | list[str]) -> list[str]:
        """Paths of the training parts of the given files (those not expired since)."""
        usable = self.catalog.usable(self.name, hashes)
        return [self.local(self.ingestor.blob_paths(h)[0]) for h in usable]

    def local(self, path: str | Path) -> str:
        """A file of our state directory that this member may lack (an earlier leader wrote
        it): fetched from the share."""
        return str(path) if self.files is None else str(self.files.ensure(path))

    def local_artefact(self, path: str, sha256: str) -> str:
        """A trial's artefact, which another member may have trained: by its content."""
        return path if self.files is None else str(self.files.local_model(path, sha256))

    def evaluate(self, artefact: str, files: list[str]) -> Any:
        return self.workload.evaluate(
            artefact, files, max_bytes=self.policy.data.eval_max_bytes, threads=self.threads
        )

    def book_eval(self, key: str, cid: str, tokens: int, reading: EnergyReading) -> None:
        """Evaluation work goes on the ledger too: it counts against the day's energy (and
        is work the cycle ordered, not the controller's own cost)."""
        self.booked_cpu.add(reading.cpu_seconds)
        self.ledger.record(
            key=key,
            policy_name=self.name,
            cycle_id=cid,
            kind="eval",
            tokens=tokens,
            joules=reading.joules,
            method=reading.method,
        )
