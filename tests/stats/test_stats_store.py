"""Statistics read from the store at a frozen `now`, on SQLite and on PostgreSQL: window
counts, percentiles, hourly uptime, pruning and the apps ranking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pixelrouter.errors import provider_down
from pixelrouter.stats import (
    UNATTRIBUTED,
    apps_ranking,
    percentiles,
    provider_stats,
    uptime_hourly,
)
from pixelrouter.store import NewGeneration, Store
from pixelrouter.store.stats_records import OutcomeCounts, ProviderOutcome

KLEIN = "black-forest-labs/flux.2-klein-4b"
NOW = datetime(2026, 11, 25, 12, 34, 56, tzinfo=UTC)  # the frozen clock


def outcome(
    ago: timedelta,
    status: int = 200,
    *,
    slug: str = "gpu",
    latency_ms: int = 1000,
    images: int | None = None,
    model: str = KLEIN,
) -> ProviderOutcome:
    ok = status == 200
    count = (1 if ok else 0) if images is None else images
    return ProviderOutcome(
        provider_slug=slug,
        provider_name=f"Provider {slug}",
        model=model,
        created_at=NOW - ago,
        status=status,
        provider_caused=provider_down(status),
        latency_ms=latency_ms,
        images=count,
        image_tokens=4096 * count,
    )


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


def test_uptime_counts_each_window_and_leaves_out_rate_limits_and_client_errors(
    store: Store,
) -> None:
    store.record_outcomes(
        [
            # last 5 minutes: 4 ok, 1 provider-caused, 1 rate limit, 1 client error
            *(outcome(minutes(1)) for _ in range(4)),
            outcome(minutes(2), 502),
            outcome(minutes(3), 429),
            outcome(minutes(4), 400),
            # 5..30 minutes ago: 3 ok, 2 timeouts
            *(outcome(minutes(10)) for _ in range(3)),
            outcome(minutes(20), 504),
            outcome(minutes(29), 408),
            # 30 minutes .. 1 day ago: 10 ok, 5 errors
            *(outcome(timedelta(hours=5)) for _ in range(10)),
            *(outcome(timedelta(hours=23), 500) for _ in range(5)),
            # outside every window, another provider, the future
            outcome(timedelta(days=1, seconds=1), 500),
            outcome(minutes(1), 500, slug="other"),
            outcome(-minutes(1), 500),
        ]
    )
    stats = provider_stats(store, "gpu", NOW)
    assert stats.counts["5m"] == OutcomeCounts(successes=4, errors=1, excluded=2)
    assert stats.counts["30m"] == OutcomeCounts(successes=7, errors=3, excluded=2)
    assert stats.counts["1d"] == OutcomeCounts(successes=17, errors=8, excluded=2)
    assert stats.uptime_last_5m == pytest.approx(4 / 5 * 100)
    assert stats.uptime_last_30m == pytest.approx(7 / 10 * 100)
    assert stats.uptime_last_1d == pytest.approx(17 / 25 * 100)


def test_window_edges_at_the_frozen_clock(store: Store) -> None:
    # (now - 5 min, now]: exactly 5 minutes ago is out, exactly now is in
    store.record_outcomes([outcome(minutes(5)), *(outcome(timedelta(0)) for _ in range(4))])
    stats = provider_stats(store, "gpu", NOW)
    assert stats.counts["5m"].successes == 4
    assert stats.uptime_last_5m is None  # 4 samples
    assert stats.counts["30m"].successes == 5
    assert stats.uptime_last_30m == 100.0
    later = provider_stats(store, "gpu", NOW + minutes(30))
    assert later.counts["30m"].successes == 0 and later.uptime_last_30m is None
    assert later.uptime_last_1d == 100.0


def test_no_outcomes_means_null_figures(store: Store) -> None:
    stats = provider_stats(store, "nobody", NOW)
    assert stats.json() == {
        "uptime_last_5m": None,
        "uptime_last_30m": None,
        "uptime_last_1d": None,
        "latency_last_30m": None,
        "throughput_last_30m": None,
        "perf_last_30m_by_workload": {
            "image_generation": {"latency": None, "request_count": 0, "throughput": None}
        },
    }
    assert stats.samples_last_30m == 0


def test_latency_per_request_and_throughput_over_the_last_30_minutes(store: Store) -> None:
    samples = [(800, 1), (1200, 1), (2000, 2), (3000, 4), (500, 1)]  # (latency ms, images)
    store.record_outcomes(
        [
            *(
                outcome(minutes(i + 1), latency_ms=ms, images=n)
                for i, (ms, n) in enumerate(samples)
            ),
            outcome(minutes(40), latency_ms=99_000),  # older than 30 minutes: left out
            outcome(minutes(2), 502, latency_ms=60_000),  # failures have no latency sample
        ]
    )
    stats = provider_stats(store, "gpu", NOW)
    assert stats.samples_last_30m == 5
    latency = percentiles([ms for ms, _ in samples], digits=1)  # milliseconds per request
    throughput = percentiles([4096 * n / (ms / 1000) for ms, n in samples], digits=1)
    assert stats.latency_last_30m == latency
    assert stats.throughput_last_30m == throughput
    assert latency is not None and latency["p50"] == 1200.0  # 500, 800, 1200, 2000, 3000 ms


def test_figures_of_one_model(store: Store) -> None:
    other = "black-forest-labs/flux.2-klein-9b"
    store.record_outcomes(
        [
            *(outcome(minutes(1)) for _ in range(5)),
            *(outcome(minutes(1), 500, model=other) for _ in range(5)),
        ]
    )
    assert provider_stats(store, "gpu", NOW).uptime_last_5m == 50.0
    assert provider_stats(store, "gpu", NOW, model=KLEIN).uptime_last_5m == 100.0
    assert provider_stats(store, "gpu", NOW, model=other).uptime_last_5m == 0.0


def test_hourly_uptime_has_72_buckets_ending_with_the_current_hour(store: Store) -> None:
    store.record_outcomes(
        [
            *(outcome(minutes(10)) for _ in range(5)),  # 12:24: the current hour
            outcome(minutes(30), 503),  # 12:04
            outcome(minutes(40), 429),  # 11:54: the hour before
            *(outcome(timedelta(hours=71)) for _ in range(2)),  # 13:34 three days back
            outcome(timedelta(hours=73), 500),  # before the first bucket
        ]
    )
    hours = uptime_hourly(store, "gpu", NOW)
    assert len(hours) == 72
    assert hours[-1].hour == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert hours[0].hour == datetime(2026, 11, 22, 13, tzinfo=UTC)
    assert all(
        b.hour - a.hour == timedelta(hours=1) for a, b in zip(hours, hours[1:], strict=False)
    )
    current = hours[-1]
    assert (current.successes, current.errors, current.excluded) == (5, 1, 0)
    assert current.uptime == pytest.approx(5 / 6 * 100)
    assert (hours[-2].successes, hours[-2].errors, hours[-2].excluded) == (0, 0, 1)
    assert hours[-2].uptime is None
    assert hours[0].successes == 2 and hours[0].uptime is None  # 2 samples: too few
    assert sum(h.successes + h.errors + h.excluded for h in hours) == 9
    assert current.json() == {
        "hour": "2026-11-25T12:00:00Z",
        "uptime": pytest.approx(83.333, abs=0.001),
        "successes": 5,
        "errors": 1,
        "excluded": 0,
    }
    assert len(uptime_hourly(store, "gpu", NOW, hours=24)) == 24


def test_prune_outcomes_keeps_recent_ones(store: Store) -> None:
    store.record_outcomes([outcome(timedelta(days=8)), outcome(timedelta(days=6))])
    assert store.prune_outcomes(NOW - timedelta(days=7)) == 1
    assert store.outcome_counts("gpu", NOW, {"7d": timedelta(days=7)})["7d"].successes == 1


def _generation(
    store: Store,
    gen_id: str,
    created_at: datetime,
    *,
    referer: str | None = None,
    title: str | None = None,
    state: str = "succeeded",
    images: int = 1,
    model: str = KLEIN,
) -> None:
    store.start_generation(
        NewGeneration(
            id=gen_id,
            model=model,
            api="images",
            n=images,
            width=1024,
            height=1024,
            http_referer=referer,
            app_title=title,
            created_at=created_at,
        )
    )
    store.finish_generation(
        gen_id,
        state=state,  # type: ignore[arg-type]
        num_images=images if state == "succeeded" else 0,
        tokens_completion=4096 * images if state == "succeeded" else 0,
        finished_at=created_at + timedelta(seconds=1),
    )


def test_apps_ranking_of_this_month(store: Store) -> None:
    this_month = datetime(2026, 11, 3, tzinfo=UTC)
    for i in range(3):
        _generation(store, f"gen-a{i}", this_month, referer="https://a.example", title="App A")
    _generation(store, "gen-b", this_month, referer="https://b.example", title="App B", images=4)
    _generation(store, "gen-t", this_month, title="Only a title")
    _generation(store, "gen-u1", this_month)
    _generation(store, "gen-u2", this_month)
    _generation(store, "gen-fail", this_month, referer="https://a.example", state="failed")
    _generation(
        store, "gen-old", datetime(2026, 10, 31, 23, 59, tzinfo=UTC), referer="https://a.example"
    )
    _generation(store, "gen-later", NOW + timedelta(hours=1), referer="https://b.example")
    _generation(
        store, "gen-9b", this_month, referer="https://b.example", model="black-forest-labs/x"
    )

    ranking = apps_ranking(store, NOW)
    assert [(a.app, a.http_referer, a.requests, a.image_tokens) for a in ranking] == [
        ("App A", "https://a.example", 3, 3 * 4096),
        ("App B", "https://b.example", 2, 5 * 4096),
        (UNATTRIBUTED, None, 2, 2 * 4096),
        ("Only a title", None, 1, 4096),
    ]
    by_tokens = apps_ranking(store, NOW, by="image_tokens")
    assert [a.app for a in by_tokens][:2] == ["App B", "App A"]
    klein_only = apps_ranking(store, NOW, model=KLEIN, limit=2)
    assert [(a.app, a.requests) for a in klein_only] == [("App A", 3), (UNATTRIBUTED, 2)]
    # On the 1st of the next month the ranking starts again.
    assert apps_ranking(store, datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)) == []


def test_open_reservations_are_counted(store: Store) -> None:
    record, _ = store.create_key("stats")
    assert store.count_open_reservations() == 0
    for i in range(3):
        store.reserve(
            generation_id=f"gen-r{i}",
            key_hash=record.hash,
            amount_micro=14_000,
            expires_at=NOW + timedelta(minutes=10),
        )
    store.settle("gen-r0", 14_000)
    assert store.count_open_reservations() == 2


def test_windows_count_whole_minutes(store: Store) -> None:
    # 12:29:58 is within 5 minutes of 12:34:56, but its minute (12:29) started before them.
    store.record_outcomes([outcome(minutes(5) - timedelta(seconds=2), 500)])
    store.record_outcomes([outcome(minutes(4) + timedelta(seconds=50), 500)])  # 12:30:06
    counts = store.outcome_counts("gpu", NOW, {"5m": minutes(5)})
    assert counts["5m"] == OutcomeCounts(errors=1)


def test_concurrent_writers_add_up_in_the_same_minute(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def write(i: int) -> None:
        status = (200, 502, 429)[i % 3]
        store.record_outcomes([outcome(timedelta(seconds=1), status), outcome(minutes(2))])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(60)))
    counts = store.outcome_counts("gpu", NOW, {"5m": minutes(5)})["5m"]
    assert counts == OutcomeCounts(successes=20 + 60, errors=20, excluded=20)
    assert len(store.success_samples("gpu", NOW - minutes(5), NOW)) == 80


def test_several_providers_at_once_agree_with_each_alone(store: Store) -> None:
    from pixelrouter.stats import providers_stats

    store.record_outcomes(
        [
            *(outcome(minutes(1), latency_ms=700 + i) for i in range(6)),
            outcome(minutes(2), 502),
            *(outcome(minutes(3), slug="other", latency_ms=400) for _ in range(5)),
            outcome(minutes(4), 429, slug="other"),
        ]
    )
    together = providers_stats(store, ["gpu", "other", "nobody"], NOW, model=KLEIN)
    for slug in ("gpu", "other", "nobody"):
        assert together[slug] == provider_stats(store, slug, NOW, model=KLEIN)
    assert together["gpu"].uptime_last_5m == pytest.approx(6 / 7 * 100)
    assert together["other"].uptime_last_5m == 100.0
    assert together["other"].counts["5m"].excluded == 1
    assert together["nobody"].counts["1d"] == OutcomeCounts()
