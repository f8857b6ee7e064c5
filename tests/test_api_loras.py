"""LoRA adapters over the API: chosen per request on /images (and chat, OpenAI Images, model
variants), every mistake a 400 in the SPEC envelope, the adapter's price charged."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Api, api_with_its_loras, demo_engine
from engine.loras_helpers import make_adapter
from helpers import tiny_png
from pixelrouter.catalog import Price
from pixelrouter.loras import LoraRegistry, LoraSpec

MODEL = "black-forest-labs/flux.2-klein-4b"
OTHER_MODEL = "another/model"


@pytest.fixture(scope="module")
def lora_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A demo engine with three adapters: 'ink', 'glass' (its own price) and one registered
    for another model."""
    root = tmp_path_factory.mktemp("api-loras")
    registry = LoraRegistry(
        [
            LoraSpec("ink", str(make_adapter(root / "ink", 1)), default_scale=0.9),
            LoraSpec(
                "glass",
                str(make_adapter(root / "glass", 2)),
                price=Price(first_mp=20_000, extra_mp=2_000),
                description="stained glass",
            ),
            LoraSpec("elsewhere", str(make_adapter(root / "elsewhere", 3)), models=(OTHER_MODEL,)),
        ]
    )
    with demo_engine(loras=registry) as provider:
        yield provider


@pytest.fixture
async def lora_api(tmp_path: Path, lora_provider: Any) -> AsyncIterator[Api]:
    async for harness in api_with_its_loras(tmp_path, lora_provider):
        yield harness


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "a lantern", "size": "128x128", "seed": 5, **fields}


def _image(response: Any) -> bytes:
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"][0]["b64_json"])


async def test_an_adapter_changes_the_image_and_scale_zero_does_not(lora_api: Api) -> None:
    base = _image(await lora_api.post("/api/v1/images", json=_body()))
    inked = _image(
        await lora_api.post("/api/v1/images", json=_body(loras=[{"name": "ink", "scale": 0.8}]))
    )
    zero = _image(
        await lora_api.post("/api/v1/images", json=_body(loras=[{"name": "ink", "scale": 0}]))
    )
    assert inked != base
    assert zero == base


async def test_the_default_scale_and_the_model_variant_agree(lora_api: Api) -> None:
    explicit = _image(
        await lora_api.post("/api/v1/images", json=_body(loras=[{"name": "ink", "scale": 0.9}]))
    )
    default = _image(await lora_api.post("/api/v1/images", json=_body(loras=[{"name": "ink"}])))
    variant = _image(await lora_api.post("/api/v1/images", json=_body(model=f"{MODEL}:ink")))
    assert explicit == default == variant


async def test_chat_and_openai_images_take_adapters(lora_api: Api) -> None:
    inked = _image(
        await lora_api.post("/api/v1/images", json=_body(loras=[{"name": "ink", "scale": 0.8}]))
    )
    openai = await lora_api.post(
        "/api/v1/images/generations",
        json={
            "model": MODEL,
            "prompt": "a lantern",
            "size": "128x128",
            "seed": 5,
            "loras": [{"name": "ink", "scale": 0.8}],
        },
    )
    assert _image(openai) == inked
    chat = await lora_api.post(
        "/api/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "a lantern"}],
            "seed": 5,
            "image_config": {"aspect_ratio": "1:1", "image_size": "0.5K", "loras": [{"name": "x"}]},
        },
    )
    assert chat.status_code == 400 and "image_config.loras[0]" in chat.json()["error"]["message"]


@pytest.mark.parametrize(
    ("loras", "says"),
    [
        ([{"name": "nope"}], "unknown LoRA adapter 'nope'. Adapters for " + MODEL + ": ink, glass"),
        ([{"name": "elsewhere"}], "registered for another/model, not for " + MODEL),
        ([{"name": "ink"}, {"name": "ink", "scale": 0.5}], "names the adapter 'ink' twice"),
        ([{"name": "ink", "scale": 4.5}], "scale must be between -4 and 4; got 4.5"),
        ([{"name": "ink", "scale": "strong"}], "scale must be a number between -4 and 4"),
        ([{"name": "ink", "scale": True}], "scale must be a number"),
        ([{"name": "ink"}] * 5, "at most 4 adapters; got 5"),
        ([{"scale": 1}], "name must be the name of a registered adapter"),
    ],
)
async def test_bad_adapters_are_400s_in_the_envelope(
    lora_api: Api, loras: list[Any], says: str
) -> None:
    response = await lora_api.post("/api/v1/images", json=_body(loras=loras))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["metadata"]["error_type"] == "invalid_request"
    assert says in error["message"]


async def test_a_variant_of_an_unknown_adapter_is_a_404(lora_api: Api) -> None:
    response = await lora_api.post("/api/v1/images", json=_body(model=f"{MODEL}:nope"))
    assert response.status_code == 404
    assert f"Variants: {MODEL}:ink, {MODEL}:glass" in response.json()["error"]["message"]


