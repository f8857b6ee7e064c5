"""The provider that served a generation names it and prices it: a `[[providers]]` entry of type
`local` with its own slug, display name and price is charged its own price and recorded under
its own name (the engine knows no provider's name)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_api
from pixelrouter.catalog import Price
from pixelrouter.providers.local import LocalProvider


async def test_a_named_local_provider_is_charged_its_price_and_named(
    tmp_path: Path, db_url: str, demo_provider
) -> None:
    gpu0 = LocalProvider(
        demo_provider.engine,  # the demo engine, under another name and price
        slug="gpu0",
        display_name="GPU zero",
        price=Price(first_mp=10_000, extra_mp=1_000),
        start=False,
    )
    async for api in make_api(tmp_path, db_url, [gpu0]):
        r = await api.post("/api/v1/images", json={"prompt": "x", "size": "64x64"})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["cost"] == 0.010
        record = await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")
        data = record.json()["data"]
        assert (data["provider_name"], data["total_cost"]) == ("GPU zero", 0.010)
        assert data["provider_responses"][0]["provider_name"] == "GPU zero"
        chat = await api.post(
            "/api/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "x"}],
                "image_config": {"image_size": "0.5K"},
            },
        )
        assert chat.json()["provider"] == "GPU zero"
        assert chat.json()["usage"]["cost"] == 0.010
        store = api.app.state.px.store
        stored = store.get_generation(r.headers["x-generation-id"])
        assert stored is not None and stored.provider_slug == "gpu0"
