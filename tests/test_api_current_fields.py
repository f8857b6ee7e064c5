"""The current OpenRouter API beyond the first SPEC: grouping fields stored on the generation
(`session_id`, `trace`, `metadata`), routing preferences of the current SDKs, the sizes and `n`
clients send, and the shapes the SDKs' schemas require (usage details, stream chunks)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

MODEL = "black-forest-labs/flux.2-klein-4b"


def _sizes(body: dict) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in body["data"]]


async def _record(api, response) -> dict:
    gen_id = response.headers["x-generation-id"]
    record = await api.get(f"/api/v1/generation?id={gen_id}")
    assert record.status_code == 200, record.text
    return record.json()["data"]


async def test_session_trace_and_metadata_are_stored_and_returned(api) -> None:
    trace = {"trace_id": "t-1", "span_name": "thumbnails", "custom": "kept"}
    r = await api.post(
        "/api/v1/images",
        json={
            "model": MODEL,
            "prompt": "a kite",
            "size": "64x64",
            "session_id": "session-42",
            "trace": trace,
            "metadata": {"team": "catalogue", "run": "7"},
            "provider": {"require_parameters": True},  # known fields: never "unsupported"
        },
    )
    assert r.status_code == 200, r.text
    record = await _record(api, r)
    assert record["session_id"] == "session-42"
    assert record["trace"] == trace
    assert record["metadata"] == {"team": "catalogue", "run": "7"}
    assert record["ignored_parameters"] == []


async def test_the_session_header_is_used_when_the_body_has_none(api) -> None:
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a boat"}],
        "image_config": {"image_size": "0.5K"},
    }
    r = await api.post("/api/v1/chat/completions", json=chat, headers={"x-session-id": "hdr"})
    assert r.status_code == 200, r.text
    assert (await _record(api, r))["session_id"] == "hdr"
    r = await api.post(
        "/api/v1/chat/completions",
        json={**chat, "session_id": "body"},
        headers={"x-session-id": "hdr"},
    )
    assert (await _record(api, r))["session_id"] == "body"


@pytest.mark.parametrize(
    ("fields", "headers", "message"),
    [
        ({"session_id": "s" * 257}, {}, "at most 256 characters"),
        ({}, {"x-session-id": "s" * 257}, "longer than 256 characters"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, {}, "at most 16 keys"),
        ({"metadata": {"k": "v" * 513}}, {}, "values at most 512"),
        ({"metadata": {"k": 5}}, {}, "metadata"),
        ({"trace": {"trace_id": "x" * 9000}}, {}, "larger than 8192 bytes"),
        ({"provider": {"sort": "fastest"}}, {}, "provider.sort must be one of"),
        ({"provider": {"preferred_max_latency": -1}}, {}, "at least 0"),
    ],
)
async def test_bad_grouping_and_routing_fields_are_400(
    sqlite_api, fields: dict, headers: dict, message: str
) -> None:
    body = {"model": MODEL, "prompt": "x", "size": "64x64", **fields}
    r = await sqlite_api.post("/api/v1/images", json=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["metadata"]["error_type"] == "invalid_request"
    assert message in error["message"]


async def test_current_routing_preferences_are_honoured_or_listed_as_ignored(
    sqlite_api,
) -> None:
    api = sqlite_api
    provider = {
        "sort": {"by": "exacto", "partition": "none"},
        "preferred_max_latency": {"p50": 30, "p90": 60},
        "preferred_min_throughput": 1,
        "quantizations": ["fp32", "bf16"],  # the demo engine runs float32 on the CPU
        "zdr": True,  # a local provider keeps nothing
        "enforce_distillable_text": True,
        "options": {"black-forest-labs": {"steps": 2, "guidance": 1.0, "cache": True}},
    }
    r = await api.post(
        "/api/v1/images",
        json={"model": MODEL, "prompt": "x", "size": "64x64", "provider": provider},
    )
    assert r.status_code == 200, r.text
    record = await _record(api, r)
    assert record["ignored_parameters"] == [
        "provider.enforce_distillable_text",
        "provider.sort",
        "provider.sort.partition",
        "provider.options.black-forest-labs.cache",
    ]
    # A quantization no provider runs leaves none: OpenRouter's "no endpoints found", a 404
    # that no SDK retries (they retry a 503 for up to an hour).
    r = await api.post(
        "/api/v1/images",
        json={"prompt": "x", "size": "64x64", "provider": {"quantizations": ["int4"]}},
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["metadata"]["error_type"] == "not_found"
    assert "quantizations" in r.json()["error"]["message"]


async def test_author_options_reach_the_engine(sqlite_api, demo_provider) -> None:
    """`provider.options["black-forest-labs"]` (what the SDKs let through) sets the steps."""
    api = sqlite_api
    body = {"model": MODEL, "prompt": "steps", "size": "64x64", "seed": 3}
    two = await api.post(
        "/api/v1/images",
        json={**body, "provider": {"options": {"black-forest-labs": {"steps": 2}}}},
    )
    local = await api.post(
        "/api/v1/images", json={**body, "provider": {"options": {"local": {"steps": 2}}}}
    )
    default = await api.post("/api/v1/images", json=body)
    assert two.status_code == local.status_code == default.status_code == 200
    assert two.json()["data"] == local.json()["data"]  # the same steps either way
    assert two.json()["data"] != default.json()["data"]  # 2 steps, not the default 4


@pytest.mark.parametrize(
    ("image_config", "size", "adjustments"),
    [
        ({"aspect_ratio": "2.35:1", "image_size": "0.5K"}, (784, 320), []),
        ({"aspect_ratio": "9:19.5", "image_size": "0.5K"}, (336, 752), []),
        ({"aspect_ratio": "1:8", "image_size": "0.5K"}, (176, 1440), []),
        (
            {"aspect_ratio": "1:1", "image_size": "768"},
            (1024, 1024),
            ["image_config.image_size 768 has no tier of its own: made at 1K"],
        ),
        (
            {"aspect_ratio": "21:9", "image_size": "4K"},
            (3120, 1328),
            ["image_config.image_size 4K is larger than this model makes: made at 2K"],
        ),
    ],
)
async def test_sdk_ratios_and_tiers_resolve_and_record_adjustments(
    sqlite_api, image_config: dict, size: tuple[int, int], adjustments: list[str]
) -> None:
    r = await sqlite_api.post(
        "/api/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "a tall tower"}],
            "image_config": {**image_config, "steps": 1},
        },
    )
    assert r.status_code == 200, r.text
    url = r.json()["choices"][0]["message"]["images"][0]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
    assert image.size == size
    assert (await _record(sqlite_api, r))["adjustments"] == adjustments


async def test_a_ratio_with_no_valid_size_at_the_asked_tier_is_a_400(sqlite_api) -> None:
    r = await sqlite_api.post(
        "/api/v1/images", json={"prompt": "x", "aspect_ratio": "1:8", "resolution": "2K"}
    )
    assert r.status_code == 400
    assert "It works at: 0.5K, 1K" in r.json()["error"]["message"]


async def test_ten_images_in_one_request_are_reserved_and_charged_as_delivered(api) -> None:
    r = await api.post(
        "/api/v1/images",
        json={"model": MODEL, "prompt": "ten", "size": "64x64", "n": 10, "seed": 5},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert _sizes(body) == [(64, 64)] * 10
    assert body["usage"]["cost"] == pytest.approx(0.14)
    assert body["usage"]["completion_tokens"] == 10 * 4096
    record = await _record(api, r)
    assert (record["num_media_completion"], record["total_cost"]) == (10, pytest.approx(0.14))


async def test_usage_details_carry_reasoning_tokens_and_chunks_no_fingerprint(
    sqlite_api,
) -> None:
    api = sqlite_api
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    chat["image_config"] = {"image_size": "0.5K", "steps": 1}
    plain = (await api.post("/api/v1/chat/completions", json=chat)).json()
    assert plain["system_fingerprint"] is None  # required (nullable) in a whole result
    assert plain["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "image_tokens": 4096,
    }
    streamed = await api.post("/api/v1/chat/completions", json={**chat, "stream": True})
    chunks = [
        json.loads(line[6:])
        for line in streamed.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert chunks and all("system_fingerprint" not in chunk for chunk in chunks)
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_router_metadata_when_asked(sqlite_api) -> None:
    api = sqlite_api
    body = {"model": MODEL, "prompt": "x", "size": "64x64"}
    plain = (await api.post("/api/v1/images", json=body)).json()
    assert "openrouter_metadata" not in plain
    asked = await api.post(
        "/api/v1/images", json=body, headers={"X-OpenRouter-Metadata": "enabled"}
    )
    metadata = asked.json()["openrouter_metadata"]
    assert metadata["requested"] == MODEL and metadata["strategy"] == "direct"
    assert metadata["attempt"] == 1
    assert metadata["attempts"] == [{"model": MODEL, "provider": "local", "status": 200}]
    assert metadata["endpoints"] == {
        "total": 1,
        "available": [{"model": MODEL, "provider": "local", "selected": True}],
    }
    chat = await api.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"X-OpenRouter-Metadata": "enabled"},
    )
    assert chat.json()["openrouter_metadata"]["attempts"][0]["status"] == 200
