"""The `openai-images` protocol: `/images/generations` and `/images/edits` (SGLang, vLLM-Omni)."""

from __future__ import annotations

import pytest

from pixelrouter.errors import InvalidRequest, ProviderError

from .conftest import make_request, reference
from .fake import b64, decode_image, image_bytes
from .upstreams import API_KEY, OpenAIImagesFake


async def test_generations_one_call_per_image_with_extension_fields() -> None:
    async with OpenAIImagesFake() as fake:
        provider = fake.provider()
        request = make_request(width=64, height=80, n=3, seed=5, steps=6, guidance=3.0)
        try:
            result = await provider.generate(request)
        finally:
            await provider.aclose()
    calls = fake.calls("/images/generations")
    assert len(calls) == 3
    bodies = sorted((c.json() for c in calls), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [5, 6, 7]
    for call, body in zip(calls, bodies, strict=True):
        assert call.headers["authorization"] == f"Bearer {API_KEY}"
        assert body["model"] == "black-forest-labs/FLUX.2-klein-4B"  # the server's HF id
        assert body["n"] == 1 and body["size"] == "64x80"
        assert body["response_format"] == "b64_json"
        assert body["num_inference_steps"] == 6 and body["guidance_scale"] == 3.0
    assert [im.seed for im in result.images] == [5, 6, 7]
    for image in result.images:
        decoded = decode_image(image.data)
        assert decoded.format == "PNG" and decoded.size == (64, 80)
        assert image.media_type == "image/png"


async def test_batch_n_sends_n_in_one_call() -> None:
    async with OpenAIImagesFake() as fake:
        provider = fake.provider(options={"batch_n": True})
        try:
            result = await provider.generate(make_request(width=64, height=64, n=2, seed=9))
        finally:
            await provider.aclose()
    (call,) = fake.calls("/images/generations")
    assert call.json()["n"] == 2 and call.json()["seed"] == 9
    assert [im.seed for im in result.images] == [9, 10]


async def test_without_extensions_only_openai_fields_are_sent() -> None:
    async with OpenAIImagesFake() as fake:
        provider = fake.provider(options={"extensions": False})
        try:
            await provider.generate(make_request(width=64, height=64, steps=4))
        finally:
            await provider.aclose()
    body = fake.calls("/images/generations")[0].json()
    assert set(body) == {"model", "prompt", "n", "size", "response_format"}
    parameters = provider.info.supported_parameters
    assert "seed" not in parameters and "steps" not in parameters and "size" in parameters


@pytest.mark.parametrize(("count", "field"), [(1, "image"), (2, "image[]")])
async def test_references_go_to_edits_as_multipart(count: int, field: str) -> None:
    async with OpenAIImagesFake() as fake:
        provider = fake.provider()
        references = tuple(reference(64 + 16 * k, 64) for k in range(count))
        request = make_request(width=64, height=64, seed=3, references=references)
        try:
            result = await provider.generate(request)
        finally:
            await provider.aclose()
    (call,) = fake.calls("/images/edits")
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    fields, files = call.form()
    assert fields["prompt"] == request.prompt and fields["size"] == "64x64"
    assert fields["seed"] == "3" and fields["response_format"] == "b64_json"
    assert [name for name, _, _ in files] == [field] * count
    assert [decode_image(data).size for _, _, data in files] == [
        (64 + 16 * k, 64) for k in range(count)
    ]
    assert decode_image(result.images[0].data).size == (64, 64)


async def test_a_server_without_edits_does_not_support_references() -> None:
    provider = OpenAIImagesFake().provider(url="http://127.0.0.1:9/v1", options={"edits": False})
    try:
        assert provider.supports(make_request())
        assert not provider.supports(make_request(references=(reference(),)))
        assert "input_references" not in provider.info.supported_parameters
    finally:
        await provider.aclose()


async def test_relative_image_urls_are_downloaded_from_the_server() -> None:
    async with OpenAIImagesFake() as fake:
        fake.url_images = True
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    (download,) = [s for s in fake.seen if s.path.endswith("/content")]
    assert download.headers["authorization"] == f"Bearer {API_KEY}"
    assert decode_image(result.images[0].data).size == (64, 64)


async def test_images_that_arrive_are_delivered_when_others_fail() -> None:
    async with OpenAIImagesFake() as fake:
        fake.seed_faults = {8: "500"}
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=64, n=3, seed=7))
        finally:
            await provider.aclose()
    assert [im.index for im in result.images] == [0, 2]
    assert [im.seed for im in result.images] == [7, 9]
    assert result.failed_images == 1


async def test_when_every_image_fails_a_client_error_wins() -> None:
    async with OpenAIImagesFake() as fake:
        fake.seed_faults = {7: "500", 8: "400"}
        provider = fake.provider()
        try:
            with pytest.raises(InvalidRequest):
                await provider.generate(make_request(width=64, height=64, n=2, seed=7))
            fake.seed_faults = {7: "500", 8: "503"}
            with pytest.raises(ProviderError):
                await provider.generate(make_request(width=64, height=64, n=2, seed=7))
        finally:
            await provider.aclose()


async def test_probe_gets_models_and_status_counts_in_flight() -> None:
    async with OpenAIImagesFake() as fake:
        provider = fake.provider(max_queue=1)
        try:
            assert await provider.probe() is True
            status = provider.status()
        finally:
            await provider.aclose()
    assert fake.seen[0].path == "/v1/models"
    assert status.queue_depth == 0 and status.queue_full is False


async def test_a_png_is_passed_on_as_the_base64_text_the_upstream_sent() -> None:
    """No decode and re-encode on the way through: the text is the upstream's, and it decodes
    to the upstream's PNG byte for byte."""
    async with OpenAIImagesFake() as fake:
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=48, seed=1))
        finally:
            await provider.aclose()
    sent = image_bytes(64, 48, "PNG", color=(0, 100, 200))
    (image,) = result.images
    assert image.b64 == b64(sent)
    assert image.data == sent
    assert (image.width, image.height, image.media_type) == (64, 48, "image/png")


@pytest.mark.parametrize("wrap", [76, 64])
async def test_base64_wrapped_in_lines_is_accepted(wrap: int) -> None:
    """Some servers wrap base64 (MIME style); the lines are joined, the image is the same."""
    sent = image_bytes(64, 64, "PNG", color=(1, 2, 3))
    text = b64(sent)
    wrapped = "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap)) + "\n"
    async with OpenAIImagesFake() as fake:
        fake.b64_override = wrapped
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert result.images[0].data == sent


@pytest.mark.parametrize(
    "bad",
    [
        "iVBORw0KGgo!!!!AAAANSUhEUgAA",  # not base64 at the PNG signature
        "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAPklEQVR4nO3OMQ0AAAjAsOFf9DDB",
        "aGVsbG8gd29ybGQ=é",  # not ASCII
    ],
)
async def test_malformed_or_cut_base64_is_a_provider_error(bad: str) -> None:
    async with OpenAIImagesFake() as fake:
        fake.b64_override = bad
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert caught.value.status == 502
