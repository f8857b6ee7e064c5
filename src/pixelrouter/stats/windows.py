"""Provider statistics over time windows: uptime, latency and throughput percentiles, hourly
uptime, and the apps ranking, all read from the store so every gateway process agrees.

The rules are pure functions (`uptime`, `percentiles`); the rest reads the
store at an explicit `now`, so tests freeze the clock by passing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pixelrouter.percentiles import Percentiles, percentiles
from pixelrouter.store.stats_records import AppUsage, OutcomeCounts, SuccessSample

if TYPE_CHECKING:
    from pixelrouter.store import Store

MIN_UPTIME_SAMPLES = 5  # SPEC §3.4: uptime is null under 5 provider-caused outcomes
MAX_SAMPLES = 1_000  # the newest successes of a window that percentiles are computed from
HOURLY_HOURS = 72
DEGRADED_BELOW = 95.0  # uptime_last_30m under this marks an endpoint degraded
UNATTRIBUTED = "Unattributed"
OUTCOME_RETENTION = timedelta(days=7)  # the sweeper prunes outcomes older than this

WINDOWS: dict[str, timedelta] = {
    "5m": timedelta(minutes=5),
    "30m": timedelta(minutes=30),
    "1d": timedelta(days=1),
}


def is_success(status: int) -> bool:
    return 200 <= status < 300


def uptime(successes: int, errors: int) -> float | None:
    """success / (success + error) * 100 over provider-caused outcomes; None under 5."""
    total = successes + errors
    if total < MIN_UPTIME_SAMPLES:
        return None
    return successes / total * 100.0


@dataclass(frozen=True)
class ProviderStats:
    """One provider endpoint's live figures, as the endpoints API shows them."""

    slug: str
    uptime_last_5m: float | None
    uptime_last_30m: float | None
    uptime_last_1d: float | None
    # Milliseconds per request, end to end of the serving attempt (as the current OpenRouter
    # API documents it for image models); people are shown seconds.
    latency_last_30m: Percentiles | None
    throughput_last_30m: Percentiles | None  # image tokens per second
    counts: dict[str, OutcomeCounts]  # per window name: successes, errors, excluded
    samples_last_30m: int  # successes the percentiles were computed from

    def json(self) -> dict[str, Any]:
        return {
            "uptime_last_5m": self.uptime_last_5m,
            "uptime_last_30m": self.uptime_last_30m,
            "uptime_last_1d": self.uptime_last_1d,
            "latency_last_30m": self.latency_last_30m,
            "throughput_last_30m": self.throughput_last_30m,
            "perf_last_30m_by_workload": {
                "image_generation": {
                    "latency": self.latency_last_30m,
                    "request_count": self.counts["30m"].successes if self.counts else 0,
                    "throughput": self.throughput_last_30m,
                }
            },
        }


def provider_stats(
    store: Store, slug: str, now: datetime, *, model: str | None = None
) -> ProviderStats:
    """Uptime over 5 min / 30 min / 1 day and latency and throughput percentiles over the last
    30 min of one provider (of one model when given)."""
    return providers_stats(store, [slug], now, model=model)[slug]


def providers_stats(
    store: Store, slugs: Sequence[str], now: datetime, *, model: str | None = None
) -> dict[str, ProviderStats]:
    """`provider_stats` of several providers at once: one connection, one statement for all
    the window counts and one per provider for its latency samples."""
    _require_utc(now)
    figures = store.provider_figures(
        slugs, now, WINDOWS, samples_since=now - WINDOWS["30m"], model=model, limit=MAX_SAMPLES
    )
    return {slug: _provider_stats(slug, *figures[slug]) for slug in slugs}


def _provider_stats(
    slug: str, counts: dict[str, OutcomeCounts], samples: Sequence[SuccessSample]
) -> ProviderStats:
    latencies = [float(s.latency_ms) for s in samples]
    # A 0 ms attempt (a clock tick) would be an infinite throughput: count it as 1 ms.
    throughputs = [s.image_tokens / (max(s.latency_ms, 1) / 1000.0) for s in samples]
    return ProviderStats(
        slug=slug,
        uptime_last_5m=uptime(counts["5m"].successes, counts["5m"].errors),
        uptime_last_30m=uptime(counts["30m"].successes, counts["30m"].errors),
        uptime_last_1d=uptime(counts["1d"].successes, counts["1d"].errors),
        latency_last_30m=percentiles(latencies, digits=1),
        throughput_last_30m=percentiles(throughputs, digits=1),
        counts=counts,
        samples_last_30m=len(samples),
    )


