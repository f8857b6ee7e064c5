"""The Batch API on the real app and the demo engine (docs/batches.md): mixed items with
per-item results and the right charge, on SQLite and PostgreSQL; ownership, listing, cancel,
delete, expiry, limits, the discount, and the OpenRouter SDK's `batch` calls."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import Api, make_api
from helpers import chat_image_body
from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import ProviderError
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus

MODEL = "black-forest-labs/flux.2-klein-4b"
PRICE = 14_000  # µ$ for an image of up to 1 MP


def chat_body(prompt: str, size: str = "256x256", seed: int = 1, **extra: Any) -> dict[str, Any]:
    ratio = {"256x256": "1:1", "384x256": "3:2"}[size]
    return chat_image_body(prompt, ratio=ratio, seed=seed, **extra)


async def wait_done(api: Api, batch_id: str, key: str | None = None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = await api.get(f"/api/v1/batches/{batch_id}", key=key)
        assert got.status_code == 200, got.text
        body = got.json()
        if body["status"] in ("completed", "failed", "expired", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


async def submit(api: Api, requests: list[dict], key: str | None = None, **extra: Any) -> dict:
    response = await api.post(
        "/api/v1/batches",
        key=key,
        json={"endpoint": "/v1/chat/completions", "model": MODEL, "requests": requests, **extra},
    )
    assert response.status_code == 202, response.text
    return response.json()


async def fetch(api: Api, url: str) -> bytes:
    path = url.removeprefix("http://pixelrouter.test")
    got = await api.client.get(path)
    assert got.status_code == 200, got.text
    return got.content


async def test_a_mixed_batch_completes_with_per_item_results_and_the_right_charge(
    api: Api,
) -> None:
    requests = [
        {"custom_id": "a", "body": chat_body("a red fox", seed=1)},
        {"custom_id": "b", "body": chat_body("a blue bird", "384x256", seed=2)},
        {"custom_id": "c", "body": chat_body("a red fox", seed=3)},
        {"custom_id": "bad", "body": {"model": MODEL, "messages": []}},
        {"custom_id": "big", "body": chat_body("a tree", seed=4, n=2)},
    ]
    created = await submit(api, requests)
    assert created["object"] == "batch" and created["id"].startswith("batch_")
    assert created["status"] == "in_progress"
    assert created["request_counts"]["total"] == 5
    done = await wait_done(api, created["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"completed": 4, "failed": 1, "total": 5}
    results = {r["custom_id"]: r for r in done["results"]}
    assert set(results) == {"a", "b", "c", "bad", "big"}
    bad = results["bad"]
    assert bad["response"] is None and bad["error"]["type"] == "invalid_request"
    assert "messages" in bad["error"]["message"]
    sizes = {}
    for custom_id in ("a", "b", "c", "big"):
        response = results[custom_id]["response"]
        assert response["status_code"] == 200 and results[custom_id]["error"] is None
        body = response["body"]
        assert body["object"] == "chat.completion"
        images = body["choices"][0]["message"]["images"]
        data = [await fetch(api, im["image_url"]["url"]) for im in images]
        sizes[custom_id] = [Image.open(io.BytesIO(d)).size for d in data]
        assert response["request_id"] == body["id"]
    assert len(sizes["big"]) == 2 and sizes["a"] == sizes["c"] and sizes["a"] != sizes["b"]
    # five images of at most 1 MP; the bad item costs nothing
    assert done["usage"]["cost"] == pytest.approx(5 * PRICE / 1e6)
    credits = (await api.get("/api/v1/key")).json()["data"]
    assert credits["usage"] == pytest.approx(5 * PRICE / 1e6)
    # the same body alone, exact: the same bytes as the single endpoint makes
    exact = chat_body("a red fox", seed=1)
    exact["image_config"]["batching"] = False
    again = await submit(api, [{"custom_id": "exact", "body": exact}])
    redone = await wait_done(api, again["id"])
    single = await api.post("/api/v1/chat/completions", json=exact)
    url = single.json()["choices"][0]["message"]["images"][0]["image_url"]["url"]
    alone = base64.b64decode(url.split(",", 1)[1])
    image = redone["results"][0]["response"]["body"]["choices"][0]["message"]["images"][0]
    assert await fetch(api, image["image_url"]["url"]) == alone


async def test_submission_is_checked_and_batches_belong_to_their_key(sqlite_api: Api) -> None:
    api = sqlite_api
    one = [{"custom_id": "x", "body": chat_body("x")}]
    chat = {"endpoint": "/v1/chat/completions", "model": MODEL}
    for body, word in (
        ({**chat, "endpoint": "/v1/embeddings", "requests": one}, "endpoint"),
        ({**chat, "requests": []}, "requests"),
        ({**chat, "completion_window": "48h", "requests": one}, "completion_window"),
        ({**chat, "requests": one * 2}, "custom_id"),
        ({**chat, "callback_url": "http://127.0.0.1:9/hook", "requests": one}, "callback_url"),
        ({**chat, "model": "nobody/nothing", "requests": one}, "nobody"),
    ):
        response = await api.post("/api/v1/batches", json=body)
        assert response.status_code == 400, (body, response.text)
        assert word in response.json()["error"]["message"], response.text
    other = (await api.post("/api/v1/keys", key=api.admin_key, json={"name": "other"})).json()[
        "key"
    ]
    created = await submit(api, [{"custom_id": "x", "body": chat_body("x")}])
    assert (await api.get(f"/api/v1/batches/{created['id']}", key=other)).status_code == 404
    assert (await api.get(f"/api/v1/batches/{created['id']}", key=api.admin_key)).status_code == 200
    mine = (await api.get("/api/v1/batches")).json()
    assert [b["id"] for b in mine["data"]] == [created["id"]]
    assert mine["data"][0]["results"] is None
    assert (await api.get("/api/v1/batches", key=other)).json()["data"] == []
    # a batch in progress cannot be deleted; once ended, it can
    done = await wait_done(api, created["id"])
    assert done["status"] == "completed"
    url = done["results"][0]["response"]["body"]["choices"][0]["message"]["images"][0]["image_url"][
        "url"
    ]
    deleted = await api.client.delete(f"/api/v1/batches/{created['id']}", headers=api.auth())
    assert deleted.status_code == 200
    assert deleted.json() == {
        "id": created["id"],
        "object": "batch",
        "deletion": {"openrouter": "deleted"},
    }
    assert (await api.get(f"/api/v1/batches/{created['id']}")).status_code == 404
    gone = await api.client.get(url.removeprefix("http://pixelrouter.test"))
    assert gone.status_code == 404
    # billing records stay
    assert (await api.get("/api/v1/key")).json()["data"]["usage"] == pytest.approx(PRICE / 1e6)


async def test_listing_pages_newest_first(sqlite_api: Api) -> None:
    api = sqlite_api
    ids = []
    for _ in range(5):
        ids.append(
            (await submit(api, [{"custom_id": "x", "body": {"model": MODEL, "messages": []}}]))[
                "id"
            ]
        )
    first = (await api.get("/api/v1/batches", params={"limit": 2})).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = (
        await api.get("/api/v1/batches", params={"limit": 2, "after": first["last_id"]})
    ).json()
    assert [b["id"] for b in second["data"]] == ids[::-1][2:4]
    failed = (await api.get("/api/v1/batches", params={"status": "failed"})).json()
    for batch in failed["data"]:
        assert batch["status"] == "failed"
    bad = await api.get("/api/v1/batches", params={"status": "finalizing"})
    assert bad.status_code == 400


async def test_cancel_stops_queued_items_and_charges_only_delivered_images(
    tmp_path: Path, demo_provider: object
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [demo_provider], batch_concurrency=1):
        requests = [
            {"custom_id": str(i), "body": chat_body(f"item {i}", seed=i)} for i in range(12)
        ]
        created = await submit(api, requests)
        deadline = time.monotonic() + 60
        while (await api.get(f"/api/v1/batches/{created['id']}")).json()["request_counts"][
            "completed"
        ] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        cancelled = await api.post(f"/api/v1/batches/{created['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] in ("cancelling", "cancelled")
        done = await wait_done(api, created["id"])
        assert done["status"] == "cancelled"
        delivered = done["request_counts"]["completed"]
        assert 1 <= delivered < 12
        assert done["request_counts"]["failed"] == 12 - delivered
        errors = [r["error"]["type"] for r in done["results"] if r["error"]]
        assert errors == ["batch_cancelled"] * (12 - delivered)
        usage = (await api.get("/api/v1/key")).json()["data"]["usage"]
        assert usage == pytest.approx(delivered * PRICE / 1e6)
        again = await api.post(f"/api/v1/batches/{created['id']}/cancel")
        assert again.status_code == 409


@pytest.mark.parametrize("on_payment_required", ["continue", "stop"])
async def test_a_limit_stops_a_batch_exactly_at_the_limit(
    api: Api, on_payment_required: str
) -> None:
    created = await api.post(
        "/api/v1/keys", key=api.admin_key, json={"name": "limited", "limit": 3 * PRICE / 1e6}
    )
    key = created.json()["key"]
    requests = [{"custom_id": str(i), "body": chat_body(f"item {i}", seed=i)} for i in range(6)]
    batch = await submit(api, requests, key=key, on_payment_required=on_payment_required)
    done = await wait_done(api, batch["id"], key=key)
    assert done["request_counts"]["completed"] == 3
    assert done["request_counts"]["failed"] == 3
    kinds = sorted(r["error"]["type"] for r in done["results"] if r["error"])
    assert kinds == ["payment_required"] * 3
    assert done["status"] == ("failed" if on_payment_required == "stop" else "completed")
    usage = (await api.get("/api/v1/key", key=key)).json()["data"]
    assert usage["usage"] == pytest.approx(3 * PRICE / 1e6)
    assert usage["limit_remaining"] == pytest.approx(0)


async def test_the_completion_window_expires_what_has_not_run(
    tmp_path: Path, demo_provider: object
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [demo_provider], batch_concurrency=1):
        requests = [
            {"custom_id": str(i), "body": chat_body(f"item {i}", seed=i)} for i in range(40)
        ]
        created = await submit(api, requests, completion_window="2s")
        done = await wait_done(api, created["id"])
        assert done["status"] == "expired"
        counts = done["request_counts"]
        assert counts["completed"] < 40 and counts["completed"] + counts["failed"] == 40
        assert {r["error"]["type"] for r in done["results"] if r["error"]} == {"batch_expired"}
        usage = (await api.get("/api/v1/key")).json()["data"]["usage"]
        assert usage == pytest.approx(counts["completed"] * PRICE / 1e6)


async def test_the_batch_discount_is_charged_and_shown(
    tmp_path: Path, demo_provider: object
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [demo_provider], batch_discount_ppm=500_000):
        batch = await submit(api, [{"custom_id": "x", "body": chat_body("a cat")}])
        done = await wait_done(api, batch["id"])
        assert done["usage"]["cost"] == pytest.approx(PRICE / 2 / 1e6)
        single = await api.post("/api/v1/chat/completions", json=chat_body("a cat"))
        assert single.json()["usage"]["cost"] == pytest.approx(PRICE / 1e6)
        usage = (await api.get("/api/v1/key")).json()["data"]["usage"]
        assert usage == pytest.approx(1.5 * PRICE / 1e6)
        models = (await api.get("/api/v1/models")).json()["data"]
        assert models[0]["pricing"]["batch_discount"] == "0.5"


async def test_image_api_results_carry_urls(sqlite_api: Api) -> None:
    api = sqlite_api
    for endpoint, body in (
        ("/v1/images", {"prompt": "a cat", "size": "256x256"}),
        ("/v1/images/generations", {"prompt": "a cat", "size": "256x256"}),
    ):
        response = await api.post(
            "/api/v1/batches",
            json={
                "endpoint": endpoint,
                "model": MODEL,
                "requests": [{"custom_id": "x", "body": body}],
            },
        )
        assert response.status_code == 202, response.text
        done = await wait_done(api, response.json()["id"])
        assert done["status"] == "completed", done
        data = done["results"][0]["response"]["body"]["data"]
        png = await fetch(api, data[0]["url"])
        assert Image.open(io.BytesIO(png)).size == (256, 256)


class FlakyUpstream(ProviderBase):
    """A provider that answers 5xx `failures` times, then makes images on the demo engine."""

    def __init__(self, engine: Any, failures: int) -> None:
        self.engine = engine
        self.failures = failures
        self.calls = 0
        self.info = ProviderInfo(
            slug="flaky",
            display_name="Flaky",
            models=(KLEIN_4B.id,),
            price=KLEIN_4B.price,
            kind="openrouter",
        )

    async def generate(self, request: Any, on_progress: Any = None) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("upstream answered HTTP 500")
        return await self.engine.generate(request, on_progress)

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def status(self) -> ProviderStatus:
        return ProviderStatus(queue_depth=0)

    def count_prompt_tokens(self, prompt: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_failure_that_may_pass_sends_the_item_back_to_the_queue(
    tmp_path: Path, demo_provider: Any
) -> None:
    flaky = FlakyUpstream(demo_provider, failures=2)
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [flaky]):
        batch = await submit(api, [{"custom_id": "x", "body": chat_body("a kite")}])
        done = await wait_done(api, batch["id"])
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
        assert flaky.calls == 3  # two 502s, each sent it back to the queue; the third made it
        store = api.app.state.px.store  # type: ignore[attr-defined]
        (item,) = store.batch_item_rows(batch["id"])
        assert item["status"] == "succeeded"
        usage = (await api.get("/api/v1/key")).json()["data"]["usage"]
        assert usage == pytest.approx(PRICE / 1e6)  # the failed tries cost nothing