async def test_the_adapters_price_is_charged(lora_api: Api) -> None:
    plain = await lora_api.post("/api/v1/images", json=_body())
    assert plain.json()["usage"]["cost"] == 0.014
    glass = await lora_api.post(
        "/api/v1/images", json=_body(loras=[{"name": "glass", "scale": 1}], n=2)
    )
    assert glass.status_code == 200, glass.text
    assert glass.json()["usage"]["cost"] == pytest.approx(0.04)  # 2 images at $0.02
    # With another adapter that has no price of its own, the override still holds.
    both = await lora_api.post(
        "/api/v1/images", json=_body(loras=[{"name": "ink"}, {"name": "glass"}])
    )
    assert both.json()["usage"]["cost"] == pytest.approx(0.02)
    generation = await lora_api.get(
        f"/api/v1/generation?id={both.headers['x-generation-id']}", key=lora_api.admin_key
    )
    assert generation.json()["data"]["total_cost"] == pytest.approx(0.02)
    # The record lists the adapters and their scales, in the request's order.
    assert generation.json()["data"]["loras"] == [
        {"name": "ink", "scale": 0.9},
        {"name": "glass", "scale": 1.0},
    ]
    plain_record = await lora_api.get(
        f"/api/v1/generation?id={plain.headers['x-generation-id']}", key=lora_api.admin_key
    )
    assert plain_record.json()["data"]["loras"] == []


async def test_each_accepted_adapter_is_listed_as_a_model_variant(lora_api: Api) -> None:
    models = (await lora_api.get("/api/v1/models")).json()
    ids = [m["id"] for m in models["data"]]
    assert ids[ids.index(MODEL) + 1 : ids.index(MODEL) + 3] == [f"{MODEL}:ink", f"{MODEL}:glass"]
    assert f"{MODEL}:elsewhere" not in ids and models["total_count"] == len(ids)
    by_id = {m["id"]: m for m in models["data"]}
    base, ink, glass = by_id[MODEL], by_id[f"{MODEL}:ink"], by_id[f"{MODEL}:glass"]
    assert glass["description"] == "stained glass"
    assert "'ink' at scale 0.9" in ink["description"]
    assert ink["pricing"] == base["pricing"]  # no price of its own: the model's
    assert glass["pricing"]["image_output"] != base["pricing"]["image_output"]
    assert glass["links"]["details"] == base["links"]["details"]  # the model's endpoints
    count = await lora_api.get("/api/v1/models/count")
    assert count.json()["data"]["count"] == len(ids)
    assert [m["id"] for m in (await lora_api.get("/api/v1/models?q=glass")).json()["data"]] == [
        f"{MODEL}:glass"
    ]

    images = {m["id"]: m for m in (await lora_api.get("/api/v1/images/models")).json()["data"]}
    assert images[f"{MODEL}:glass"]["pricing"][0]["cost_usd"] == pytest.approx(0.02)
    assert images[f"{MODEL}:glass"]["pricing"][1]["cost_usd"] == pytest.approx(0.002)
    assert images[f"{MODEL}:ink"]["pricing"] == images[MODEL]["pricing"]
    assert images[f"{MODEL}:ink"]["description"] == ink["description"]

    one = await lora_api.get(f"/api/v1/model/{MODEL}:glass")
    assert one.status_code == 200 and one.json()["data"]["description"] == "stained glass"
    assert (await lora_api.get(f"/api/v1/model/{MODEL}:elsewhere")).status_code == 404


async def test_get_loras_lists_every_adapter_with_its_check(lora_api: Api) -> None:
    response = await lora_api.get("/api/v1/loras")  # an inference key is enough
    assert response.status_code == 200, response.text
    by_name = {row["name"]: row for row in response.json()["data"]}
    assert list(by_name) == ["ink", "glass", "elsewhere"]
    ink, glass = by_name["ink"], by_name["glass"]
    assert ink["models"] == [MODEL] and ink["default_scale"] == 0.9 and ink["price"] is None
    assert ink["status"] == "ready" and ink["rank"] == 4 and ink["dtype"] and ink["reason"] is None
    assert glass["price"] == {"first_mp": 0.02, "extra_mp": 0.002}
    assert glass["description"] == "stained glass"
    assert by_name["elsewhere"]["models"] == [OTHER_MODEL]
    assert set(ink) == {
        "name",
        "models",
        "default_scale",
        "price",
        "description",
        "rank",
        "dtype",
        "status",
        "reason",
        "fused",
    }
    assert ink["fused"] is False  # only a server with `[server] fuse_lora` fuses one
    assert (await lora_api.client.get("/api/v1/loras")).status_code == 401


