"""Trainable workloads: the protocol the controller drives and the built-in byte-level LM."""

from typing import Any

from .loader import load_workload
from .protocol import (
    Completion,
    EvalResult,
    TextGenerator,
    TrainProgress,
    TrainRequest,
    TrainResult,
    Workload,
)

_BYTELM = ("ARTEFACT_FORMAT", "ByteLMConfig", "ByteLMGenerator", "ByteLMWorkload")


def __getattr__(name: str) -> Any:
    """The byte-level LM imports torch (seconds): load it on first use, not with the package,
    so a trial worker's start-up is inside its energy window and light tools stay light."""
    if name in _BYTELM:
        from . import bytelm

        return getattr(bytelm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
