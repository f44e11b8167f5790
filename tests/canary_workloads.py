"""Workloads whose models misbehave only under live traffic, named as `module:object`.

Models trained from cycle `AIFACTORY_TEST_FAULT_FROM_CYCLE` on are recorded (by artefact
SHA-256, which the registry keeps) in the file `AIFACTORY_TEST_FAULTY_LIST`; loaded for
serving, such a model fails any request that overlaps another one, the way a generator with
shared scratch buffers would. Offline evaluation and the evaluator's sequential test
requests never overlap, so the offline gates bless it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapters.store.registry import sha256_file
from adapters.workload.bytelm import ByteLMWorkload
from adapters.workload.protocol import Completion, TrainProgress, TrainRequest, TrainResult


def _faulty_list() -> Path | None:
    path = os.environ.get("AIFACTORY_TEST_FAULTY_LIST")
    return Path(path) if path else None


class BreaksUnderConcurrency(ByteLMWorkload):
    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        result = super().train(request, progress, should_stop)
        cycle = int(Path(request.out_path).parent.name.rsplit("-c", 1)[-1])
        threshold = int(os.environ.get("AIFACTORY_TEST_FAULT_FROM_CYCLE", "2"))
        listing = _faulty_list()
        if result.artefact_path and listing is not None and cycle >= threshold:
            with listing.open("a") as f:
                f.write(sha256_file(result.artefact_path) + "\n")
        return result

    def load(self, artefact_path: str, threads: int = 1) -> Any:
        generator = super().load(artefact_path, threads)
        listing = _faulty_list()
        if listing is None or not listing.exists():
            return generator
        if sha256_file(artefact_path) not in listing.read_text().split():
            return generator
        return _RacyGenerator(generator)


class _RacyGenerator:
    """Fails a request when another one is in flight on the same model."""

    def __init__(self, inner: Any) -> None:
        self.name = inner.name
        self._inner = inner
        self._lock = threading.Lock()
        self._in_flight = 0

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            clash = self._in_flight > 1
        if clash:
            self._leave()
            raise RuntimeError("scratch buffer already in use")

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Completion:
        self._enter()
        try:
            return self._inner.generate(prompt, max_tokens, temperature=temperature, seed=seed)
        finally:
            self._leave()

    def stream(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str | Completion]:
        self._enter()
        try:
            yield from self._inner.stream(prompt, max_tokens, temperature=temperature, seed=seed)
        finally:
            self._leave()

    def score(self, text: str) -> float | None:
        return self._inner.score(text)
