"""Small, dependency-free statistics for latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default).

    Interpolating keeps p95 of 20 samples meaningful instead of snapping to the maximum.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p95, mean, min and max; an empty list gives just n = 0."""
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "mean": sum(samples) / len(samples),
        "min": min(samples),
        "max": max(samples),
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def rate(count: float, seconds: float, per: float = 1.0) -> float | None:
    """count per `per` seconds (per=60 gives a per-minute rate); None for no elapsed time."""
    return count / seconds * per if seconds > 0 else None