def endpoint_status(
    stats: ProviderStats | None, *, ready: bool, circuit_open: bool, circuit_half_open: bool
) -> int:
    """SPEC §3.4 `status`: 0 ok, -1 degraded, -2 down.

    Down: the circuit is open, or the provider is not ready (it cannot take work now: an
    engine loading or failed, a worker whose status poll fails), however recently it was up.
    Degraded: a half-open circuit, or uptime_last_30m under 95.
    """
    if circuit_open or not ready:
        return -2
    if circuit_half_open:
        return -1
    if stats is not None and stats.uptime_last_30m is not None:
        return -1 if stats.uptime_last_30m < DEGRADED_BELOW else 0
    return 0


@dataclass(frozen=True)
class UptimeHour:
    """One hour of one provider: its provider-caused outcomes and the uptime they give."""

    hour: datetime  # start of the hour, UTC
    successes: int
    errors: int
    excluded: int  # rate limits and client errors: not counted in uptime

    @property
    def uptime(self) -> float | None:
        return uptime(self.successes, self.errors)

    def json(self) -> dict[str, Any]:
        return {
            "hour": self.hour.isoformat().replace("+00:00", "Z"),
            "uptime": self.uptime,
            "successes": self.successes,
            "errors": self.errors,
            "excluded": self.excluded,
        }


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def uptime_hourly(
    store: Store,
    slug: str,
    now: datetime,
    hours: int = HOURLY_HOURS,
    *,
    model: str | None = None,
) -> list[UptimeHour]:
    """`hours` buckets, oldest first, the last one the current (partial) hour; hours with
    no outcome are present with zero counts."""
    _require_utc(now)
    current = hour_start(now)
    first = current - timedelta(hours=hours - 1)
    by_hour = store.outcome_counts_by_hour(slug, first, now, model=model)
    buckets = []
    for i in range(hours):
        hour = first + timedelta(hours=i)
        counts = by_hour.get(hour, OutcomeCounts())
        buckets.append(UptimeHour(hour, counts.successes, counts.errors, counts.excluded))
    return buckets


def month_start(now: datetime) -> datetime:
    """00:00 UTC on the 1st of `now`'s month."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class AppRank:
    """One app in the monthly ranking."""

    rank: int
    app: str  # the app's title, else its referer, else "Unattributed"
    http_referer: str | None
    requests: int
    image_tokens: int

    def json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "app": self.app,
            "http_referer": self.http_referer,
            "requests": self.requests,
            "image_tokens": self.image_tokens,
        }


def apps_ranking(
    store: Store,
    now: datetime,
    *,
    model: str | None = None,
    by: str = "requests",
    limit: int | None = None,
) -> list[AppRank]:
    """Apps ranked by succeeded requests (or image tokens) this calendar month (UTC).

    An app is its `HTTP-Referer`; a request with only a title (`X-OpenRouter-Title` /
    `X-Title`) counts under that title; one with neither is "Unattributed".
    """
    _require_utc(now)
    if by not in ("requests", "image_tokens"):
        raise ValueError(f"rank by 'requests' or 'image_tokens', not {by!r}")
    rows = store.app_usage(month_start(now), now, model=model)
    return rank_apps(rows, by=by, limit=limit)


def rank_apps(
    rows: Sequence[AppUsage], *, by: str = "requests", limit: int | None = None
) -> list[AppRank]:
    """Merge (referer, title) rows into apps and rank them; ties go by the other figure, then
    by name."""
    merged: dict[tuple[str, str] | None, _AppTotals] = {}
    for row in rows:
        app = merged.setdefault(_app_key(row.http_referer, row.app_title), _AppTotals())
        app.requests += row.requests
        app.image_tokens += row.image_tokens
        if row.app_title:
            app.titles[row.app_title] = app.titles.get(row.app_title, 0) + row.requests
    ranked: list[AppRank] = []
    for key, app in merged.items():
        referer: str | None = None
        if key is None:
            name = UNATTRIBUTED
        else:
            kind, value = key
            referer = value if kind == "referer" else None
            # The title most requests used names the app; without one, its referer does.
            titles = app.titles
            name = max(titles, key=lambda t: (titles[t], t)) if titles else value
        ranked.append(AppRank(0, name, referer, app.requests, app.image_tokens))
    if by == "requests":
        ranked.sort(key=lambda a: (-a.requests, -a.image_tokens, a.app))
    else:
        ranked.sort(key=lambda a: (-a.image_tokens, -a.requests, a.app))
    return [replace(app, rank=i + 1) for i, app in enumerate(ranked[:limit])]


@dataclass
class _AppTotals:
    requests: int = 0
    image_tokens: int = 0
    titles: dict[str, int] = field(default_factory=dict)  # title -> requests that sent it


def _app_key(referer: str | None, title: str | None) -> tuple[str, str] | None:
    if referer and referer.strip():
        return ("referer", referer.strip())
    if title and title.strip():
        return ("title", title.strip())
    return None


def _require_utc(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("pass a tz-aware UTC datetime as `now`")
