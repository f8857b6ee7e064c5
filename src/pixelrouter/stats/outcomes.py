"""A generation's provider attempts as the rows the statistics count (`ProviderOutcome`).

The generation's bookkeeping hands over its attempts; this module decides what each counts as:
whether it was the provider's failure (`errors.provider_down`), when it ended, and what the
serving attempt delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pixelrouter.errors import provider_down
from pixelrouter.store import utcnow
from pixelrouter.store.stats_records import ProviderOutcome
from pixelrouter.types import ProviderAttempt


def outcomes_of(
    attempts: Sequence[ProviderAttempt],
    *,
    model: str,
    images: int = 0,
    image_tokens: int = 0,
    ended: datetime | None = None,
) -> list[ProviderOutcome]:
    """One row per attempt at a known provider. With `images`, the last attempt is the one
    that served them (`model` is the request's, for an attempt that does not name its own).

    Attempts carry durations, not times: each is dated by walking back from `ended` (now)
    through the attempts that followed it."""
    rows: list[ProviderOutcome] = []
    at = utcnow() if ended is None else ended
    last = len(attempts) - 1
    for i in range(last, -1, -1):
        attempt = attempts[i]
        served = images > 0 and i == last
        if attempt.provider_slug:
            rows.append(
                ProviderOutcome(
                    provider_slug=attempt.provider_slug,
                    provider_name=attempt.provider_name,
                    model=attempt.model or model,
                    created_at=at,
                    status=attempt.status,
                    provider_caused=provider_down(attempt.status),
                    latency_ms=attempt.latency_ms,
                    images=images if served else 0,
                    image_tokens=image_tokens if served else 0,
                )
            )
        at -= timedelta(milliseconds=attempt.latency_ms)
    rows.reverse()
    return rows