async def _edit(api: Api, data: dict[str, Any], key: str | None = None) -> Any:
    fields = {"prompt": "a lantern", "model": MODEL, "size": "128x128", "seed": "5"}
    return await api.post(
        "/api/v1/images/edits",
        key=key,
        data={**fields, **data},  # a list value: the field repeated
        files={"image": ("a.png", tiny_png(128, 128), "image/png")},
    )


async def test_multipart_edits_take_a_loras_field(lora_api: Api) -> None:
    import openai

    plain = _image(await _edit(lora_api, {}))
    as_json = _image(await _edit(lora_api, {"loras": '[{"name": "ink", "scale": 0.8}]'}))
    assert as_json != plain
    # What the OpenAI SDK sends for extra_body={"loras": [...]} on images.edit: one field per
    # key, grouped by name (loras[][name]=..., then loras[][scale]=...).
    client = openai.AsyncOpenAI(
        api_key=lora_api.key, base_url="http://pixelrouter.test/api/v1", http_client=lora_api.client
    )
    edited = await client.images.edit(
        model=MODEL,
        image=("a.png", tiny_png(128, 128), "image/png"),
        prompt="a lantern",
        size="128x128",  # type: ignore[arg-type]
        extra_body={"seed": 5, "loras": [{"name": "ink", "scale": 0.8}]},
    )
    assert edited.data and base64.b64decode(edited.data[0].b64_json or "") == as_json
    two = {"loras[][name]": ["ink", "glass"]}
    scaled = {**two, "loras[][scale]": ["0.8", "1"]}
    both = await _edit(lora_api, scaled)
    same = await _edit(
        lora_api, {"loras": '[{"name": "ink", "scale": 0.8}, {"name": "glass", "scale": 1}]'}
    )
    assert _image(both) == _image(same) != as_json
    defaults = _image(await _edit(lora_api, two))  # no scales: each adapter's default
    assert defaults == _image(
        await _edit(lora_api, {"loras": '[{"name": "ink"}, {"name": "glass"}]'})
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"loras": "ink"}, "loras must be a JSON array"),
        ({"loras": '[{"name": "nope"}]'}, "unknown LoRA adapter 'nope'"),
        ({"loras": '[{"name": "ink", "scale": 9}]'}, "scale must be between -4 and 4"),
        ({"loras[][name]": "ink", "loras[][scale]": "strong"}, "scale must be a number"),
        (
            {"loras[][name]": ["ink", "glass"], "loras[][scale]": "1"},
            "give every adapter a scale or none",
        ),
        ({"loras": '[{"name": "ink"}]', "loras[][name]": "glass"}, "not both"),
    ],
)
async def test_a_bad_loras_field_on_an_edit_is_a_400(lora_api: Api, data: Any, says: str) -> None:
    response = await _edit(lora_api, data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["metadata"]["error_type"] == "invalid_request"
    assert says in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def fused_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A demo engine that fused 'ink' at 0.7 (`[server] fuse_lora`); 'glass' registered too."""
    root = tmp_path_factory.mktemp("api-fused")
    registry = LoraRegistry(
        [
            LoraSpec("ink", str(make_adapter(root / "ink", 1)), default_scale=0.7),
            LoraSpec("glass", str(make_adapter(root / "glass", 2))),
        ]
    )
    with demo_engine(loras=registry, fuse_lora="ink") as provider:
        yield provider


async def test_a_fused_server_says_so_and_serves_only_its_adapter(
    tmp_path: Path, fused_provider: Any
) -> None:
    async for api in api_with_its_loras(tmp_path, fused_provider):
        rows = {row["name"]: row for row in (await api.get("/api/v1/loras")).json()["data"]}
        assert rows["ink"]["fused"] is True and rows["ink"]["status"] == "ready"
        assert rows["glass"]["status"] == "refused" and "fused" in rows["glass"]["reason"]
        status = (await api.get("/api/v1/engine/status")).json()["data"]
        assert status["loras"]["fused"] == {"name": "ink", "scale": 0.7}
        variant = _image(await api.post("/api/v1/images", json=_body(model=f"{MODEL}:ink")))
        named = _image(await api.post("/api/v1/images", json=_body(loras=[{"name": "ink"}])))
        assert variant == named
        only = (
            f"serves only {MODEL}:ink (the LoRA adapter 'ink' is fused into its weights at "
            "scale 0.7, so it makes nothing else)"
        )
        for refused, says in (
            (_body(), only),  # the base model
            (_body(loras=[{"name": "ink", "scale": 0.5}]), only),
            (_body(model=f"{MODEL}:ink", loras=[{"name": "glass"}]), "'glass' was refused"),
        ):
            response = await api.post("/api/v1/images", json=refused)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["metadata"]["error_type"] == "invalid_request"
            assert says in error["message"]
