"""Activity: succeeded generations per UTC day, model and provider (GET /activity)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from pixelrouter.store import ActivityRow, NewGeneration, Store

KLEIN = "black-forest-labs/flux.2-klein-4b"


def _generation(
    store: Store,
    gen_id: str,
    created_at: datetime,
    *,
    key_hash: str | None = None,
    model: str = KLEIN,
    provider: str = "local",
    state: str = "succeeded",
    size: tuple[int, int] = (1024, 1024),
    images: int = 1,
    cost: int = 14_000,
    prompt_tokens: int = 10,
) -> None:
    store.start_generation(
        NewGeneration(
            id=gen_id,
            model=model,
            api="images",
            key_hash=key_hash,
            n=images,
            width=size[0],
            height=size[1],
            created_at=created_at,
        )
    )
    store.finish_generation(
        gen_id,
        state=state,  # type: ignore[arg-type]
        provider_name=provider,
        total_cost_micro=cost if state == "succeeded" else 0,
        num_images=images if state == "succeeded" else 0,
        tokens_prompt=prompt_tokens,
        tokens_completion=4096 * images if state == "succeeded" else 0,
        finished_at=created_at + timedelta(seconds=1),
    )


def test_activity_per_day_model_and_provider(store: Store) -> None:
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    day1 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    day2 = datetime(2026, 6, 2, 23, 59, 59, tzinfo=UTC)
    _generation(store, "gen-a", day1, key_hash=key.hash, images=2, cost=28_000)
    # 2048x2048 is 4 billable megapixels per image; 1000x1000 rounds up to 1
    _generation(
        store, "gen-b", day1 + timedelta(hours=5), key_hash=other.hash, size=(2048, 2048), images=2
    )
    _generation(store, "gen-c", day1, key_hash=key.hash, size=(1000, 1000), provider="worker-1")
    _generation(store, "gen-d", day2, key_hash=key.hash, model="other/model", prompt_tokens=3)
    _generation(store, "gen-failed", day1, key_hash=key.hash, state="failed")
    _generation(store, "gen-early", day1 - timedelta(microseconds=1), key_hash=key.hash)
    store.start_generation(
        NewGeneration(id="gen-pending", model=KLEIN, api="images", n=1, created_at=day1)
    )

    rows = store.activity(since=date(2026, 6, 1))
    assert rows == [
        ActivityRow(date(2026, 6, 1), KLEIN, "local", 2, 4, 2 + 8, 20, 16_384, 42_000),
        ActivityRow(date(2026, 6, 1), KLEIN, "worker-1", 1, 1, 1, 10, 4096, 14_000),
        ActivityRow(date(2026, 6, 2), "other/model", "local", 1, 1, 1, 3, 4096, 14_000),
    ]
    assert store.activity(since=date(2026, 6, 1), until=date(2026, 6, 1)) == rows[:2]
    assert store.activity(since=date(2026, 6, 2), until=date(2026, 6, 2)) == rows[2:]
    assert store.activity(since=date(2026, 5, 31), until=date(2026, 5, 31)) == [
        ActivityRow(date(2026, 5, 31), KLEIN, "local", 1, 1, 1, 10, 4096, 14_000)
    ]
    mine = store.activity(since=date(2026, 6, 1), key_hash=key.hash)
    assert [(r.provider_name, r.requests, r.images, r.megapixels) for r in mine] == [
        ("local", 1, 2, 2),
        ("worker-1", 1, 1, 1),
        ("local", 1, 1, 1),
    ]
    assert all(isinstance(r.usage_micro, int) and isinstance(r.date, date) for r in rows)


def test_no_activity_is_an_empty_list(store: Store) -> None:
    assert store.activity(since=date(2026, 1, 1)) == []
