"""Failures inside the service: a provider that breaks, a bug, an error after a stream began.

The providers here are stand-ins for upstreams that fail; the app, router, service and store
under test are the real ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from conftest import make_api
from helpers import sse_events
from pixelrouter.catalog import KLEIN_4B, Price
from pixelrouter.errors import ProviderError
from pixelrouter.keys import hash_key
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus


class BrokenUpstream(ProviderBase):
    """An upstream provider that answers 5xx (or raises a bug) on every generation."""

    def __init__(self, slug: str, *, bug: bool = False, price: int = 10_000) -> None:
        self.bug = bug
        self.calls = 0
        self.info = ProviderInfo(
            slug=slug,
            display_name=f"Broken {slug}",
            models=(KLEIN_4B.id,),
            price=Price(first_mp=price, extra_mp=1_000),
            kind="openrouter",
        )

    async def generate(self, request, on_progress=None):
        self.calls += 1
        if self.bug:
            raise RuntimeError("secret internal detail sk-pr-v1-should-never-leak")
        raise ProviderError("upstream answered HTTP 500")

    def readiness(self):
        return True, "ready"

    def status(self):
        return ProviderStatus(queue_depth=0)

    def count_prompt_tokens(self, prompt):
        return None

    async def aclose(self):
        return None


# The default pick is random, weighted by 1/price² (SPEC §4); sorting by price makes the
# cheap broken provider the first attempt every time.
BY_PRICE = {"provider": {"sort": "price"}}


def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'px.db'}"


async def test_fallback_to_the_next_provider_is_recorded(tmp_path, demo_provider) -> None:
    broken = BrokenUpstream("cheap", price=5_000)  # cheapest, so tried first by price
    async for api in make_api(tmp_path, db(tmp_path), [demo_provider, broken]):
        r = await api.post("/api/v1/images", json={"prompt": "x", "size": "128x128", **BY_PRICE})
        assert r.status_code == 200, r.text
        assert broken.calls == 1
        record = (await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")).json()
        attempts = record["data"]["provider_responses"]
        assert [(a["provider_name"], a["status"]) for a in attempts] == [
            ("Broken cheap", 502),
            ("Local (demo weights)", 200),
        ]
        assert record["data"]["provider_name"] == "Local (demo weights)"
        assert record["data"]["total_cost"] == 0.014  # the failed attempt cost nothing


async def test_all_providers_failing_is_a_502_with_provider_errors(tmp_path) -> None:
    providers = [BrokenUpstream("a"), BrokenUpstream("b", price=20_000)]
    async for api in make_api(tmp_path, db(tmp_path), providers):
        r = await api.post("/api/v1/images", json={"prompt": "x", "size": "128x128", **BY_PRICE})
        assert r.status_code == 502
        error = r.json()["error"]
        assert error["code"] == 502
        assert [e["provider"] for e in error["metadata"]["provider_errors"]] == [
            "Broken a",
            "Broken b",
        ]
        record = (await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")).json()
        assert record["data"]["total_cost"] == 0 and record["data"]["finish_reason"] == "error"

        no_fallbacks = await api.post(
            "/api/v1/images",
            json={"prompt": "x", "size": "128x128", "provider": {"allow_fallbacks": False}},
        )
        assert no_fallbacks.status_code == 502
        assert len(no_fallbacks.json()["error"]["metadata"]["provider_errors"]) == 1


async def test_provider_preferences_pick_and_skip(tmp_path, demo_provider) -> None:
    broken = BrokenUpstream("cheap", price=5_000)
    async for api in make_api(tmp_path, db(tmp_path), [demo_provider, broken]):
        r = await api.post(
            "/api/v1/images",
            json={"prompt": "x", "size": "128x128", "provider": {"ignore": ["cheap"]}},
        )
        assert r.status_code == 200 and broken.calls == 0
        r = await api.post(
            "/api/v1/images",
            json={"prompt": "x", "size": "128x128", "provider": {"only": ["nobody"]}},
        )
        assert r.status_code == 404  # no endpoint matches the preferences
        r = await api.post(
            "/api/v1/images",
            json={"prompt": "x", "size": "128x128", "provider": {"max_price": {"image": 0.01}}},
        )
        assert r.status_code == 502  # only the cheap, broken one is under $0.01
        assert broken.calls == 1


async def test_a_provider_bug_falls_through_and_is_logged_with_an_id(
    tmp_path, demo_provider, caplog
) -> None:
    buggy = BrokenUpstream("buggy", bug=True, price=5_000)
    async for api in make_api(tmp_path, db(tmp_path), [demo_provider, buggy]):
        with caplog.at_level(logging.ERROR):
            r = await api.post(
                "/api/v1/images", json={"prompt": "x", "size": "128x128", **BY_PRICE}
            )
        assert r.status_code == 200 and buggy.calls == 1
        record = (await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")).json()
        assert record["data"]["provider_responses"][0]["status"] == 500
        assert "secret" not in r.text
        assert any("buggy" in rec.getMessage() for rec in caplog.records)


async def test_a_bug_is_a_500_with_an_error_id_and_no_details(tmp_path, caplog) -> None:
    async for api in make_api(tmp_path, db(tmp_path), []):

        async def broken_route() -> None:
            raise RuntimeError("secret internal detail")

        api.app.add_api_route("/api/v1/broken", broken_route)
        transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with caplog.at_level(logging.ERROR):
                r = await client.get("/api/v1/broken")
        assert r.status_code == 500
        assert r.headers["x-generation-id"].startswith("gen-")
        error = r.json()["error"]
        assert error["metadata"]["error_type"] == "server"
        assert error["metadata"]["error_id"] in error["message"]
        assert "secret" not in r.text and "Traceback" not in r.text
        assert any(error["metadata"]["error_id"] in rec.getMessage() for rec in caplog.records)


async def test_an_error_after_the_stream_began_is_an_error_chunk(tmp_path) -> None:
    async for api in make_api(tmp_path, db(tmp_path), [BrokenUpstream("x")]):
        r = await api.post(
            "/api/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert r.status_code == 200
        events, _ = sse_events(r.text)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        last = events[-2]
        assert last["choices"][0]["finish_reason"] == "error"
        assert last["error"]["code"] == 502 and last["error"]["message"]
        assert events[-1] == "[DONE]"

        r = await api.post("/api/v1/images", json={"prompt": "x", "stream": True})
        events, _ = sse_events(r.text)
        assert events[-2]["type"] == "error" and events[-2]["error"]["code"] == "502"


async def test_the_reservation_is_priced_at_the_providers_the_request_allows(
    tmp_path, demo_provider
) -> None:
    """A key with $0.01 left can ask for a 64x64 image from a $0.005 provider it names with
    `only`; without `only`, the dearest ($0.014) decides, and it is a 402."""
    cheap = BrokenUpstream("cheap", price=5_000)
    async for api in make_api(tmp_path, db(tmp_path), [demo_provider, cheap]):
        created = await api.post(
            "/api/v1/keys", key=api.admin_key, json={"name": "t", "limit": 0.01}
        )
        key = created.json()["key"]
        body = {"prompt": "x", "size": "64x64"}
        r = await api.post("/api/v1/images", key=key, json=body)
        assert r.status_code == 402, r.text
        assert r.json()["error"]["metadata"]["required"] == 0.014
        r = await api.post(
            "/api/v1/images", key=key, json={**body, "provider": {"only": ["cheap"]}}
        )
        assert r.status_code == 502, r.text  # admitted at $0.005; the cheap one then failed
        assert cheap.calls == 1
        store = api.app.state.px.store
        assert store.key_balance(hash_key(key)).reserved == 0
