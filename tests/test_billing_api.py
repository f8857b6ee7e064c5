"""Billing through the real app (SPEC §7): reserve at admission, 402 before work, settle to
what was delivered, exactly once; rate limits; usage and activity views."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import make_api
from pixelrouter.catalog import KLEIN_4B
from pixelrouter.keys import hash_key
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.types import GeneratedImage, ImageResult

PRICE = 14_000  # µ$ for an image of at most 1 MP


async def new_key(api, **fields: object) -> str:
    r = await api.post("/api/v1/keys", key=api.admin_key, json={"name": "billing", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"]


async def test_concurrent_requests_never_overspend(api) -> None:
    """200 requests at once on a key whose limit covers exactly 8 images."""
    allowed = 8
    key = await new_key(api, limit=allowed * PRICE / 1_000_000)
    body = {"prompt": "race", "size": "64x64"}
    responses = await asyncio.gather(
        *(api.post("/api/v1/images", key=key, json=body) for _ in range(200))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == allowed, statuses
    assert statuses.count(402) == 200 - allowed
    await api.app.state.px.service.closed()  # settlements are written just after the answers
    store = api.app.state.px.store
    key_hash = hash_key(key)
    assert store.ledger_total(key_hash) == allowed * PRICE
    assert store.open_reservations(key_hash) == []
    balance = store.key_balance(key_hash)
    assert balance.total_used == allowed * PRICE and balance.reserved == 0
    me = (await api.get("/api/v1/key", key=key)).json()["data"]
    assert me["usage"] == allowed * PRICE / 1_000_000
    assert me["limit_remaining"] == 0


async def test_402_comes_before_any_work_and_says_why(api, demo_provider) -> None:
    key = await new_key(api, limit=0.02)  # one 1 MP image, not two
    engine = demo_provider.engine
    started_before = engine.jobs_started
    r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "size": "256x256", "n": 2})
    assert r.status_code == 402, r.text
    error = r.json()["error"]
    assert error["metadata"]["error_type"] == "payment_required"
    assert "$0.028" in error["message"] and "$0.02" in error["message"]
    assert error["metadata"]["required"] == 0.028
    assert engine.jobs_started == started_before
    ok = await api.post("/api/v1/images", key=key, json={"prompt": "x", "size": "256x256"})
    assert ok.status_code == 200
    me = (await api.get("/api/v1/key", key=key)).json()["data"]
    assert me["usage"] == 0.014 and me["limit_remaining"] == 0.006


async def test_the_maximum_is_reserved_at_the_resolved_size(api) -> None:
    key = await new_key(api, limit=0.034)  # two 2K images cost 0.034
    r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "size": "2048x2048", "n": 3})
    assert r.status_code == 402
    assert r.json()["error"]["metadata"]["required"] == 0.051


class PartialProvider(ProviderBase):
    """An upstream that delivers only the first 2 images of every request."""

    def __init__(self) -> None:
        self.info = ProviderInfo(
            slug="partial",
            display_name="Partial upstream",
            models=(KLEIN_4B.id,),
            price=KLEIN_4B.price,
            kind="openai-images",
        )

    async def generate(self, request, on_progress=None):
        images = [
            GeneratedImage(b"\x89PNG fake", "image/png", request.width, request.height, i, i)
            for i in range(min(2, request.n))
        ]
        return ImageResult(
            request_id=request.id,
            model=request.model,
            provider_slug="partial",
            provider_name="Partial upstream",
            images=tuple(images),
            generation_time_ms=1,
            prompt_tokens=3,
            failed_images=request.n - len(images),
        )

    def readiness(self):
        return True, "ready"

    def status(self):
        return ProviderStatus()

    def count_prompt_tokens(self, prompt):
        return None

    async def aclose(self):
        return None


async def test_four_asked_two_delivered_costs_two(tmp_path: Path) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [PartialProvider()]):
        key = await new_key(api, limit=1)
        r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "n": 4})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 2
        assert r.json()["usage"]["cost"] == 0.028
        record = await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}", key=key)
        assert record.json()["data"]["total_cost"] == 0.028
        store = api.app.state.px.store
        assert store.ledger_total(hash_key(key)) == 2 * PRICE
        reservation = store.get_reservation(r.headers["x-generation-id"])
        assert reservation.amount_micro == 4 * PRICE and reservation.settled_micro == 2 * PRICE


async def test_failed_generation_costs_nothing_and_releases(tmp_path: Path) -> None:
    from test_api_failures import BrokenUpstream

    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [BrokenUpstream("x")]):
        key = await new_key(api, limit=0.014)
        for _ in range(3):  # a failure must not keep the credit reserved
            r = await api.post("/api/v1/images", key=key, json={"prompt": "x"})
            assert r.status_code == 502
        store = api.app.state.px.store
        assert store.ledger_total(hash_key(key)) == 0
        assert store.open_reservations(hash_key(key)) == []
        assert store.key_balance(hash_key(key)).reserved == 0


async def test_expired_and_disabled_keys(api) -> None:
    key = await new_key(api)
    store = api.app.state.px.store
    store.update_key(hash_key(key), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    r = await api.post("/api/v1/images", key=key, json={"prompt": "x"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    other = await new_key(api)
    store.update_key(hash_key(other), disabled=True)
    r = await api.get("/api/v1/key", key=other)
    assert r.status_code == 401 and "disabled" in r.json()["error"]["message"]


async def test_rate_limit_is_a_429_with_retry_after(api) -> None:
    key = await new_key(api, rate_limit_requests=2, rate_limit_interval_s=3600)
    body = {"prompt": "x", "size": "64x64"}
    for _ in range(2):
        assert (await api.post("/api/v1/images", key=key, json=body)).status_code == 200
    r = await api.post("/api/v1/images", key=key, json=body)
    assert r.status_code == 429
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 3600
    error = r.json()["error"]
    assert error["metadata"]["error_type"] == "rate_limit_exceeded"
    assert error["metadata"]["retry_after"] == retry_after
    assert "retry in" in error["message"]
    # other keys are not affected, and reading the key's state is not rate limited
    assert (await api.post("/api/v1/images", json=body)).status_code == 200
    me = (await api.get("/api/v1/key", key=key)).json()["data"]
    assert me["rate_limit"]["requests"] == 2 and me["rate_limit"]["interval"] == "3600s"


async def test_activity_and_credits(sqlite_api) -> None:
    api = sqlite_api
    for size in ("64x64", "2048x1024"):
        r = await api.post(
            "/api/v1/images",
            json={"prompt": "x", "size": size},
            headers={"HTTP-Referer": "https://app.example", "X-Title": "Example"},
        )
        assert r.status_code == 200
    # The last 30 completed UTC days leave today out; `date` asks for one day, today too.
    activity = await api.get("/api/v1/activity", key=api.admin_key)
    assert activity.status_code == 200, activity.text
    assert activity.json()["data"] == []
    today = datetime.now(UTC).date().isoformat()
    activity = await api.get(f"/api/v1/activity?date={today}", key=api.admin_key)
    [row] = activity.json()["data"]
    assert row["date"] == today
    assert row["provider_name"] == "Local (demo weights)"
    assert row["requests"] == 2 and row["images"] == 2 and row["megapixels"] == 3
    assert row["completion_tokens"] == 3 * 4096
    assert row["usage"] == 0.029
    assert (await api.get("/api/v1/activity")).status_code == 403
    bad = await api.get("/api/v1/activity?date=yesterday", key=api.admin_key)
    assert bad.status_code == 400
    credits = (await api.get("/api/v1/credits", key=api.admin_key)).json()["data"]
    assert credits["total_usage"] == 0.029


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/api/v1/images", {"prompt": "x"}),
        ("/api/v1/images/generations", {"prompt": "x"}),
    ],
)
async def test_streaming_requests_get_a_real_402(sqlite_api, path, body) -> None:
    key = await new_key(sqlite_api, limit=0.001)
    r = await sqlite_api.post(path, key=key, json={**body, "stream": True})
    assert r.status_code == 402, r.text
    assert r.json()["error"]["metadata"]["error_type"] == "payment_required"


class GenerousProvider(PartialProvider):
    """An upstream that answers with more images than asked, or of another size."""

    def __init__(self, extra: int = 2, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.extra, self.size = extra, size

    async def generate(self, request, on_progress=None):
        width, height = self.size or (request.width, request.height)
        images = [
            GeneratedImage(b"\x89PNG fake", "image/png", width, height, i, i)
            for i in range(request.n + self.extra)
        ]
        return ImageResult(request.id, request.model, tuple(images), 1, 3)


async def test_more_images_than_asked_are_cut_and_never_charged(tmp_path: Path) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [GenerousProvider()]):
        key = await new_key(api, limit=1)
        r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "n": 2})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        assert r.json()["usage"]["cost"] == 0.028
        await api.app.state.px.service.closed()  # the settlement follows the answer
        assert api.app.state.px.store.ledger_total(hash_key(key)) == 2 * PRICE


@pytest.mark.parametrize("provider", [GenerousProvider(size=(2048, 2048)), GenerousProvider(-1)])
async def test_no_usable_image_is_a_502_and_costs_nothing(tmp_path: Path, provider) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [provider]):
        key = await new_key(api, limit=1)
        r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "n": 1})
        assert r.status_code == 502, r.text
        store = api.app.state.px.store
        assert store.ledger_total(hash_key(key)) == 0
        assert store.open_reservations(hash_key(key)) == []


async def test_a_client_leaving_during_admission_leaves_nothing_open(sqlite_api) -> None:
    """Cancel the service call at every early moment: no reservation or record stays open."""
    from pixelrouter.types import ImageRequest

    px = sqlite_api.app.state.px
    key_hash = hash_key(sqlite_api.key)
    for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.01):
        request = ImageRequest(
            id=f"gen-cancel-{delay}",
            model=KLEIN_4B.id,
            prompt="x",
            width=64,
            height=64,
            key_hash=key_hash,
        )
        task = asyncio.ensure_future(px.service.generate(request, api="images"))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        def settled(generation_id: str = request.id) -> bool:
            record = px.store.get_generation(generation_id)
            reservation = px.store.get_reservation(generation_id)
            return (record is None or record.finished) and (
                reservation is None or reservation.state != "open"
            )

        deadline = asyncio.get_running_loop().time() + 10
        while not settled():
            assert asyncio.get_running_loop().time() < deadline, delay
            await asyncio.sleep(0.02)
    assert px.store.open_reservations(key_hash) == []


async def test_a_key_that_cannot_pay_is_refused_before_any_image_is_decoded(sqlite_api) -> None:
    """The 402 comes before the reference images are decoded: images that would be a 400 once
    decoded are never looked at."""
    api = sqlite_api
    key = await api.post("/api/v1/keys", key=api.admin_key, json={"name": "zero", "limit": 0})
    key = key.json()["key"]
    broken = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 4
    r = await api.post("/api/v1/images", key=key, json={"prompt": "x", "input_references": broken})
    assert r.status_code == 402, r.text
    assert r.json()["error"]["metadata"]["limit_remaining"] == 0
    chat = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}, *broken]},
        ]
    }
    assert (await api.post("/api/v1/chat/completions", key=key, json=chat)).status_code == 402
    edit = await api.client.post(
        "/api/v1/images/edits",
        headers=api.auth(key),
        data={"prompt": "x"},
        files=[("image[]", ("a.png", b"not an image", "image/png"))],
    )
    assert edit.status_code == 402, edit.text
    # A key with credit gets the decoding error, as before.
    r = await api.post("/api/v1/images", json={"prompt": "x", "input_references": broken})
    assert (
        r.status_code == 400 and r.json()["error"]["metadata"]["error_type"] != "payment_required"
    )
