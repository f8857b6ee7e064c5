"""Generation records: pending at admission, finalised exactly once, swept after a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pixelrouter.keys import generate_key, hash_key
from pixelrouter.store import NewGeneration, Store

T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


def _new(id: str, **fields: object) -> NewGeneration:
    return NewGeneration(id=id, model="black-forest-labs/flux.2-klein-4b", api="chat", **fields)  # type: ignore[arg-type]


def test_start_inserts_a_pending_record_with_the_request_fields(store: Store) -> None:
    key_hash = hash_key(generate_key())
    started = store.start_generation(
        _new(
            "gen-1",
            key_hash=key_hash,
            n=2,
            width=1360,
            height=768,
            seed=2**40,
            streamed=True,
            http_referer="https://app.example",
            app_title="Example",
            app_categories=("art", "tools"),
            user="user-7",
            ignored_parameters=("quality",),
            tokens_prompt=12,
            created_at=T0,
        )
    )
    got = store.get_generation("gen-1")
    assert got == started
    assert got is not None
    assert (got.state, got.finished, got.total_cost_micro, got.num_images) == (
        "pending",
        False,
        0,
        0,
    )
    assert (got.n, got.width, got.height, got.seed) == (2, 1360, 768, 2**40)
    assert (got.key_hash, got.api, got.streamed, got.created_at) == (key_hash, "chat", True, T0)
    assert (got.http_referer, got.app_title, got.app_categories) == (
        "https://app.example",
        "Example",
        ("art", "tools"),
    )
    assert (got.user, got.ignored_parameters, got.tokens_prompt) == ("user-7", ("quality",), 12)
    assert got.provider_responses == ()
    assert got.finished_at is None


def test_duplicate_generation_id_is_refused(store: Store) -> None:
    store.start_generation(_new("gen-dup"))
    with pytest.raises(ValueError, match="already exists"):
        store.start_generation(_new("gen-dup"))


def test_unknown_api_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="api"):
        store.start_generation(NewGeneration(id="gen-x", model="m", api="grpc"))  # type: ignore[arg-type]


def test_finish_is_idempotent(store: Store) -> None:
    store.start_generation(_new("gen-2", n=2, created_at=T0))
    responses = [
        {"provider_name": "Remote", "status": 502, "latency": 120},
        {"provider_name": "Local", "status": 200, "latency": 900},
    ]
    finished_at = T0 + timedelta(seconds=1)
    changed = store.finish_generation(
        "gen-2",
        state="succeeded",
        total_cost_micro=28_000,
        num_images=2,
        finished_at=finished_at,
        model="black-forest-labs/flux.2-klein-9b",
        provider_name="Local",
        provider_slug="local",
        latency_ms=1_020,
        generation_time_ms=850,
        finish_reason="stop",
        tokens_prompt=9,
        tokens_completion=8192,
        seed=42,
        provider_responses=responses,
    )
    assert changed is True
    first = store.get_generation("gen-2")
    assert first is not None
    assert (first.state, first.finished, first.total_cost_micro, first.num_images) == (
        "succeeded",
        True,
        28_000,
        2,
    )
    assert (first.model, first.provider_name, first.provider_slug) == (
        "black-forest-labs/flux.2-klein-9b",
        "Local",
        "local",
    )
    assert (first.latency_ms, first.generation_time_ms, first.finish_reason) == (1020, 850, "stop")
    assert (first.tokens_prompt, first.tokens_completion, first.seed) == (9, 8192, 42)
    assert first.finished_at == finished_at
    assert list(first.provider_responses) == responses
    assert first.cancelled is False

    # a second finish (a retry, the sweeper, a cancel that lost the race) changes nothing
    assert store.finish_generation("gen-2", state="failed", total_cost_micro=0) is False
    assert store.finish_generation("gen-2", state="cancelled") is False
    assert store.get_generation("gen-2") == first


def test_finish_keeps_start_fields_not_given(store: Store) -> None:
    store.start_generation(_new("gen-3", seed=7, tokens_prompt=5, width=512, height=512))
    assert store.finish_generation("gen-3", state="failed", error_message="boom", error_status=502)
    got = store.get_generation("gen-3")
    assert got is not None
    assert (got.seed, got.tokens_prompt, got.width, got.model) == (
        7,
        5,
        512,
        "black-forest-labs/flux.2-klein-4b",
    )
    assert (got.state, got.error_message, got.error_status, got.total_cost_micro) == (
        "failed",
        "boom",
        502,
        0,
    )
    assert got.finished_at is not None and got.finished_at.tzinfo == UTC


def test_cancelled_generation_is_flagged(store: Store) -> None:
    store.start_generation(_new("gen-c"))
    assert store.finish_generation("gen-c", state="cancelled", finish_reason="cancelled")
    got = store.get_generation("gen-c")
    assert got is not None and got.cancelled and got.state == "cancelled"


def test_finish_refuses_pending_state_and_float_money(store: Store) -> None:
    store.start_generation(_new("gen-4"))
    with pytest.raises(ValueError, match="finished state"):
        store.finish_generation("gen-4", state="pending")
    with pytest.raises(ValueError, match="micro-dollars"):
        store.finish_generation("gen-4", state="succeeded", total_cost_micro=0.014)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="micro-dollars"):
        store.finish_generation("gen-4", state="succeeded", total_cost_micro=-1)
    assert store.get_generation("gen-4").state == "pending"  # type: ignore[union-attr]


def test_finish_of_an_unknown_generation_changes_nothing(store: Store) -> None:
    assert store.finish_generation("gen-nope", state="succeeded") is False
    assert store.get_generation("gen-nope") is None


def test_list_generations_newest_first_per_key(store: Store) -> None:
    a, b = hash_key(generate_key()), hash_key(generate_key())
    for i in range(5):
        store.start_generation(_new(f"gen-a{i}", key_hash=a, created_at=T0 + timedelta(minutes=i)))
    store.start_generation(_new("gen-b0", key_hash=b, created_at=T0 + timedelta(minutes=10)))
    assert [g.id for g in store.list_generations(a)] == [f"gen-a{i}" for i in range(4, -1, -1)]
    assert [g.id for g in store.list_generations(a, limit=2)] == ["gen-a4", "gen-a3"]
    assert [g.id for g in store.list_generations(a, limit=2, offset=2)] == ["gen-a2", "gen-a1"]
    assert [g.id for g in store.list_generations(limit=2)] == ["gen-b0", "gen-a4"]
    assert len(store.list_generations()) == 6


def test_mark_stale_pending_finalises_only_old_pending_rows(store: Store) -> None:
    store.start_generation(_new("gen-old", created_at=T0))
    store.start_generation(_new("gen-new", created_at=T0 + timedelta(minutes=30)))
    store.start_generation(_new("gen-done", created_at=T0))
    store.finish_generation("gen-done", state="succeeded", total_cost_micro=14_000, num_images=1)
    done_before = store.get_generation("gen-done")

    now = T0 + timedelta(minutes=31)
    assert store.mark_stale_pending(T0 + timedelta(minutes=10), now=now) == 1
    old = store.get_generation("gen-old")
    assert old is not None
    assert (old.state, old.total_cost_micro, old.finished_at, old.finish_reason) == (
        "failed",
        0,
        now,
        "outcome_unknown",
    )
    assert old.error_message and "outcome unknown" in old.error_message
    assert store.get_generation("gen-new").state == "pending"  # type: ignore[union-attr]
    assert store.get_generation("gen-done") == done_before
    # nothing left to sweep; and a finish after the sweep loses
    assert store.mark_stale_pending(T0 + timedelta(minutes=10), now=now) == 0
    assert store.finish_generation("gen-old", state="succeeded", total_cost_micro=1) is False

    assert store.mark_stale_pending(now, state="cancelled") == 1
    new = store.get_generation("gen-new")
    assert new is not None and new.state == "cancelled" and new.cancelled


def test_mark_stale_pending_refuses_success(store: Store) -> None:
    with pytest.raises(ValueError):
        store.mark_stale_pending(T0, state="succeeded")


def test_nul_means_the_same_on_both_backends(store: Store) -> None:
    """PostgreSQL's text cannot hold NUL; the store writes U+FFFD in its place on both
    backends, so a record with one is never lost (the API refuses NUL before this)."""
    store.start_generation(
        _new(
            "gen-nul",
            user="u\x00ser",
            http_referer="https://a\x00.example",
            ignored_parameters=("odd\x00field",),
            session_id="s\x00",
            metadata={"k\x00": "v\x00"},
            trace={"trace_id": "t\x00"},
        )
    )
    store.finish_generation("gen-nul", state="failed", error_message="boom\x00")
    got = store.get_generation("gen-nul")
    assert got is not None
    assert got.user == "u\ufffdser" and got.http_referer == "https://a\ufffd.example"
    assert got.ignored_parameters == ("odd\ufffdfield",)
    assert (got.session_id, got.metadata, got.trace) == (
        "s\ufffd",
        {"k\ufffd": "v\ufffd"},
        {"trace_id": "t\ufffd"},
    )
    assert got.error_message == "boom\ufffd"
    # Looking an id up with a NUL in it is a miss, not an error.
    assert store.get_generation("gen\x00nul") is None
    assert store.find_key("abc\x00") is None


def test_the_adapters_and_scales_are_recorded_in_order(store: Store) -> None:
    from sqlalchemy import select

    from pixelrouter.store.tables import generations

    loras = ({"name": "ink", "scale": 0.8}, {"name": "glass", "scale": -1.25})
    started = store.start_generation(_new("gen-lora", loras=loras))
    store.start_generation(_new("gen-base"))
    store.finish_generation("gen-lora", state="succeeded", total_cost_micro=20_000)
    got = store.get_generation("gen-lora")
    assert got is not None and got.loras == started.loras == loras
    base = store.get_generation("gen-base")
    assert base is not None and base.loras == ()
    with store.engine.connect() as conn:  # no adapters: SQL NULL, not JSON null, on both
        rows = conn.execute(select(generations.c.id).where(generations.c.loras.is_(None))).scalars()
        assert list(rows) == ["gen-base"]
