"""A server whose weights cannot be loaded still starts, says why, and answers 503."""

from __future__ import annotations

from pathlib import Path

from conftest import make_api


async def test_missing_weights_give_ready_503_and_a_helpful_generation_503(tmp_path: Path) -> None:
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.providers.local import LocalProvider

    provider = LocalProvider(config=EngineConfig(model=str(tmp_path / "no-weights-here")))
    provider.engine.wait_ready(60)
    try:
        async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [provider]):
            ready = await api.client.get("/ready")
            assert ready.status_code == 503
            assert "weights" in ready.json()["error"]["message"].lower()
            r = await api.post("/api/v1/images", json={"prompt": "x", "size": "256x256"})
            assert r.status_code == 503, r.text
            message = r.json()["error"]["message"]
            assert "--model" in message or "--demo" in message
            record = await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")
            assert record.json()["data"]["total_cost"] == 0
            assert record.json()["data"]["finish_reason"] == "error"
    finally:
        provider.engine.shutdown()


async def test_gateway_without_providers_is_not_ready(tmp_path: Path) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", []):
        ready = await api.client.get("/ready")
        assert ready.status_code == 503
        r = await api.post("/api/v1/images", json={"prompt": "x", "size": "256x256"})
        assert r.status_code == 503
        assert r.json()["error"]["metadata"]["error_type"] == "provider_overloaded"
