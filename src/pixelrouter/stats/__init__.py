"""Statistics per provider endpoint (uptime, latency, throughput), hourly uptime and the apps
ranking, computed from the store's provider outcomes and generation records."""

from pixelrouter.stats.windows import (
    MIN_UPTIME_SAMPLES,
    UNATTRIBUTED,
    WINDOWS,
    AppRank,
    ProviderStats,
    UptimeHour,
    apps_ranking,
    endpoint_status,
    percentiles,
    provider_stats,
    providers_stats,
    rank_apps,
    uptime,
    uptime_hourly,
)

__all__ = [
    "MIN_UPTIME_SAMPLES",
    "UNATTRIBUTED",
    "WINDOWS",
    "AppRank",
    "ProviderStats",
    "UptimeHour",
    "apps_ranking",
    "endpoint_status",
    "percentiles",
    "provider_stats",
    "providers_stats",
    "rank_apps",
    "uptime",
    "uptime_hourly",
]
