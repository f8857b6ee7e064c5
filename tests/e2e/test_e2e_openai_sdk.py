"""The official `openai` Python SDK, unchanged, against a real `pixelrouter serve --demo`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import (
    MODEL,
    Seen,
    Server,
    b64_size,
    checked_client,
    data_url_size,
    reference_png,
)

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.e2e

CHAT_IMAGE = {
    "modalities": ["image"],
    "image_config": {"aspect_ratio": "16:9", "image_size": "0.5K"},
}


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def client(server: Server, seen: Seen) -> Iterator[openai.OpenAI]:
    with checked_client(seen) as http_client:
        yield openai.OpenAI(
            base_url=server.api, api_key=server.key, http_client=http_client, max_retries=0
        )


def test_images_generate_two_pngs_with_usage(client: openai.OpenAI, seen: Seen) -> None:
    result = client.images.generate(
        model=MODEL,
        prompt="a lighthouse at dusk",
        size="512x512",
        n=2,
        response_format="b64_json",
    )
    assert [b64_size(d.b64_json) for d in result.data] == [(512, 512), (512, 512)]
    assert result.usage is not None
    assert result.usage.output_tokens == 2 * 4096  # 4096 image tokens per (started) megapixel
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    assert result.usage.input_tokens_details.text_tokens == result.usage.input_tokens
    assert result.usage.model_extra["cost"] == pytest.approx(0.028)  # OpenRouter's field too
    assert result.size == "512x512" and result.output_format == "png"
    assert seen.responses[-1][0] == 200


def test_images_edit_with_a_reference(client: openai.OpenAI) -> None:
    result = client.images.edit(
        model=MODEL,
        image=[reference_png(320, 320), ("second.png", reference_png(256, 192), "image/png")],
        prompt="make it look like a watercolour",
        size="256x256",
    )
    assert [b64_size(d.b64_json) for d in result.data] == [(256, 256)]
    assert result.usage is not None and result.usage.output_tokens == 4096


def test_images_generate_stream_yields_completed_events(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        model=MODEL, prompt="a red kite", size="256x256", n=2, stream=True
    )
    events = list(stream)
    assert [type(e) for e in events] == [openai.types.ImageGenCompletedEvent] * 2
    for event in events:
        assert event.type == "image_generation.completed"
        assert event.size == "256x256" and event.output_format == "png"
        assert event.usage.output_tokens == 4096  # its own image's: the events add up
        assert b64_size(event.b64_json) == (256, 256)
    assert sum(e.usage.output_tokens for e in events) == 2 * 4096


def test_chat_completion_with_image_output(client: openai.OpenAI, seen: Seen) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a fox in the snow"}],
        extra_body=CHAT_IMAGE,
    )
    assert completion.id == seen.responses[-1][1]  # the body's id is the X-Generation-Id
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    message = choice.message.model_dump()
    assert message["role"] == "assistant"
    images = message["images"]  # an extra field: the SDK keeps it in model_extra
    assert images == choice.message.model_extra["images"]
    assert [data_url_size(im["image_url"]["url"]) for im in images] == [(672, 384)]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4096
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.model_extra["cost"] == pytest.approx(0.014)


def test_chat_completion_stream_with_image_output(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a fox in the snow"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=CHAT_IMAGE,
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("gen-")
    assert chunks[0].choices[0].delta.role == "assistant"
    images = [
        im for c in chunks for ch in c.choices for im in (ch.delta.model_dump().get("images") or [])
    ]
    assert [data_url_size(im["image_url"]["url"]) for im in images] == [(672, 384)]
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4096
    assert last.usage.model_extra["cost"] == pytest.approx(0.014)


def test_models_list(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert MODEL in [m.id for m in models]
    klein = next(m for m in models if m.id == MODEL)
    assert klein.created == 1768348800
    assert klein.model_extra["architecture"]["output_modalities"] == ["image"]


def test_invalid_size_is_a_bad_request_naming_the_nearest_size(
    client: openai.OpenAI, seen: Seen
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model=MODEL, prompt="x", size="1000x1000")  # type: ignore[arg-type]
    error = raised.value
    assert error.status_code == 400
    assert "992x992" in error.message
    assert isinstance(error.body, dict)
    assert error.body["metadata"]["nearest_valid_size"] == "992x992"
    assert seen.responses[-1][0] == 400  # error responses carry the headers too


def test_bad_key_is_an_authentication_error(server: Server, seen: Seen) -> None:
    with checked_client(seen) as http_client:
        bad = openai.OpenAI(
            base_url=server.api,
            api_key="sk-pr-v1-" + "0" * 64,
            http_client=http_client,
            max_retries=0,
        )
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.images.generate(model=MODEL, prompt="x", size="256x256")
        assert raised.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_management_key_cannot_generate(server: Server, seen: Seen) -> None:
    with checked_client(seen) as http_client:
        admin = openai.OpenAI(
            base_url=server.api, api_key=server.admin_key, http_client=http_client, max_retries=0
        )
        with pytest.raises(openai.PermissionDeniedError) as raised:
            admin.images.generate(model=MODEL, prompt="x", size="256x256")
        assert raised.value.status_code == 403
