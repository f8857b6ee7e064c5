"""Per-provider health as routing sees it: recent failures, a circuit breaker, retry-after,
and live latency and throughput figures for `provider.sort`.

Everything here is plain bookkeeping with no awaits, so one event loop may use it without
locks. Time comes from an injectable `clock` (monotonic seconds) so tests can move it.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelrouter.errors import provider_down
from pixelrouter.percentiles import percentiles

Clock = Callable[[], float]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"  # work flows
    OPEN = "open"  # K provider-caused failures in a row: no work until the cool-down passed
    HALF_OPEN = "half_open"  # cool-down passed: a cheap probe decides, never a paid generation


@dataclass(frozen=True)
class HealthConfig:
    """The knobs of SPEC §4's failure handling; the defaults are the documented ones."""

    failure_threshold: int = 3  # K consecutive provider-caused failures open the circuit
    cooldown_s: float = 30.0  # an open circuit waits this long before a probe
    recent_failure_window_s: float = 30.0  # a failure this recent demotes a provider
    ewma_weight: float = 0.3  # weight of the newest success in the latency/throughput figures
    percentile_window_s: float = 1800.0  # successes behind the live percentiles (30 min)
    percentile_samples: int = 512  # at most this many of them, the newest


@dataclass(frozen=True)
class Failure:
    """One provider-caused failure. Rate limits are kept apart: SPEC's uptime excludes them."""

    at: float
    status: int
    message: str
    rate_limited: bool


