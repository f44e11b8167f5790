"""A bring-your-own workload that honours some placement knobs and not others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from adapters.workload.bytelm import ByteLMWorkload
from adapters.workload.protocol import TrainProgress, TrainRequest, TrainResult


class NoAccumulation(ByteLMWorkload):
    """Applies precision (fp32, bf16) and batch size, never gradient accumulation: a knob
    it does not declare must never reach it."""

    placement_knobs: ClassVar[dict[str, tuple[Any, ...]]] = {
        "precision": ("fp32", "bf16"),
        "batch_size": (8, 16, 32),
    }

    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        if "grad_accum" in request.params:
            raise RuntimeError("handed grad_accum, which this workload does not honour")
        return super().train(request, progress, should_stop)
