"""When a generation's bookkeeping is written (docs/billing.md, "When bookkeeping is written").

A key with a spending limit reserves before any work (SPEC §7). A key without one cannot be
refused: its pending record is written beside the work, before the answer goes out, and it is
charged once the edge says how many images reached the client; every reader of the API
(`/generation`, `/key`) waits for that close.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import make_api
from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import PaymentRequired
from pixelrouter.keys import hash_key
from pixelrouter.types import ImageRequest
from test_billing_api import PRICE, GenerousProvider, new_key


def _request(key_hash: str, name: str, n: int = 1) -> ImageRequest:
    return ImageRequest(
        id=f"gen-bookkeeping-{name}",
        model=KLEIN_4B.id,
        prompt="bookkeeping",
        width=64,
        height=64,
        n=n,
        key_hash=key_hash,
    )


async def test_a_key_without_limit_is_recorded_and_charged_once_after_its_answer(api) -> None:
    key = await new_key(api)  # no limit
    r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "size": "64x64", "n": 2})
    assert r.status_code == 200, r.text
    generation_id = r.headers["x-generation-id"]

    record = (await api.get(f"/api/v1/generation?id={generation_id}", key=key)).json()["data"]
    assert record["total_cost"] == 2 * PRICE / 1e6 and record["num_media_completion"] == 2
    store = api.app.state.px.store
    reservation = store.get_reservation(generation_id)
    assert reservation is not None
    assert (reservation.state, reservation.settled_micro) == ("settled", 2 * PRICE)
    # Reserved what was delivered, so the settle releases nothing.
    entries = {e.kind: e.amount_micro for e in store.ledger_entries(generation_id=generation_id)}
    assert entries == {"reserve": 2 * PRICE, "settle": 2 * PRICE, "release": 0}
    balance = store.key_balance(hash_key(key))
    assert (balance.total_used, balance.reserved) == (2 * PRICE, 0)
    me = (await api.get("/api/v1/key", key=key)).json()["data"]
    assert me["usage"] == 2 * PRICE / 1e6


async def test_a_failed_generation_of_a_key_without_limit_is_recorded_and_costs_nothing(
    tmp_path: Path,
) -> None:
    provider = GenerousProvider(size=(2048, 2048))  # only images of the wrong size: a 502
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [provider]):
        key = await new_key(api)
        r = await api.post("/api/v1/images", key=key, json={"prompt": "x"})
        assert r.status_code == 502, r.text
        store = api.app.state.px.store
        record = store.get_generation(r.headers["x-generation-id"])
        assert record is not None and record.state == "failed" and record.total_cost_micro == 0
        assert store.get_reservation(record.id) is None
        assert store.ledger_total(hash_key(key)) == 0


async def test_the_record_is_written_before_the_answer_and_closed_on_the_edges_word(
    sqlite_api,
) -> None:
    """Without a limit nothing is reserved, but the pending record is written beside the work,
    so a delivered image always has one (a crash right after the answer leaves it pending, for
    the sweeper). The close waits for the edge: how many images the client got."""
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    request = _request(key_hash, "gate", n=2)
    delivery = await px.service.generate(
        request, api="images", key=px.store.find_key(key_hash), edge_reports=True
    )
    assert delivery.cost_micro == 2 * PRICE
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "pending"
    assert px.service.closing == 1
    px.service.answered(request.id, 2)
    await px.service.closed(key_hash)
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "succeeded"
    assert record.total_cost_micro == 2 * PRICE and px.store.ledger_total(key_hash) == 2 * PRICE


async def test_only_the_images_handed_to_the_client_are_charged(sqlite_api) -> None:
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    for handed, limit in ((1, None), (0, None), (3, 10.0), (0, 10.0)):
        if limit is not None:
            px.store.update_key(key_hash, limit_micro=int(limit * 1e6))
        request = _request(key_hash, f"handed-{handed}-{limit}", n=3)
        await px.service.generate(
            request, api="images", key=px.store.find_key(key_hash), edge_reports=True
        )
        px.service.answered(request.id, handed)
        await px.service.closed(key_hash)
        record = px.store.get_generation(request.id)
        assert record is not None
        assert (record.num_images, record.undelivered_images) == (handed, 3 - handed)
        assert record.total_cost_micro == handed * PRICE
        assert record.state == ("succeeded" if handed else "cancelled")
        settled = sum(
            e.amount_micro
            for e in px.store.ledger_entries(generation_id=request.id)
            if e.kind == "settle"
        )
        assert settled == handed * PRICE  # the ledger agrees with the record
    assert px.store.key_balance(key_hash).reserved == 0


async def test_a_limit_set_while_it_ran_applies_to_later_requests_only(sqlite_api) -> None:
    """The key had no limit when the request came in; another process set one (0) while it
    ran: what was admitted before is charged in full, and record and ledger agree. The next
    request meets the limit."""
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    request = _request(key_hash, "limit-meanwhile")
    await px.service.generate(request, api="images", key=px.store.find_key(key_hash))
    px.store.update_key(key_hash, limit_micro=0, limit_reset=None)
    await px.service.closed(key_hash)
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "succeeded"
    assert record.total_cost_micro == PRICE == px.store.ledger_total(key_hash)
    assert px.store.key_balance(key_hash).reserved == 0
    later = _request(key_hash, "limit-after")
    with pytest.raises(PaymentRequired):
        await px.service.generate(later, api="images")


async def test_a_key_deleted_while_it_ran_keeps_the_record_and_the_charge(api) -> None:
    px = api.app.state.px
    key_hash = hash_key(await new_key(api))
    request = _request(key_hash, "deleted-meanwhile")
    await px.service.generate(request, api="images", key=px.store.find_key(key_hash))
    assert px.store.delete_key(key_hash)
    await px.service.closed(key_hash)
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "succeeded"
    assert record.total_cost_micro == PRICE
    kinds = {e.kind: e.amount_micro for e in px.store.ledger_entries(generation_id=request.id)}
    assert kinds == {"reserve": PRICE, "settle": PRICE, "release": 0}
    # Seen by a management key, as every generation of a deleted key is.
    seen = await api.get(f"/api/v1/generation?id={request.id}", key=api.admin_key)
    assert seen.json()["data"]["total_cost"] == PRICE / 1e6


async def test_a_client_leaving_early_leaves_a_cancelled_record_and_nothing_open(
    sqlite_api,
) -> None:
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    for delay in (0, 0.001, 0.005, 0.02):
        request = _request(key_hash, f"cancel-{delay}")
        task = asyncio.ensure_future(
            px.service.generate(request, api="images", key=px.store.find_key(key_hash))
        )
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await px.service.closed(key_hash)
        record = px.store.get_generation(request.id)
        assert record is not None and record.finished, delay
        if record.state == "cancelled":
            assert record.total_cost_micro == 0
            assert px.store.get_reservation(request.id) is None
    assert px.store.open_reservations(key_hash) == []
    assert px.store.key_balance(key_hash).reserved == 0


async def test_one_statement_and_the_transaction_book_a_request_alike(api) -> None:
    """On PostgreSQL a request's admission and close are one statement each where they can
    be (`Store.admit_at_once`, `Store.close_at_once`); switched off, every request takes the
    transaction SQLite runs. The same requests leave the same records, reservations, ledger,
    counters and provider outcomes either way (on SQLite both runs take the transaction)."""
    px = api.app.state.px
    seen = {}
    for one_statement in (True, False):
        px.store.one_statement = one_statement
        tag = "one" if one_statement else "tx"
        limited = hash_key(await new_key(api, limit=1.0))
        unlimited = hash_key(await new_key(api))
        ids = []
        for key_hash, n, handed in (
            (limited, 3, 3),
            (limited, 3, 2),
            (limited, 2, 0),
            (unlimited, 3, 1),
            (unlimited, 2, 2),
            (unlimited, 1, 0),
        ):
            request = _request(key_hash, f"{tag}-{len(ids)}", n=n)
            ids.append(request.id)
            await px.service.generate(
                request, api="images", key=px.store.find_key(key_hash), edge_reports=True
            )
            px.service.answered(request.id, handed)
            await px.service.closed(key_hash)
        records = [px.store.get_generation(i) for i in ids]
        reservations = [px.store.get_reservation(i) for i in ids]
        seen[tag] = (
            [
                (
                    r.state,
                    r.total_cost_micro,
                    r.num_images,
                    r.undelivered_images,
                    r.finish_reason,
                    r.provider_slug,
                )
                for r in records
                if r is not None
            ],
            [(r.amount_micro, r.state, r.settled_micro) for r in reservations if r is not None],
            [
                [(e.kind, e.amount_micro) for e in px.store.ledger_entries(generation_id=i)]
                for i in ids
            ],
            [px.store.key_balance(k) for k in (limited, unlimited)],
        )
    assert seen["one"] == seen["tx"]
    records, reservations, _, balances = seen["one"]
    assert len(records) == 6 and len(reservations) == 5  # nothing charged: no reservation
    assert [b.total_used for b in balances] == [5 * PRICE, 3 * PRICE]
    assert all(b.reserved == 0 for b in balances)
    # Every attempt of both runs was counted.
    slug = records[0][-1]
    counts = px.store.outcome_counts(slug, datetime.now(UTC), {"day": timedelta(days=1)})
    assert counts["day"].successes == 12
