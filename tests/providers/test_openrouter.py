"""The `openrouter` protocol: chat completions with image output."""

from __future__ import annotations

import base64

import pytest

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import ProviderError
from pixelrouter.providers.openrouter import OpenRouterProvider, ratio_and_tier

from .conftest import make_request, reference
from .fake import decode_image
from .upstreams import API_KEY, OpenRouterFake


def test_only_sizes_a_ratio_and_tier_resolve_to_are_expressible() -> None:
    assert ratio_and_tier(1024, 1024) == ("1:1", "1K")
    assert ratio_and_tier(1360, 768) == ("16:9", "1K")
    assert ratio_and_tier(512, 512) == ("1:1", "0.5K")
    assert ratio_and_tier(2048, 2048) == ("1:1", "2K")
    assert ratio_and_tier(1000, 1000) is None
    assert ratio_and_tier(64, 80) is None


async def test_supports_declares_what_the_chat_api_cannot_say() -> None:
    provider = OpenRouterProvider(OpenRouterFake().config(url="http://127.0.0.1:9/api/v1"))
    try:
        assert provider.supports(make_request(width=1360, height=768))
        assert not provider.supports(make_request(width=64, height=80))
        assert "size" not in provider.info.supported_parameters
        assert "seed" in provider.info.supported_parameters
        assert "steps" not in provider.info.supported_parameters
        with pytest.raises(ProviderError) as caught:
            await provider.generate(make_request(width=64, height=80))
        assert "cannot ask for 64x80" in caught.value.message
    finally:
        await provider.aclose()


async def test_one_chat_call_per_image_with_its_seed() -> None:
    async with OpenRouterFake() as fake:
        provider = fake.provider(
            options={"headers": {"HTTP-Referer": "https://pixelrouter.example", "X-Title": "pr"}}
        )
        request = make_request(
            width=672,
            height=384,
            n=2,
            seed=100,
            steps=4,
            output_format="jpeg",
            references=(reference(80, 80), reference(64, 128)),
        )
        assert ratio_and_tier(672, 384) == ("16:9", "0.5K")
        try:
            result = await provider.generate(request)
        finally:
            await provider.aclose()
    calls = fake.calls("/chat/completions")
    assert sorted(c.json()["seed"] for c in calls) == [100, 101]
    for call in calls:
        assert call.headers["authorization"] == f"Bearer {API_KEY}"
        assert call.headers["x-title"] == "pr"
        body = call.json()
        assert body["model"] == KLEIN_4B.id
        assert body["modalities"] == ["image", "text"]
        assert body["image_config"] == {"aspect_ratio": "16:9", "image_size": "0.5K", "steps": 4}
        (message,) = body["messages"]
        assert message["role"] == "user"
        text, *images = message["content"]
        assert text == {"type": "text", "text": request.prompt}
        sizes = []
        for part in images:
            assert part["type"] == "image_url"
            payload = part["image_url"]["url"].removeprefix("data:image/png;base64,")
            sizes.append(decode_image(base64.b64decode(payload)).size)
        assert sizes == [(80, 80), (64, 128)]
    assert [im.seed for im in result.images] == [100, 101]
    assert [im.index for im in result.images] == [0, 1]
    assert result.prompt_tokens == 9
    for image in result.images:
        decoded = decode_image(image.data)
        assert image.media_type == "image/jpeg"
        assert decoded.format == "JPEG" and decoded.size == (672, 384)  # re-encoded from PNG


async def test_images_sent_as_urls_are_downloaded() -> None:
    async with OpenRouterFake() as fake:
        fake.url_images = True
        provider = fake.provider()
        try:
            result = await provider.generate(make_request())
        finally:
            await provider.aclose()
    (download,) = [s for s in fake.seen if s.path.startswith("/files/")]
    assert download.headers["authorization"] == f"Bearer {API_KEY}"  # same origin
    assert decode_image(result.images[0].data).size == (512, 512)


async def test_a_text_only_answer_says_what_the_model_said() -> None:
    async with OpenRouterFake() as fake:
        fake.image_mode = "no_image"
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request())
        finally:
            await provider.aclose()
    assert "I cannot draw that." in caught.value.message


async def test_probe_gets_models() -> None:
    async with OpenRouterFake() as fake:
        provider = fake.provider()
        try:
            assert await provider.probe() is True
        finally:
            await provider.aclose()
    assert fake.seen[0].path == "/api/v1/models"


async def test_an_image_url_whose_name_resolves_to_loopback_is_not_fetched() -> None:
    """A host name (not the provider's own origin) that resolves to a private address is
    refused where the connection's address is resolved, so DNS rebinding is caught too."""
    async with OpenRouterFake() as fake:
        fake.url_images = True
        fake.url_host = "localhost"  # another origin than 127.0.0.1, resolving to loopback
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError, match="private, loopback or link-local"):
                await provider.generate(make_request())
            trusting = fake.provider(options={"private_image_urls": True})
            try:
                result = await trusting.generate(make_request())
            finally:
                await trusting.aclose()
        finally:
            await provider.aclose()
    assert decode_image(result.images[0].data).size == (512, 512)
    assert sum(s.path.startswith("/files/") for s in fake.seen) == 1  # only the trusted one


async def test_the_public_pool_refuses_a_name_that_resolves_privately_at_connect_time() -> None:
    """The guard against DNS rebinding: the pool's resolver, which gives the addresses the
    connection uses, refuses a name with any private address."""
    from pixelrouter.providers.http import PublicResolver

    resolver = PublicResolver()
    try:
        with pytest.raises(OSError, match="private, loopback or link-local"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
