"""Small statistics shared by the agents that compare two models on paired samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_mean_bounds(
    values: Sequence[float], *, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """One-sided `confidence` bounds (lower, upper) of the mean of `values`, by resampling
    them with replacement. Paired comparisons pass per-pair differences, so what varies
    between samples (prompt difficulty, chunk content) cancels out."""
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    return float(np.quantile(means, 1.0 - confidence)), float(np.quantile(means, confidence))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))
