"""The order in which one request tries its providers (SPEC §4): pure, no I/O.

A `Candidate` is a provider as one plan sees it (its price at the request's size, its live
queue and health figures); `order_candidates` puts them in the request's order: `order`, else
`sort`, else one drawn with weight 1/price² first and the rest by price, always free queues
before full ones and healthy providers before recently failed ones.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelrouter.providers.base import Provider, ProviderStatus
from pixelrouter.types import ImageRequest, ProviderPrefs

log = logging.getLogger("pixelrouter.routing.router")


@dataclass(frozen=True)
class Candidate:
    """A provider as one plan sees it: its price at the request's size and its live figures."""

    provider: Provider
    price: int  # micro-dollars per image at the request's size
    queue_full: bool
    wait_s: float  # the provider's own estimated queue wait
    demoted: bool  # a provider-caused failure within the recent-failure window
    latency_s: float | None  # EWMA seconds per image, None before a success
    throughput: float | None  # EWMA image tokens per second, None before a success
    # Beyond the request's preferred_max_latency / preferred_min_throughput (tried later).
    beyond_preferences: bool = False

    @property
    def slug(self) -> str:
        return self.provider.info.slug


def _by_price(c: Candidate) -> tuple[int, float]:
    return c.price, c.wait_s


def _by_throughput(c: Candidate) -> tuple[bool, float, int, float]:
    return c.throughput is None, -(c.throughput or 0.0), c.price, c.wait_s


def _by_latency(c: Candidate) -> tuple[bool, float, int, float]:
    return c.latency_s is None, c.latency_s or 0.0, c.price, c.wait_s


SORT_KEYS: dict[str, Callable[[Candidate], tuple[Any, ...]]] = {
    "price": _by_price,
    "throughput": _by_throughput,
    "latency": _by_latency,
}


def _free_and_healthy_first(candidates: list[Candidate]) -> list[Candidate]:
    """Stable: free queues before full ones (SPEC §4: never a full queue while another provider
    is free), and within each, recently failed providers after the others, then those beyond
    the request's preferred latency or throughput."""
    return sorted(candidates, key=lambda c: (c.queue_full, c.demoted, c.beyond_preferences))


def beyond_preferences(
    prefs: ProviderPrefs, latency_s: dict[str, float], throughput: dict[str, float]
) -> bool:
    """Whether a provider's live percentiles miss the request's preferred cut-offs; a provider
    without figures yet is given the benefit of the doubt."""
    slow = any(
        name in latency_s and latency_s[name] > cutoff
        for name, cutoff in prefs.preferred_max_latency_s
    )
    thin = any(
        name in throughput and throughput[name] < cutoff
        for name, cutoff in prefs.preferred_min_throughput
    )
    return slow or thin


def weighted_pick(candidates: list[Candidate], rng: random.Random) -> Candidate:
    """One candidate at random with weight 1/price² (SPEC §4's default).

    Equal prices have equal weights, so the draw picks a price (weight: how many providers
    have it / price²) and, among the providers at that price, the one with the shortest
    estimated wait; equal waits are drawn uniformly, so idle equal workers share the load.
    """
    by_price: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        by_price.setdefault(candidate.price, []).append(candidate)
    prices = list(by_price)
    lowest = max(1, min(prices))  # weights relative to the cheapest keep the floats tame
    weights = [len(by_price[p]) * (lowest / max(1, p)) ** 2 for p in prices]
    group = by_price[rng.choices(prices, weights=weights)[0]]
    shortest = min(c.wait_s for c in group)
    waiting_least = [c for c in group if c.wait_s == shortest]
    return waiting_least[0] if len(waiting_least) == 1 else rng.choice(waiting_least)


def order_candidates(
    candidates: list[Candidate], request: ImageRequest, rng: random.Random
) -> list[Candidate]:
    """SPEC §4's order: `order`, else `sort`, else the weighted default."""
    prefs = request.prefs
    if prefs.order:
        listed = [c for slug in dict.fromkeys(prefs.order) for c in candidates if c.slug == slug]
        rest = sorted((c for c in candidates if c.slug not in prefs.order), key=_by_price)
        if not prefs.allow_fallbacks:
            # No fallbacks: only a listed provider, even when the listed ones failed recently
            # (demoted behind the rest) or are held back (not candidates at all).
            rest = []
        ordered = _free_and_healthy_first(listed + rest)
    elif prefs.sort is not None:
        ordered = _free_and_healthy_first(sorted(candidates, key=SORT_KEYS[prefs.sort]))
    else:
        fallbacks = _free_and_healthy_first(sorted(candidates, key=_by_price))
        healthy = [c for c in candidates if not c.queue_full and not c.demoted]
        healthy = [c for c in healthy if not c.beyond_preferences] or healthy
        if healthy:
            first = weighted_pick(healthy, rng)
            ordered = [first, *(c for c in fallbacks if c is not first)]
        else:  # every candidate failed recently or is full: a last resort, in price order
            ordered = fallbacks
    return ordered if prefs.allow_fallbacks else ordered[:1]


def live_status(provider: Provider) -> ProviderStatus:
    try:
        return provider.status()
    except Exception:
        log.exception("status() of provider %s failed", provider.info.slug)
        return ProviderStatus()


def wait_s(status: ProviderStatus) -> float:
    wait = status.estimated_wait_s
    return float(wait) if math.isfinite(wait) else 0.0
