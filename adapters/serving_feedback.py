"""`POST /v1/feedback`: clients rate served answers, by the answer's completion id.

The server reads which version answered from the signed id (`adapters.completion_ids`),
hands the rating to a :class:`FeedbackSink` (the store, in the daemon) and counts it per
line and version for `/metrics`. Body::

    {"id": "chatcmpl-...", "rating": 0.0..1.0, "correction": "what it should have said"}

``rating`` 1 is good, 0 bad (a thumbs up or down is 1 or 0). Rating an answer again
replaces the earlier rating. Refusals are OpenAI-style JSON errors: 400 for a malformed
body, 404 for an id this factory never issued, 503 when nothing records feedback here
or the store cannot take it now (sending it again is safe: the id is the key).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.completion_ids import CompletionIds

MAX_CORRECTION_CHARS = 65_536
#: Ratings stored at once; more wait for none (503): a flood never holds serving's threads.
MAX_CONCURRENT_WRITES = 8
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Feedback:
    """One rating as a client sent it: the answer it rates (by id, and what answered it),
    a rating in 0..1 (1 good) and optionally what the answer should have been."""

    completion_id: str
    line: str
    version: int
    rating: float
    correction: str | None = None
    routed: bool = True  # the line's routing chose the version (not pinned by the client)


class FeedbackSink(Protocol):
    """Where ratings are kept. Returns the rating it replaced (None for a new answer)."""

    def record(self, fb: Feedback) -> float | None: ...


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    rating: float = Field(ge=0.0, le=1.0, strict=True)
    correction: str | None = Field(default=None, max_length=MAX_CORRECTION_CHARS)

    @field_validator("correction")
    @classmethod
    def _printable(cls, text: str | None) -> str | None:
        """Text that can be stored everywhere and shown safely: no NUL, no control
        characters (terminal escapes) but tab and newline."""
        if text is not None and _CONTROL.search(text):
            raise ValueError(
                "correction must not contain control characters (tab and newline are fine)"
            )
        return text


class FeedbackRefused(Exception):
    """A rating the desk will not take: the HTTP status, the message, an error code."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class _Counts:
    ratings: int = 0  # every rating received, a changed one again
    answers: int = 0  # answers rated for the first time
    rating_sum: float = 0.0
    corrections: int = 0


class FeedbackDesk:
    """Takes ratings for the server: checks the id, stores through the sink, counts."""

    def __init__(self, ids: CompletionIds, sink: FeedbackSink | None = None) -> None:
        self.ids = ids
        self.sink = sink
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._lock = threading.Lock()
        self._writes = threading.BoundedSemaphore(MAX_CONCURRENT_WRITES)

    def receive(self, body: FeedbackRequest) -> dict[str, Any]:
        answered = self.ids.read(body.id)
        if answered is None:
            shown = body.id if len(body.id) <= 80 else body.id[:80] + "..."
            raise FeedbackRefused(
                404, f"no answer of this factory has the id '{shown}'", "completion_not_found"
            )
        if self.sink is None:
            raise FeedbackRefused(503, "feedback is not recorded by this server", "no_feedback")
        fb = Feedback(
            body.id,
            answered.line,
            answered.version,
            body.rating,
            body.correction,
            answered.routed,
        )
        previous = self._store(fb)
        with self._lock:
            counts = self._counts.setdefault((answered.line, answered.version), _Counts())
            counts.ratings += 1
            counts.answers += int(previous is None)
            counts.rating_sum += body.rating
            counts.corrections += int(body.correction is not None)
        return {
            "object": "feedback",
            "id": body.id,
            "model": answered.model_id,
            "rating": body.rating,
            "replaced": previous,
        }

    def _store(self, fb: Feedback) -> float | None:
        assert self.sink is not None
        if not self._writes.acquire(blocking=False):
            raise FeedbackRefused(
                503, "too much feedback at once; send it again shortly", "feedback_busy"
            )
        try:
            return self.sink.record(fb)
        except Exception as exc:  # the store is down or slow: the client may send it again
            raise FeedbackRefused(
                503,
                f"feedback could not be stored now ({type(exc).__name__}); send it again",
                "feedback_not_stored",
            ) from exc
        finally:
            self._writes.release()

    def families(self, requests: Callable[[str, int], float]) -> Iterator[Any]:
        """Prometheus series per line and version, of what this member received: ratings (a
        changed rating counts again), their sum and mean, corrections, and the answers rated
        for the first time per answered request (the store has the rest: `aifactory
        feedback`)."""
        labels = ["line", "version"]
        total = CounterMetricFamily("aifactory_feedback", "Ratings received", labels=labels)
        summed = CounterMetricFamily(
            "aifactory_feedback_rating_sum",
            "Sum of the ratings received (0..1 each)",
            labels=labels,
        )
        fixes = CounterMetricFamily(
            "aifactory_feedback_corrections", "Ratings that came with a correction", labels=labels
        )
        score = GaugeMetricFamily(
            "aifactory_feedback_score",
            "Mean of the ratings received (1 good, 0 bad; a changed rating counts again)",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "aifactory_feedback_rate",
            "Answers rated (first time) per request answered, on this member",
            labels=labels,
        )
        with self._lock:
            counts = {key: _Counts(**vars(c)) for key, c in self._counts.items()}
        for (line, version), c in sorted(counts.items()):
            key = [line, f"v{version}"]
            total.add_metric(key, c.ratings)
            summed.add_metric(key, c.rating_sum)
            fixes.add_metric(key, c.corrections)
            score.add_metric(key, c.rating_sum / c.ratings)
            answered = requests(line, version)
            if answered > 0:
                rate.add_metric(key, c.answers / answered)
        yield from (total, summed, fixes, score, rate)
