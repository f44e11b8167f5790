"""What every production line of a factory shares, built once by the factory runner:
settings, the store and its repositories, the scheduler, GPUs, slots, budgets, serving."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from rich.console import Console

from adapters.cluster.slots import SlotPool
from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store
from adapters.store.fencing import install_fencing
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook
from adapters.store.shared_files import SharedFiles
from controller.cycle_cost import BookedCpu
from controller.gpu import FactoryGpus
from controller.nodes.study import open_storage
from controller.settings import Settings


@dataclass
class FactoryServices:
    """What every line shares, built once by the factory runner."""

    settings: Settings
    console: Console
    store: Store
    audit: AuditLog
    registry: ModelRegistry
    ledger: Ledger
    catalog: DataCatalog
    book: CycleBook
    rollouts: RolloutBook
    scheduler: BackgroundScheduler
    gpus: FactoryGpus
    slots: SlotPool
    started: float
    checkpointer: Any = None
    serving: Any = None  # ServingSync, when the factory serves
    budget: Any = None  # FactoryBudget, when the factory has shared limits
    energy_note: str = ""  # how energy is measured here (for `aifactory status`)
    console_url: str = ""  # the operator console, when this daemon serves one
    many_lines: bool = False
    cycles: int | None = None  # --cycles/--once: each line stops after this many
    lines: dict[str, Any] = field(default_factory=dict)  # name -> ProductionLine
    measuring: threading.Lock = field(default_factory=threading.Lock)
    booked_cpu: BookedCpu = field(default_factory=BookedCpu)  # in-process work, every line
    # a shared store (PostgreSQL): the member's own bookkeeping, never fenced (serving's
    # tokens and events, membership); `store` above is fenced by the leader's term
    member_store: Store | None = None
    clients_store: Store | None = None  # clients' data (feedback, captured prompts), shared store
    member_audit: AuditLog | None = None
    member_ledger: Ledger | None = None
    files: SharedFiles | None = None  # artefacts and data splits every member reads
    _optuna: Any = None
    _optuna_lock: threading.Lock = field(default_factory=threading.Lock)

    def study_storage(self) -> Any:
        """The factory's one Optuna storage, made on first use (by the first trainer)."""
        with self._optuna_lock:
            if self._optuna is None:
                idle = self.store.idle_tx_timeout_s
                storage = open_storage(self.store.url, idle)
                if self.store.fence is not None:  # Optuna's writes carry the term too
                    self.store.fence.attach(storage.engine)
                    install_fencing(self.store.engine)
                self._optuna = storage
            return self._optuna

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)
