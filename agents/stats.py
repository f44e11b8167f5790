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


def bootstrap_diff_bounds(
    a: Sequence[float], b: Sequence[float], *, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """One-sided `confidence` bounds (lower, upper) of mean(a) - mean(b) for two independent
    samples (ratings of two versions' different answers), each resampled on its own."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ma = xa[rng.integers(0, len(xa), size=(resamples, len(xa)))].mean(axis=1)
    mb = xb[rng.integers(0, len(xb), size=(resamples, len(xb)))].mean(axis=1)
    diff = ma - mb
    return float(np.quantile(diff, 1.0 - confidence)), float(np.quantile(diff, confidence))
