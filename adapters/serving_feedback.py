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

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from adapters.completion_ids import CompletionIds

MAX_CORRECTION_CHARS = 65_536


@dataclass(frozen=True)
class Feedback:
    """One rating as a client sent it: the answer it rates (by id, and what answered it),
    a rating in 0..1 (1 good) and optionally what the answer should have been."""

    completion_id: str
    line: str
    version: int
    rating: float
    correction: str | None = None


class FeedbackSink(Protocol):
    """Where ratings are kept. Returns the rating it replaced (None for a new answer)."""

    def record(self, fb: Feedback) -> float | None: ...


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    rating: float = Field(ge=0.0, le=1.0)
    correction: str | None = Field(default=None, max_length=MAX_CORRECTION_CHARS)


class FeedbackRefused(Exception):
    """A rating the desk will not take: the HTTP status, the message, an error code."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class _Counts:
    ratings: int = 0
    rating_sum: float = 0.0
    corrections: int = 0


class FeedbackDesk:
    """Takes ratings for the server: checks the id, stores through the sink, counts."""

    def __init__(self, ids: CompletionIds, sink: FeedbackSink | None = None) -> None:
        self.ids = ids
        self.sink = sink
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._lock = threading.Lock()

    def receive(self, body: FeedbackRequest) -> dict[str, Any]:
        answered = self.ids.read(body.id)
        if answered is None:
            shown = body.id if len(body.id) <= 80 else body.id[:80] + "..."
            raise FeedbackRefused(
                404, f"no answer of this factory has the id '{shown}'", "completion_not_found"
            )
        if self.sink is None:
            raise FeedbackRefused(503, "feedback is not recorded by this server", "no_feedback")
        fb = Feedback(body.id, answered.line, answered.version, body.rating, body.correction)
        try:
            previous = self.sink.record(fb)
        except Exception as exc:  # the store is down or slow: the client may send it again
            raise FeedbackRefused(
                503,
                f"feedback could not be stored now ({type(exc).__name__}); send it again",
                "feedback_not_stored",
            ) from exc
        with self._lock:
            counts = self._counts.setdefault((answered.line, answered.version), _Counts())
            counts.ratings += 1
            counts.rating_sum += body.rating
            counts.corrections += int(body.correction is not None)
        return {
            "object": "feedback",
            "id": body.id,
            "model": answered.model_id,
            "rating": body.rating,
            "replaced": previous,
        }

    def families(self, requests: Callable[[str, int], float]) -> Iterator[Any]:
        """Prometheus series per line and version: ratings received here (a changed rating
        counts again), their sum and mean, corrections, and ratings per answered request."""
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
            "aifactory_feedback_score", "Mean rating received (1 good, 0 bad)", labels=labels
        )
        rate = GaugeMetricFamily(
            "aifactory_feedback_rate", "Ratings per request answered", labels=labels
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
                rate.add_metric(key, c.ratings / answered)
        yield from (total, summed, fixes, score, rate)
