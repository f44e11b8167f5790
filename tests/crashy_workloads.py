"""Workloads that misbehave on purpose, named as `module:object` like an operator's own."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from adapters.workload.bytelm import ByteLMWorkload
from adapters.workload.protocol import TrainProgress, TrainRequest, TrainResult


class HardCrash(ByteLMWorkload):
    """Dies like a segfaulting extension would: no exception, no goodbye."""

    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        os._exit(7)


class Raises(ByteLMWorkload):
    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        raise RuntimeError("CUDA out of memory (pretend)")


class CrashOnLargeLr(ByteLMWorkload):
    """Crashes only for some hyperparameters, so one trial of a study fails and others pass."""

    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        if float(request.params.get("lr", 0)) > 0.006:
            os._exit(9)
        return super().train(request, progress, should_stop)


def params(**kw: Any) -> dict[str, Any]:
    base = {
        "d_model": 32,
        "n_layers": 1,
        "n_heads": 2,
        "context": 32,
        "batch_size": 8,
        "warmup_steps": 2,
    }
    return base | kw
