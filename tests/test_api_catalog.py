"""The catalogue endpoints, exactly per SPEC §1 and §3.4."""

from __future__ import annotations

MODEL = "black-forest-labs/flux.2-klein-4b"
PRICING = {
    "prompt": "0.000000244140625",
    "completion": "0.000000244140625",
    "image_output": "0.00000341796875",
    "request": "0",
    "image": "0",
}


async def test_models(api) -> None:
    r = await api.get("/api/v1/models")
    assert r.status_code == 200
    [model] = r.json()["data"]
    assert model["id"] == MODEL
    assert model["canonical_slug"] == "black-forest-labs/flux.2-klein-4b-20260114"
    assert model["name"] == "Black Forest Labs: FLUX.2 Klein 4B"
    assert model["created"] == 1768348800
    assert model["context_length"] == 67344
    assert model["architecture"] == {
        "modality": "text+image->image",
        "input_modalities": ["text", "image"],
        "output_modalities": ["image"],
        "tokenizer": "Qwen3",
        "instruct_type": None,
    }
    assert model["pricing"] == PRICING
    assert "$0.014" in model["description"] and "$0.001" in model["description"]
    assert model["links"]["details"] == f"/api/v1/models/{MODEL}/endpoints"
    assert (await api.get("/api/v1/models?output_modalities=text")).json()["data"] == []
    assert len((await api.get("/api/v1/models?output_modalities=image")).json()["data"]) == 1


async def test_endpoints(api) -> None:
    r = await api.get(f"/api/v1/models/{MODEL}/endpoints")
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["id"] == MODEL
    [endpoint] = data["endpoints"]
    assert endpoint["provider_name"] == "Local (demo weights)"
    assert endpoint["tag"] == "local"
    assert endpoint["status"] == 0
    assert endpoint["pricing"] == PRICING
    assert endpoint["uptime_last_30m"] is None  # fewer than 5 samples
    r = await api.get("/api/v1/models/black-forest-labs/FLUX.2-klein-4B/endpoints")
    assert r.status_code == 200
    r = await api.get("/api/v1/models/acme/nothing/endpoints")
    assert r.status_code == 404


async def test_image_api_catalogue(api) -> None:
    r = await api.get("/api/v1/images/models")
    [model] = r.json()["data"]
    assert model["id"] == MODEL
    assert model["endpoints"] == f"/api/v1/images/models/{MODEL}/endpoints"
    r = await api.get(f"/api/v1/images/models/{MODEL}/endpoints")
    body = r.json()
    assert body["id"] == MODEL
    [endpoint] = body["endpoints"]
    assert endpoint["pricing"] == [
        {"billable": "output_image", "unit": "megapixel", "cost_usd": 0.014},
        {
            "billable": "output_image",
            "unit": "megapixel",
            "cost_usd": 0.001,
            "variant": "additional",
        },
    ]


async def test_service_endpoints(api) -> None:
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    ready = await api.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = (await api.client.get("/openapi.json")).json()
    for path in (
        "/api/v1/chat/completions",
        "/api/v1/images",
        "/api/v1/images/generations",
        "/api/v1/images/edits",
        "/api/v1/models",
        "/api/v1/generation",
        "/api/v1/keys",
        "/api/v1/key",
    ):
        assert path in schema["paths"], path
    status = await api.get("/api/v1/engine/status")
    assert status.status_code == 200
    assert status.json()["data"]["queue_depth"] == 0
