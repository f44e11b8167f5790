"""Trainable workloads: the protocol the controller drives and the built-in byte-level LM."""

from .bytelm import ARTEFACT_FORMAT, ByteLMConfig, ByteLMGenerator, ByteLMWorkload
from .protocol import (
    Completion,
    EvalResult,
    TextGenerator,
    TrainProgress,
    TrainRequest,
    TrainResult,
    Workload,
    load_workload,
)

__all__ = [
    "ARTEFACT_FORMAT",
    "ByteLMConfig",
    "ByteLMGenerator",
    "ByteLMWorkload",
    "Completion",
    "EvalResult",
    "TextGenerator",
    "TrainProgress",
    "TrainRequest",
    "TrainResult",
    "Workload",
    "load_workload",
]
