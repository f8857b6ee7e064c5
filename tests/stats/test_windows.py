"""The statistics' rules as pure functions: uptime, percentiles, the endpoint
status, the apps ranking, and the time boundaries at a frozen `now`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pixelrouter.percentiles import percentile
from pixelrouter.stats import (
    UNATTRIBUTED,
    ProviderStats,
    endpoint_status,
    percentiles,
    rank_apps,
    uptime,
)
from pixelrouter.stats.windows import hour_start, month_start
from pixelrouter.store.stats_records import AppUsage, OutcomeCounts


def test_uptime_is_success_over_provider_caused_outcomes_in_percent() -> None:
    assert uptime(5, 0) == 100.0
    assert uptime(3, 1) is None  # 4 samples: too few to say
    assert uptime(4, 1) == 80.0
    assert uptime(0, 5) == 0.0
    assert uptime(6, 2) == pytest.approx(75.0)
    assert uptime(0, 0) is None


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    assert percentiles([]) is None
    assert percentiles([2.0]) == {"p50": 2.0, "p75": 2.0, "p90": 2.0, "p99": 2.0}
    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order does not matter
    result = percentiles(list(reversed(values)))
    assert result == pytest.approx({"p50": 50.5, "p75": 75.25, "p90": 90.1, "p99": 99.01})
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentiles([0.12345, 0.5], digits=2) == {
        "p50": 0.31,
        "p75": 0.41,
        "p90": 0.46,
        "p99": 0.5,
    }


def test_percentiles_are_ordered() -> None:
    result = percentiles([0.3, 9.0, 1.2, 0.7, 4.4, 2.5, 0.1])
    assert result is not None
    assert result["p50"] <= result["p75"] <= result["p90"] <= result["p99"] <= 9.0


def _stats(uptime_30m: float | None, successes_30m: int = 0) -> ProviderStats:
    counts = {
        "5m": OutcomeCounts(),
        "30m": OutcomeCounts(successes=successes_30m),
        "1d": OutcomeCounts(successes=successes_30m),
    }
    return ProviderStats("p", None, uptime_30m, None, None, None, counts, successes_30m)


def test_endpoint_status_ok_degraded_down() -> None:
    def status(stats: ProviderStats | None, **kw: bool) -> int:
        args = {"ready": True, "circuit_open": False, "circuit_half_open": False, **kw}
        return endpoint_status(stats, **args)

    assert status(None) == 0  # no figures yet: nothing says it is unwell
    assert status(_stats(None)) == 0
    assert status(_stats(100.0, 10)) == 0
    assert status(_stats(95.0, 10)) == 0
    assert status(_stats(94.9, 10)) == -1  # uptime under 95 %
    assert status(_stats(100.0, 10), circuit_half_open=True) == -1
    assert status(_stats(100.0, 10), circuit_open=True) == -2
    assert status(_stats(100.0, 10), ready=False) == -2  # not ready: down, even if up lately
    assert status(_stats(None, 0), ready=False) == -2  # not ready and no recent success
    assert status(None, ready=False) == -2


def test_apps_are_ranked_by_requests_or_image_tokens() -> None:
    rows = [
        AppUsage("https://a.example", "App A", 5, 5 * 4096),
        AppUsage("https://a.example", None, 1, 4096),  # same app, one request without title
        AppUsage("https://b.example", "App B", 2, 2 * 4 * 4096),  # fewer but larger images
        AppUsage(None, "Title only", 1, 4096),
        AppUsage(None, None, 3, 3 * 4096),
        AppUsage("", "  ", 1, 4096),  # blank headers count as none
    ]
    by_requests = rank_apps(rows)
    assert [(a.rank, a.app, a.requests, a.image_tokens) for a in by_requests] == [
        (1, "App A", 6, 6 * 4096),
        (2, UNATTRIBUTED, 4, 4 * 4096),
        (3, "App B", 2, 8 * 4096),
        (4, "Title only", 1, 4096),
    ]
    assert by_requests[0].http_referer == "https://a.example"
    assert by_requests[3].http_referer is None
    by_tokens = rank_apps(rows, by="image_tokens", limit=2)
    assert [a.app for a in by_tokens] == ["App B", "App A"]
    assert [a.rank for a in by_tokens] == [1, 2]


def test_an_app_without_a_title_is_named_by_its_referer() -> None:
    [app] = rank_apps([AppUsage("https://c.example/page", None, 1, 4096)])
    assert app.app == "https://c.example/page"
    assert app.json() == {
        "rank": 1,
        "app": "https://c.example/page",
        "http_referer": "https://c.example/page",
        "requests": 1,
        "image_tokens": 4096,
    }


def test_time_boundaries_are_utc() -> None:
    now = datetime(2026, 3, 1, 0, 30, 15, 123, tzinfo=UTC)
    assert month_start(now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert hour_start(now) == datetime(2026, 3, 1, 0, tzinfo=UTC)
    assert month_start(datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC)) == datetime(
        2026, 2, 1, tzinfo=UTC
    )
