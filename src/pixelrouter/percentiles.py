"""Percentiles of samples, as the endpoints API reports them and routing compares them."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50), ("p75", 75), ("p90", 90), ("p99", 99))
Percentiles = dict[str, float]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linearly interpolated between the two
    nearest ranks (numpy's default method)."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(samples: Sequence[float], *, digits: int | None = None) -> Percentiles | None:
    """{p50, p75, p90, p99} of the samples, or None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    values = {name: percentile(ordered, q) for name, q in PERCENTILES}
    if digits is not None:
        values = {name: round(value, digits) for name, value in values.items()}
    return values
