"""Two gateway processes on one PostgreSQL database share one key's limit (SPEC §7, §8): under a
burst of concurrent requests split across both, exactly as many images as the limit covers are
made and charged, and the rest are refused with 402 before any work."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from pixelrouter.keys import generate_key
from pixelrouter.store import Store

from .servers import Launcher

pytestmark = pytest.mark.e2e

N = 6  # images the limit covers
PRICE_64 = 14_000  # micro-dollars for one 64x64 image
LIMIT_USD = 0.084  # N * PRICE_64
REQUESTS = 200
BODY = {"prompt": "race", "size": "64x64"}


async def test_two_gateways_share_one_limit(shared_postgres_url: str, launcher: Launcher) -> None:
    postgres_url = shared_postgres_url
    admin_key = generate_key()
    # Started together: they also migrate the empty database at the same time.
    gateways = [
        launcher.start(name, postgres_url, admin_key=admin_key, wait=False)
        for name in ("gateway-a", "gateway-b")
    ]
    for gateway in gateways:
        launcher.wait_ready(gateway)
    key, key_hash = gateways[0].create_key(limit=LIMIT_USD)
    auth = {"Authorization": f"Bearer {key}"}

    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=30), limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            gateway = gateways[i % 2]
            return await client.post(f"{gateway.api}/images", json=BODY, headers=auth)

        responses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        views = [
            await client.get(f"{gateway.api}/key", headers=auth, timeout=30) for gateway in gateways
        ]

    statuses = Counter(r.status_code for r in responses)
    odd = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 402)]
    assert statuses == {200: N, 402: REQUESTS - N}, (statuses, odd[:5])
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 402]
    assert all(r.json()["usage"]["cost"] == pytest.approx(PRICE_64 / 1e6) for r in ok)
    assert all(r.json()["error"]["code"] == 402 for r in refused), refused[0].text

    with Store(postgres_url) as store:
        assert store.ledger_total(key_hash) == N * PRICE_64
        assert store.open_reservations(key_hash) == []
        balance = store.key_balance(key_hash)
        assert balance.total_used == N * PRICE_64
        assert balance.period_used == N * PRICE_64
        assert balance.reserved == 0
        # Each image made was settled once, at its price; a refused request left nothing.
        records = store.list_generations(key_hash, limit=REQUESTS + 10)
        assert {g.id for g in records} == {r.headers["x-generation-id"] for r in ok}
        for record in records:
            assert record.state == "succeeded", record
            assert record.total_cost_micro == PRICE_64
            reservation = store.get_reservation(record.id)
            assert reservation is not None
            assert (reservation.state, reservation.settled_micro) == ("settled", PRICE_64)
            entries = store.ledger_entries(generation_id=record.id)
            assert [e.amount_micro for e in entries if e.kind == "settle"] == [PRICE_64]
        for response in refused:
            assert store.get_reservation(response.headers["x-generation-id"]) is None

    for gateway, view in zip(gateways, views, strict=True):
        assert view.status_code == 200, (gateway.name, view.text)
        data = view.json()["data"]
        assert data["usage"] == pytest.approx(LIMIT_USD), (gateway.name, data)
        assert data["limit"] == pytest.approx(LIMIT_USD), (gateway.name, data)
        assert data["limit_remaining"] == pytest.approx(0.0, abs=1e-9), (gateway.name, data)


async def test_a_limit_set_in_another_process_charges_what_was_admitted_before(
    postgres_url: str, launcher: Launcher
) -> None:
    """Gateway A still holds the key as "no limit" (its key cache lives a second) when B sets a
    limit of 0: what A admitted in that second is delivered and charged in full; records and
    ledger agree, whatever the limit says now. Later requests meet the limit."""
    admin_key = generate_key()
    a = launcher.start("gateway-a", postgres_url, admin_key=admin_key)
    b = launcher.start("gateway-b", postgres_url, admin_key=admin_key)
    key, key_hash = a.create_key()  # no limit
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=30)) as client:
        warm = await client.post(f"{a.api}/images", json=BODY, headers=auth)
        assert warm.status_code == 200, warm.text  # A's cache: this key has no limit
        limited = await client.patch(
            f"{b.api}/keys/{key_hash}", json={"limit": 0}, headers=b.admin()
        )
        assert limited.status_code == 200, limited.text
        burst = await asyncio.gather(
            *(client.post(f"{a.api}/images", json=BODY, headers=auth) for _ in range(10))
        )
        # A's key cache lapses within its second: once A's own view of the key shows the
        # limit, the limit holds there too.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            view = await client.get(f"{a.api}/key", headers=auth)
            assert view.status_code == 200, view.text
            if view.json()["data"]["limit"] == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, "A never read the new limit"
            await asyncio.sleep(0.05)
        later = await client.post(f"{a.api}/images", json=BODY, headers=auth)
        await client.get(f"{a.api}/key", headers=auth)  # its bookkeeping is written
    statuses = Counter(r.status_code for r in burst)
    assert set(statuses) <= {200, 402}, statuses
    assert later.status_code == 402, later.text
    delivered = [r.headers["x-generation-id"] for r in [warm, *burst] if r.status_code == 200]
    with Store(postgres_url) as store:
        for generation_id in delivered:
            record = store.get_generation(generation_id)
            assert record is not None and record.state == "succeeded"
            assert record.total_cost_micro == PRICE_64, generation_id
        assert store.ledger_total(key_hash) == PRICE_64 * len(delivered)
        assert store.open_reservations(key_hash) == []
