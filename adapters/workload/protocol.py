"""The contract between the controller and a trainable workload.

The controller never knows what model it is retraining: it hands a workload a
:class:`TrainRequest` (data files, a token budget, hyperparameters), gets back a
:class:`TrainResult` and an artefact on disk, scores artefacts with ``evaluate`` and
serves them through ``load``.  Keeping this surface small and plain-data lets third
parties plug in their own workloads (``adapters.workload.loader.load_workload`` resolves
them). This module holds only the types, so any implementation may import it.

A workload may also declare ``placement_knobs`` (knob -> accepted values: ``precision``,
``batch_size``, ``grad_accum``), ``bytes_per_sample(params)`` and
``tokens_per_sample(params)``: with ``energy.placement: auto`` the controller then
searches those knobs where the device has them, with batch sizes that fit its memory and
leave a trial's token budget enough optimiser steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Completion",
    "EvalResult",
    "TextGenerator",
    "TrainProgress",
    "TrainRequest",
    "TrainResult",
    "Workload",
    "honoured_knobs",
]


@dataclass(frozen=True)
class TrainRequest:
    """One training job; plain data so it can be logged, queued and replayed.

    ``params`` holds the workload's hyperparameters; a workload rejects keys it does not
    know with a ``ValueError`` naming the key, so typos never silently fall back to defaults.
    ``max_tokens`` is a hard cap: a workload never processes more input tokens than this.
    """

    params: dict[str, Any]
    train_files: list[str]
    valid_files: list[str]
    max_tokens: int
    out_path: str
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    max_seconds: float | None = None


@dataclass(frozen=True)
class TrainProgress:
    """A periodic heartbeat so the controller can show and account for a running job."""

    step: int
    tokens: int
    loss: float
    tokens_per_s: float


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) training run produced.

    ``stopped_reason`` is one of ``"budget"``, ``"time"``, ``"stopped"``, ``"target"`` or ``"nan"``;
    on ``"nan"`` nothing is saved and ``artefact_path`` is ``""``.
    """

    tokens: int
    seconds: float
    valid_bpb: float
    final_train_loss: float
    device: str
    precision: str
    n_params: int
    steps: int
    stopped_reason: str
    artefact_path: str


@dataclass(frozen=True)
class EvalResult:
    """Held-out score; per-chunk-group values allow a paired bootstrap between artefacts."""

    bpb: float
    tokens: int
    chunk_bpb: tuple[float, ...]


@dataclass(frozen=True)
class Completion:
    """One generated continuation, with token counts for accounting."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "length" | "stop"


@runtime_checkable
class TextGenerator(Protocol):
    """A loaded artefact that can serve text completions (must be thread-safe). An
    optional integer ``context`` (the prompt bytes it reads) lets serving tell a client
    whose prompt was longer."""

    name: str

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Completion:
        """Continue ``prompt`` by up to ``max_tokens`` tokens."""
        ...


@runtime_checkable
class Workload(Protocol):
    """Something the controller can train, score and serve."""

    name: str

    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train within the request's budget and save the artefact to ``request.out_path``."""
        ...

    def evaluate(
        self, artefact_path: str, files: list[str], max_bytes: int = 200_000, threads: int = 2
    ) -> EvalResult:
        """Score a saved artefact on held-out files."""
        ...

    def load(self, artefact_path: str, threads: int = 1) -> TextGenerator:
        """Load a saved artefact for serving."""
        ...


def honoured_knobs(workload: object) -> dict[str, tuple[Any, ...]]:
    """The placement knobs a workload applies, with the values it takes: its optional
    ``placement_knobs`` attribute. A workload that declares none is handed none, so a knob
    it would ignore never costs a trial (`agents.placement`)."""
    knobs = getattr(workload, "placement_knobs", None)
    if not knobs:
        return {}
    return {str(knob): tuple(values) for knob, values in dict(knobs).items()}
