"""When a generation's bookkeeping is written (docs/billing.md, "When bookkeeping is written").

A key with a spending limit reserves before any work (SPEC §7). A key without one cannot be
refused, so its generation is recorded and charged in one transaction just after its answer
has gone out; every reader of the API (`/generation`, `/key`) waits for that write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from conftest import make_api
from pixelrouter.billing.keys import hash_key
from pixelrouter.catalog import KLEIN_4B
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


async def test_nothing_is_written_before_the_answer_goes_out(sqlite_api) -> None:
    """Called without an HTTP edge: the delivery is back, its record not yet written; the
    edge's `answered` lets the write go, and `closed` waits for it."""
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    request = _request(key_hash, "gate")
    delivery = await px.service.generate(request, api="images", unlimited_key=True)
    assert delivery.cost_micro == PRICE
    await asyncio.sleep(0.05)
    assert px.store.get_generation(request.id) is None
    assert px.service.closing == 1
    px.service.answered(request.id)
    await px.service.closed(key_hash)
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "succeeded"
    assert record.total_cost_micro == PRICE and px.store.ledger_total(key_hash) == PRICE


async def test_a_limit_set_while_it_ran_is_never_exceeded(sqlite_api, caplog) -> None:
    """The key had no limit when the request came in; another process set one (0) while it
    ran: the images are delivered, recorded, and left uncharged rather than overspend."""
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    request = _request(key_hash, "limit-meanwhile")
    await px.service.generate(request, api="images", unlimited_key=True)
    px.store.update_key(key_hash, limit_micro=0, limit_reset=None)
    with caplog.at_level(logging.WARNING):
        await px.service.closed(key_hash)
    assert any("delivered uncharged" in rec.getMessage() for rec in caplog.records)
    record = px.store.get_generation(request.id)
    assert record is not None and record.state == "succeeded"
    assert px.store.ledger_total(key_hash) == 0
    assert px.store.get_reservation(request.id) is None
    assert px.store.key_balance(key_hash).reserved == 0


async def test_a_client_leaving_early_leaves_a_cancelled_record_and_nothing_open(
    sqlite_api,
) -> None:
    px = sqlite_api.app.state.px
    key_hash = hash_key(await new_key(sqlite_api))
    for delay in (0, 0.001, 0.005, 0.02):
        request = _request(key_hash, f"cancel-{delay}")
        task = asyncio.ensure_future(px.service.generate(request, api="images", unlimited_key=True))
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
