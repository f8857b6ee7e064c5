"""Every error a user can cause so far: status, `error.code`, `error_type` and a useful message."""

from __future__ import annotations

import json

import pytest

from helpers import png_data_url
from pixelrouter.keys import generate_key


def assert_error(response, status: int, error_type: str, words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["metadata"]["error_type"] == error_type
    assert words.lower() in error["message"].lower(), error["message"]
    assert "Traceback" not in response.text
    assert response.headers["x-generation-id"].startswith("gen-")
    return error


async def test_missing_malformed_and_unknown_keys_are_401(api) -> None:
    body = {"prompt": "x", "size": "256x256"}
    r = await api.client.post("/api/v1/images", json=body)
    assert_error(r, 401, "authentication", "missing api key")
    r = await api.client.post("/api/v1/images", json=body, headers={"Authorization": "Bearer nope"})
    assert_error(r, 401, "authentication", "format")
    r = await api.post("/api/v1/images", key=generate_key(), json=body)
    assert_error(r, 401, "authentication", "invalid api key")
    r = await api.client.get("/api/v1/models")
    assert_error(r, 401, "authentication", "missing api key")


async def test_key_kinds_are_separate(api) -> None:
    r = await api.post("/api/v1/images", key=api.admin_key, json={"prompt": "x"})
    assert_error(r, 403, "permission_denied", "management keys cannot generate")
    r = await api.post("/api/v1/keys", json={"name": "sneaky"})
    assert_error(r, 403, "permission_denied", "management key")
    r = await api.get("/api/v1/keys")
    assert_error(r, 403, "permission_denied", "management key")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "x", "size": "1000x1000"}, "nearest valid size is 992x992"),
        ({"prompt": "x", "size": "5000x5000"}, "nearest valid size is 2048x2048"),
        ({"prompt": "x", "size": "1024x1024", "aspect_ratio": "16:9"}, "conflicts"),
        ({"prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"prompt": "x", "resolution": "8K"}, "resolution"),
        ({"prompt": "x", "n": 11}, "n must be between 1 and 10"),
        ({"prompt": "x", "n": 0}, "n must be between 1 and 10"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x", "background": "transparent"}, "transparent"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "output_compression": 101}, "output_compression"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "n": "many"}, "n"),
        ({}, "prompt is required"),
        (
            {"prompt": "x", "provider": {"require_parameters": True}, "temperature": 1},
            "temperature",
        ),
        ({"prompt": "x", "provider": {"sort": "fastest"}}, "provider.sort"),
    ],
)
async def test_invalid_image_requests_are_400(api, body, words) -> None:
    r = await api.post("/api/v1/images", json=body)
    assert_error(r, 400, "invalid_request", words)


async def test_invalid_json_is_400(api) -> None:
    r = await api.post(
        "/api/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request", "not valid json")


async def test_chat_specific_errors(api) -> None:
    r = await api.post("/api/v1/chat/completions", json={"messages": []})
    assert_error(r, 400, "invalid_request", "messages")
    r = await api.post(
        "/api/v1/chat/completions",
        json={"messages": [{"role": "system", "content": "hi"}]},
    )
    assert_error(r, 400, "invalid_request", "no user message")
    r = await api.post(
        "/api/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "modalities": ["text"]},
    )
    assert_error(r, 400, "invalid_request", "only outputs images")
    r = await api.post(
        "/api/v1/chat/completions",
        json={"model": "openai/gpt-5", "messages": [{"role": "user", "content": "x"}]},
    )
    assert_error(r, 404, "not_found", "not served here")


@pytest.mark.parametrize(
    ("url", "status", "error_type", "words"),
    [
        ("data:image/png;base64,%%%%", 400, "invalid_image", "malformed"),
        ("data:image/png;base64," + "QUJD" * 10, 400, "unsupported_image_format", "png, jpeg"),
        (png_data_url(32, 32), 400, "image_too_small", "at least 64"),
        ("https://example.com/cat.png", 400, "invalid_request", "disabled"),
    ],
)
async def test_bad_reference_images(api, url, status, error_type, words) -> None:
    refs = [{"type": "image_url", "image_url": {"url": url}}]
    r = await api.post("/api/v1/images", json={"prompt": "x", "input_references": refs})
    assert_error(r, status, error_type, words)


async def test_too_many_references(api) -> None:
    refs = [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 5
    r = await api.post("/api/v1/images", json={"prompt": "x", "input_references": refs})
    assert_error(r, 400, "invalid_request", "at most 4")


async def test_openai_specific_errors(api) -> None:
    r = await api.post(
        "/api/v1/images/generations",
        json={"prompt": "x", "response_format": "url", "stream": True},
    )
    assert_error(r, 400, "invalid_request", "b64_json")
    r = await api.post(
        "/api/v1/images/generations", json={"prompt": "x", "response_format": "gif-url"}
    )
    assert_error(r, 400, "invalid_request", "'b64_json' or 'url'")
    r = await api.post("/api/v1/images/edits", data={"prompt": "x"}, files={"other": b"123"})
    assert_error(r, 400, "invalid_request", "at least one 'image'")
    r = await api.post("/api/v1/images/edits", json={"prompt": "x"})
    assert_error(r, 400, "invalid_request", "multipart")


async def test_body_over_the_limit_is_413(api) -> None:
    big = b'{"prompt": "' + b"x" * (65 * 1024 * 1024) + b'"}'
    r = await api.post("/api/v1/images", content=big, headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large", "larger than")


async def test_unknown_generation_and_route(api) -> None:
    r = await api.get("/api/v1/generation?id=gen-123-nope")
    assert_error(r, 404, "not_found", "not found")
    r = await api.get("/api/v1/no-such-thing")
    assert_error(r, 404, "not_found", "no such endpoint")
    r = await api.client.delete("/health")
    assert_error(r, 405, "invalid_request", "method not allowed")


async def test_generation_of_another_key_reads_as_unknown(api) -> None:
    r = await api.post("/api/v1/images", json={"prompt": "x", "size": "128x128"})
    generation_id = r.headers["x-generation-id"]
    other = (await api.post("/api/v1/keys", key=api.admin_key, json={"name": "other"})).json()[
        "key"
    ]
    assert_error(
        await api.get(f"/api/v1/generation?id={generation_id}", key=other), 404, "not_found", ""
    )
    admin_view = await api.get(f"/api/v1/generation?id={generation_id}", key=api.admin_key)
    assert admin_view.status_code == 200


async def test_chunked_body_over_the_limit_is_413(api) -> None:
    async def chunks():
        for _ in range(70):
            yield b"x" * (1024 * 1024)

    r = await api.post(
        "/api/v1/images", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "payload_too_large", "larger than")


async def test_a_chunked_body_within_the_limit_works(api) -> None:
    async def chunks():
        yield b'{"prompt": "chunked", '
        yield b'"size": "64x64"}'

    r = await api.post(
        "/api/v1/images", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["prompt", "user"])
async def test_text_that_is_not_unicode_is_a_400(api, field) -> None:
    body = {"prompt": "x", "size": "64x64", field: "a \ud800 b"}
    r = await api.post(
        "/api/v1/images",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request", "unicode")


def test_every_error_type_a_client_can_see_is_openrouters() -> None:
    """Every `error_type` in the code (class attributes and literals) is one of OpenRouter's
    canonical values, so SDKs that switch on it find what they know."""
    import re
    from pathlib import Path

    from pixelrouter.errors import ERROR_TYPES

    source = Path(__file__).resolve().parents[1] / "src" / "pixelrouter"
    pattern = re.compile(r"""error_type(?::\s*str)?\s*=\s*"([a-z_]+)\"""")
    found = {
        (path.name, value)
        for path in source.rglob("*.py")
        for value in pattern.findall(path.read_text())
    }
    assert len(found) > 20  # the pattern finds what it should
    assert {(name, value) for name, value in found if value not in ERROR_TYPES} == set()


NUL = "\x00"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/images", {"prompt": "x", "size": "64x64", "user": f"u{NUL}1"}),
        ("/api/v1/images", {"prompt": "x", "size": "64x64", f"odd{NUL}field": 1}),
        ("/api/v1/images", {"prompt": f"a{NUL}b", "size": "64x64"}),
        ("/api/v1/images", {"prompt": "x", "size": "64x64", "metadata": {"k": f"v{NUL}"}}),
        (
            "/api/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "user": f"u{NUL}"},
        ),
        ("/api/v1/images/generations", {"prompt": "x", "size": "64x64", "user": f"{NUL}"}),
    ],
)
async def test_nul_in_a_generation_body_is_a_400_on_both_backends(api, path, body) -> None:
    """PostgreSQL cannot store NUL: refused at the edge, before any work, the same on both
    backends (before, an unlimited key's image was delivered and its record then failed)."""
    r = await api.post(
        path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "invalid_request", "NUL")


async def test_nul_in_key_names_and_urls_is_a_400_on_both_backends(api) -> None:
    admin = api.admin_key
    r = await api.post(
        "/api/v1/keys",
        key=admin,
        content=json.dumps({"name": f"team{NUL}a"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request", "NUL")
    for url in (
        "/api/v1/generation?id=gen-1%00x",
        "/api/v1/keys/abc%00def",
        "/api/v1/activity?api_key_hash=%00",
    ):
        r = await api.get(url, key=admin)
        assert_error(r, 400, "invalid_request", "NUL")
    # The server is fine afterwards, on both backends.
    r = await api.post("/api/v1/images", json={"prompt": "x", "size": "64x64"})
    assert r.status_code == 200, r.text


async def test_a_prompt_longer_than_the_context_in_tokens_is_a_400(
    sqlite_api, demo_provider
) -> None:
    """Counted with the model's tokenizer (not estimated from characters), before any work."""
    prompt = "🦊 " * 40_000  # 80,000 characters, within the character bound, many more tokens
    tokens = demo_provider.count_prompt_tokens(prompt)
    assert tokens is not None and tokens > 67_344
    r = await sqlite_api.post("/api/v1/images", json={"prompt": prompt, "size": "64x64"})
    assert_error(r, 400, "context_length_exceeded", f"{tokens} tokens")
    assert r.json()["error"]["metadata"]["context_length"] == 67_344
    # A long prompt within the context still works.
    fits = "a lighthouse " * 4_000
    r = await sqlite_api.post("/api/v1/images", json={"prompt": fits, "size": "64x64"})
    assert r.status_code == 200, r.text
