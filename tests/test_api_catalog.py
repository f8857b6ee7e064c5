"""The catalogue endpoints, exactly per SPEC §1 and §3.4."""

from __future__ import annotations

import pytest

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


async def _listed(api, query: str) -> list[str]:
    r = await api.get(f"/api/v1/models?{query}")
    assert r.status_code == 200, (query, r.text)
    count = await api.get(f"/api/v1/models/count?{query}")
    assert count.status_code == 200, (query, count.text)
    ids = [m["id"] for m in r.json()["data"]]
    assert count.json() == {"data": {"count": len(ids)}}  # the count agrees with the list
    return ids


@pytest.mark.parametrize(
    "query",
    [
        "q=klein",
        "q=FLUX.2",
        "output_modalities=image",
        "output_modalities=text,image",
        "output_modalities=all",
        "input_modalities=text,image",
        "model_authors=black-forest-labs,openai",
        "supported_parameters=seed,n",
        "context=67344",
        "max_price=0.25&min_price=0.2",  # 0.001 USD/MP = 0.244 USD per million tokens
        "max_output_price=1",
        "arch=flux",
        "arch=Qwen3",
        "providers=local",
        "distillable=true",
        "zdr=true",
        "min_age_days=1",
        "sort=newest",
        "sort=intelligence-high-to-low",  # no scores: the order stays
        "sort=throughput-high-to-low",
        "sort=most-popular",
        "offset=0&limit=500",  # what the Python SDK always sends
    ],
)
async def test_model_filters_that_match_klein(api, query: str) -> None:
    assert await _listed(api, query) == [MODEL]


@pytest.mark.parametrize(
    "query",
    [
        "q=gpt",
        "supported_parameters=tools",
        "supported_parameters=seed,tools",
        "input_modalities=audio",
        "input_modalities=text,file",
        "output_modalities=text",
        "output_modalities=embeddings,rerank,decisions,speech,transcription,video,audio",
        "category=programming",
        "context=200000",
        "max_price=0.1",
        "min_output_price=5",
        "arch=GPT",
        "model_authors=openai",
        "providers=openai",
        "distillable=false",
        "region=eu",
        "max_age_days=1",
        "min_intelligence_index=10",
        "max_tool_success_rate=1",
    ],
)
async def test_model_filters_that_do_not_match_give_an_empty_list(api, query: str) -> None:
    assert await _listed(api, query) == []


async def test_unknown_modalities_are_a_400_naming_the_known_ones(api) -> None:
    r = await api.get("/api/v1/models?output_modalities=smell")
    assert r.status_code == 400
    assert "speech" in r.json()["error"]["message"]
    r = await api.get("/api/v1/models?input_modalities=smell")
    assert r.status_code == 400


async def test_one_model_by_id_alias_or_canonical_slug(api) -> None:
    listed = (await api.get("/api/v1/models")).json()["data"][0]
    for path in (
        MODEL,
        "black-forest-labs/FLUX.2-klein-4B",
        "black-forest-labs/flux.2-klein-4b-20260114",
    ):
        r = await api.get(f"/api/v1/model/{path}")
        assert r.status_code == 200, path
        assert r.json() == {"data": listed}
    r = await api.get("/api/v1/model/openai/gpt-4")
    assert r.status_code == 404
    assert r.json()["error"]["metadata"]["error_type"] == "not_found"


async def test_providers_in_openrouters_shape(api) -> None:
    r = await api.get("/api/v1/providers")
    assert r.status_code == 200
    [provider] = r.json()["data"]
    assert provider["slug"] == "local"
    assert provider["name"] == "Local (demo weights)"
    assert provider["privacy_policy_url"] is None


async def test_models_for_the_key_and_openais_retrieve(api) -> None:
    listed = (await api.get("/api/v1/models?output_modalities=image")).json()
    assert (await api.get("/api/v1/models/user?output_modalities=image")).json() == listed
    assert (await api.get("/api/v1/models/user?q=gpt")).json()["data"] == []
    # The OpenAI SDK's models.retrieve sends the id with its slash encoded.
    r = await api.get("/api/v1/models/black-forest-labs%2Fflux.2-klein-4b")
    assert r.status_code == 200, r.text
    model = r.json()
    assert (model["id"], model["object"], model["owned_by"]) == (
        MODEL,
        "model",
        "black-forest-labs",
    )
    assert model == listed["data"][0]