class ProviderHealth:
    """What routing remembers about one provider."""

    def __init__(self, slug: str, config: HealthConfig, clock: Clock) -> None:
        self.slug = slug
        self.config = config
        self.clock = clock
        self._state = CircuitState.CLOSED
        self.opened_at: float | None = None
        self.consecutive_failures = 0
        self.retry_after_until: float | None = None
        self.recent: deque[Failure] = deque(maxlen=64)
        self.last_error: str | None = None
        # EWMA over successes: seconds per image, image tokens per second.
        self.latency_s: float | None = None
        self.throughput: float | None = None
        # Recent successes (at, seconds end to end, image tokens per second), for percentiles.
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=config.percentile_samples)
        # Every attempt is counted here, whatever its outcome.
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.rate_limited = 0
        self.client_errors = 0
        self.probes = 0
        self.probe_failures = 0

    # ------------------------------------------------------------------ state

    def state(self, now: float | None = None) -> CircuitState:
        """The circuit's state; an open circuit whose cool-down has passed reads as half-open."""
        now = self.clock() if now is None else now
        if (
            self._state is CircuitState.OPEN
            and self.opened_at is not None
            and now - self.opened_at >= self.config.cooldown_s
        ):
            return CircuitState.HALF_OPEN
        return self._state

    def probe_due(self, now: float | None = None) -> bool:
        return self.state(now) is CircuitState.HALF_OPEN

    def retry_after_remaining(self, now: float | None = None) -> float:
        """Seconds until the provider's own `Retry-After` has passed (0 when none applies)."""
        now = self.clock() if now is None else now
        if self.retry_after_until is None:
            return 0.0
        return max(0.0, self.retry_after_until - now)

    def accepts_work(self, now: float | None = None) -> bool:
        """Closed circuit and no pending `Retry-After`: routing may send it a generation."""
        now = self.clock() if now is None else now
        return self.state(now) is CircuitState.CLOSED and self.retry_after_remaining(now) == 0

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until this provider may take work again without a probe deciding sooner."""
        now = self.clock() if now is None else now
        circuit = 0.0
        if self.state(now) is CircuitState.OPEN and self.opened_at is not None:
            circuit = self.opened_at + self.config.cooldown_s - now
        return max(circuit, self.retry_after_remaining(now))

    def failed_recently(self, now: float | None = None, *, rate_limits: bool = True) -> bool:
        """A provider-caused failure within the recent-failure window (optionally ignoring rate
        limits)."""
        now = self.clock() if now is None else now
        window = self.config.recent_failure_window_s
        return any(now - f.at < window and (rate_limits or not f.rate_limited) for f in self.recent)

    # ------------------------------------------------------------------ outcomes

    def record_success(
        self, *, seconds: float, images: int, image_tokens: int, now: float | None = None
    ) -> None:
        """A generation delivered: the circuit closes and the live figures move."""
        now = self.clock() if now is None else now
        self.attempts += 1
        self.successes += 1
        self.consecutive_failures = 0
        self._state = CircuitState.CLOSED
        self.opened_at = None
        seconds = max(seconds, 1e-6)
        per_image = seconds / max(1, images)
        tokens_per_s = image_tokens / seconds
        self.latency_s = self._ewma(self.latency_s, per_image)
        self.throughput = self._ewma(self.throughput, tokens_per_s)
        self.samples.append((now, seconds, tokens_per_s))

    def percentiles(self, now: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """(latency in seconds per request, throughput in image tokens per second) at p50, p75,
        p90 and p99 over the recent successes; empty before the first."""
        now = self.clock() if now is None else now
        recent = [s for s in self.samples if now - s[0] <= self.config.percentile_window_s]
        return (
            percentiles([s[1] for s in recent]) or {},
            percentiles([s[2] for s in recent]) or {},
        )

    def record_failure(
        self,
        status: int,
        message: str,
        *,
        retry_after_s: float | None = None,
        now: float | None = None,
    ) -> None:
        """A provider-caused failure (5xx, timeout, 429, bad answer, a bug in its code).

        A rate limit (429) demotes the provider and its `Retry-After` is honoured, but it does
        not move the circuit: a provider that says "slow down" is up, and its retry-after (or
        the recent-failure window) already keeps work away.
        """
        now = self.clock() if now is None else now
        rate_limited = not provider_down(status)
        self.attempts += 1
        self.failures += 1
        self.rate_limited += rate_limited
        self.last_error = message
        self.recent.append(Failure(now, status, message, rate_limited))
        if retry_after_s is not None and retry_after_s > 0:
            until = now + retry_after_s
            self.retry_after_until = max(self.retry_after_until or until, until)
        if rate_limited:
            return
        self.consecutive_failures += 1
        state = self.state(now)
        if state is CircuitState.HALF_OPEN or (
            state is CircuitState.CLOSED
            and self.consecutive_failures >= self.config.failure_threshold
        ):
            self._open(now)

    def record_client_error(self) -> None:
        """The request's own fault (4xx): counted, but says nothing about the provider."""
        self.attempts += 1
        self.client_errors += 1

    def record_probe(self, ok: bool, *, now: float | None = None) -> None:
        """The half-open probe's answer. A probe proves the provider answers, not that it
        generates, so after a good probe one more failure reopens the circuit at once."""
        now = self.clock() if now is None else now
        self.probes += 1
        if ok:
            self._state = CircuitState.CLOSED
            self.opened_at = None
            self.consecutive_failures = max(0, self.config.failure_threshold - 1)
        else:
            self.probe_failures += 1
            self._open(now)

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self.opened_at = now

    def _ewma(self, previous: float | None, value: float) -> float:
        weight = self.config.ewma_weight
        return value if previous is None else weight * value + (1 - weight) * previous

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Figures for a status page: the circuit, the counters and the live stats."""
        now = self.clock() if now is None else now
        return {
            "circuit": self.state(now).value,
            "consecutive_failures": self.consecutive_failures,
            "failed_recently": self.failed_recently(now),
            "retry_after_s": round(self.retry_after_remaining(now), 3),
            "latency_s_per_image": None if self.latency_s is None else round(self.latency_s, 4),
            "throughput_tokens_per_s": (
                None if self.throughput is None else round(self.throughput, 1)
            ),
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "rate_limited": self.rate_limited,
            "client_errors": self.client_errors,
            "probes": self.probes,
            "probe_failures": self.probe_failures,
            "last_error": self.last_error,
        }


class HealthRegistry:
    """The `ProviderHealth` of every provider, by slug, sharing one config and one clock."""

    def __init__(self, config: HealthConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or HealthConfig()
        self.clock: Clock = clock or time.monotonic
        self._by_slug: dict[str, ProviderHealth] = {}

    def of(self, slug: str) -> ProviderHealth:
        health = self._by_slug.get(slug)
        if health is None:
            health = self._by_slug[slug] = ProviderHealth(slug, self.config, self.clock)
        return health

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {slug: health.snapshot(now) for slug, health in self._by_slug.items()}
