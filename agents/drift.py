"""Drift measures (pure): byte distributions and their Jensen-Shannon divergence."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def byte_histogram(chunks: Iterable[bytes]) -> list[int]:
    counts = [0] * 256
    for data in chunks:
        for value, n in _count(data).items():
            counts[value] += n
    return counts


def _count(data: bytes) -> dict[int, int]:
    out: dict[int, int] = {}
    for value in set(data):
        out[value] = data.count(value)
    return out


def add_histograms(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def js_divergence(p_counts: Sequence[int], q_counts: Sequence[int]) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    p_total, q_total = sum(p_counts), sum(q_counts)
    if p_total == 0 or q_total == 0:
        raise ValueError("cannot compare an empty distribution")
    js = 0.0
    for pc, qc in zip(p_counts, q_counts, strict=True):
        p, q = pc / p_total, qc / q_total
        m = (p + q) / 2
        if p > 0:
            js += 0.5 * p * math.log2(p / m)
        if q > 0:
            js += 0.5 * q * math.log2(q / m)
    return max(0.0, js)
