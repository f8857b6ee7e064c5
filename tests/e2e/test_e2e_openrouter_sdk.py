"""The official `openrouter` Python SDK (1.3.x), unchanged, against a real server.

The SDK validates every response with its pydantic models (SPEC §9), so each call passing here
means the server's shape satisfies the SDK's required fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from .support import (
    MODEL,
    RecordingTransport,
    Seen,
    Server,
    b64_size,
    checked_client,
    data_url_size,
    image_size,
    sse_payloads,
)

openrouter = pytest.importorskip("openrouter")
from openrouter import OpenRouter, components, errors, operations, utils  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    # The SDK deprecates its own model of GET /key's `rate_limit` (a field it still requires).
    pytest.mark.filterwarnings("ignore:.*DEPRECATED.*:DeprecationWarning"),
]

AUTHOR, SLUG = MODEL.split("/")
IMAGE_CONFIG = {"aspect_ratio": "16:9", "image_size": "0.5K"}
NO_RETRIES = utils.RetryConfig("none", utils.BackoffStrategy(1, 1, 1.0, 1), False)


@dataclass
class Clients:
    user: OpenRouter  # the inference key
    admin: OpenRouter  # the management key
    seen: Seen
    wire: RecordingTransport  # the user client's response bodies, as read

    def make(self, server: Server, key: str) -> OpenRouter:
        return _sdk(server, key, self.seen)


def _sdk(server: Server, key: str, seen: Seen, wire: RecordingTransport | None = None):
    return OpenRouter(
        api_key=key,
        server_url=server.api,
        client=checked_client(seen, wire),
        retry_config=NO_RETRIES,
        timeout_ms=120_000,
    )


@pytest.fixture
def sdk(server: Server) -> Iterator[Clients]:
    seen, wire = Seen(), RecordingTransport()
    clients = Clients(
        _sdk(server, server.key, seen, wire), _sdk(server, server.admin_key, seen), seen, wire
    )
    yield clients
    for client in (clients.user, clients.admin):
        client.sdk_configuration.client.close()


def test_chat_send_with_image_output(sdk: Clients) -> None:
    result = sdk.user.chat.send(
        model=MODEL,
        messages=[{"role": "user", "content": "a fox in the snow"}],
        modalities=["image"],
        image_config=IMAGE_CONFIG,
        seed=3,
    )
    assert isinstance(result, components.ChatResult)
    assert result.id == sdk.seen.responses[-1][1]
    assert result.model == MODEL and result.object == "chat.completion"
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert [data_url_size(im.image_url.url) for im in choice.message.images] == [(672, 384)]
    assert result.usage.completion_tokens == 4096
    assert result.usage.total_tokens == result.usage.prompt_tokens + 4096
    assert result.usage.cost == pytest.approx(0.014)

    # The chat response's id is the generation id; its record validates too.
    record = sdk.user.generations.get_generation(id=result.id)
    assert isinstance(record, components.GenerationResponse)
    data = record.data
    assert data.id == result.id and data.model == MODEL
    assert data.total_cost == pytest.approx(0.014)
    assert data.native_tokens_completion_images == 4096
    assert data.num_media_completion == 1
    assert data.streamed is False and data.cancelled is False
    assert data.finish_reason == "stop"
    assert data.provider_responses and data.provider_responses[0].status == 200
    # A management key may read it as well.
    assert sdk.admin.generations.get_generation(id=result.id).data.id == result.id


def test_chat_send_stream_with_image_output(sdk: Clients) -> None:
    stream = sdk.user.chat.send(
        model=MODEL,
        messages=[{"role": "user", "content": "a fox in the snow"}],
        modalities=["image"],
        image_config=IMAGE_CONFIG,
        stream=True,
    )
    with stream as events:
        chunks = list(events)
    assert all(isinstance(c, components.ChatStreamChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("gen-")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4096 and last.usage.cost == pytest.approx(0.014)

    # SDK limitation: openrouter 1.3.x's `ChatStreamDelta` has no `images` field and its models
    # ignore extra fields, so the streamed images never reach the caller through the SDK. They
    # are on the wire, in the chunk the SDK parsed: check them in the bytes it read.
    assert not any("images" in ch.delta.model_dump() for c in chunks for ch in c.choices)
    wire_chunks = [p for p in sse_payloads(sdk.wire.bodies[-1].decode()) if p != "[DONE]"]
    assert len(wire_chunks) == len(chunks)
    images = [
        im for p in wire_chunks for ch in p["choices"] for im in ch["delta"].get("images", [])
    ]
    assert [data_url_size(im["image_url"]["url"]) for im in images] == [(672, 384)]


def test_images_generate(sdk: Clients) -> None:
    result = sdk.user.images.generate(model=MODEL, prompt="a red kite", size="256x256", n=2)
    assert isinstance(result, components.ImageGenerationResponse)
    assert [b64_size(d.b64_json) for d in result.data] == [(256, 256), (256, 256)]
    assert all(d.media_type == "image/png" for d in result.data)
    assert result.usage.completion_tokens == 2 * 4096
    assert result.usage.completion_tokens_details.image_tokens == 2 * 4096
    assert result.usage.cost == pytest.approx(0.028)

    # A tier as `size` combines with the ratio (the SDK's typed `resolution` tiers are
    # OpenRouter's "512", "768", "1K", "1.5K", "2K", "4K"; "0.5K" works but warns).
    tiered = sdk.user.images.generate(
        model=MODEL, prompt="a red kite", size="0.5K", aspect_ratio="16:9"
    )
    assert [b64_size(d.b64_json) for d in tiered.data] == [(672, 384)]


def test_images_generate_stream(sdk: Clients) -> None:
    stream = sdk.user.images.generate(
        model=MODEL, prompt="a red kite", size="256x256", n=2, stream=True
    )
    with stream as events:
        received = list(events)
    assert [type(e) for e in received] == [components.ImageGenCompletedEvent] * 2
    assert [e.type for e in received] == ["image_generation.completed"] * 2
    assert [b64_size(e.b64_json) for e in received] == [(256, 256), (256, 256)]
    # The request's usage once, on the last event, so summing events never double-counts.
    assert received[0].usage is None
    assert received[-1].usage is not None and received[-1].usage.cost == pytest.approx(0.028)
    assert sdk.wire.bodies[-1].decode().rstrip().endswith("data: [DONE]")


def test_catalogue(sdk: Clients) -> None:
    models = sdk.user.models.list()
    assert isinstance(models, operations.GetModelsResponse)
    assert [m.id for m in models.result.data] == [MODEL]
    assert models.result.total_count == 1 and models.result.links.next is None
    assert models.next() is None
    model = models.result.data[0]
    assert model.canonical_slug == "black-forest-labs/flux.2-klein-4b-20260114"
    assert model.architecture.output_modalities == ["image"]
    assert model.pricing.image_output == "0.00000341796875"
    assert model.links.details == f"/api/v1/models/{MODEL}/endpoints"
    assert [m.id for m in sdk.user.models.list(output_modalities="image").result.data] == [MODEL]

    endpoints = sdk.user.endpoints.list(author=AUTHOR, slug=SLUG).data
    assert endpoints.id == MODEL and endpoints.endpoints
    endpoint = endpoints.endpoints[0]
    assert endpoint.model_id == MODEL and endpoint.status == 0
    assert endpoint.pricing.image_output == "0.00000341796875"

    image_models = sdk.user.images.list_models().data
    assert [m.id for m in image_models] == [MODEL]
    assert image_models[0].endpoints == f"/api/v1/images/models/{MODEL}/endpoints"

    image_endpoints = sdk.user.images.list_model_endpoints(author=AUTHOR, slug=SLUG)
    assert image_endpoints.id == MODEL
    pricing = image_endpoints.endpoints[0].pricing
    assert [(p.unit, p.cost_usd, p.variant) for p in pricing] == [
        ("megapixel", 0.014, None),
        ("megapixel", 0.001, "additional"),
    ]


def test_keys_credits_and_billing(server: Server, sdk: Clients) -> None:
    current = sdk.user.api_keys.get_current_key_metadata().data
    assert current.is_management_key is False and current.label.startswith("sk-pr-v1-")
    assert sdk.admin.api_keys.get_current_key_metadata().data.is_management_key is True

    created = sdk.admin.api_keys.create(name="e2e-billing", limit=1.0, limit_reset="monthly")
    assert isinstance(created, operations.CreateKeysResponse)
    key_hash = created.data.hash
    assert created.key.startswith("sk-pr-v1-") and len(created.key) == len("sk-pr-v1-") + 64
    assert created.data.limit == 1.0 and created.data.limit_remaining == 1.0
    assert created.data.limit_reset == "monthly" and created.data.disabled is False

    assert key_hash in [k.hash for k in sdk.admin.api_keys.list().data]
    assert sdk.admin.api_keys.get(hash=key_hash).data.name == "e2e-billing"

    # The new key generates one 256x256 image ($0.014) and sees it on GET /key.
    spender = sdk.make(server, created.key)
    spent = spender.images.generate(model=MODEL, prompt="a coin", size="256x256")
    assert [b64_size(d.b64_json) for d in spent.data] == [(256, 256)]
    own = spender.api_keys.get_current_key_metadata().data
    assert own.usage == pytest.approx(0.014)
    assert own.limit == 1.0 and own.limit_remaining == pytest.approx(0.986)

    updated = sdk.admin.api_keys.update(hash=key_hash, name="e2e-off", disabled=True).data
    assert updated.name == "e2e-off" and updated.disabled is True
    with pytest.raises(errors.UnauthorizedResponseError):
        spender.images.generate(model=MODEL, prompt="a coin", size="256x256")

    credits = sdk.admin.credits.get_credits().data
    assert credits.total_credits >= 1.0 and credits.total_usage >= 0.014

    deleted = sdk.admin.api_keys.delete(hash=key_hash)
    assert isinstance(deleted, operations.DeleteKeysResponse)
    assert deleted.DELETED is True  # the SDK's name for the `deleted` field
    with pytest.raises(errors.NotFoundResponseError):
        sdk.admin.api_keys.get(hash=key_hash)
    spender.sdk_configuration.client.close()


def test_errors_are_typed(server: Server, sdk: Clients) -> None:
    with pytest.raises(errors.BadRequestResponseError) as bad_size:
        sdk.user.images.generate(model=MODEL, prompt="x", size="1000x1000")
    assert bad_size.value.status_code == 400
    assert "992x992" in bad_size.value.data.error.message
    assert bad_size.value.data.error.metadata["nearest_valid_size"] == "992x992"

    with pytest.raises(errors.ForbiddenResponseError):
        sdk.admin.images.generate(model=MODEL, prompt="x", size="256x256")
    with pytest.raises(errors.ForbiddenResponseError):
        sdk.user.credits.get_credits()
    with pytest.raises(errors.NotFoundResponseError):
        sdk.user.generations.get_generation(id="gen-0-doesnotexist")
    with pytest.raises(errors.UnauthorizedResponseError):
        sdk.make(server, "sk-pr-v1-" + "0" * 64).chat.send(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    # Every one of those error responses carried the headers (checked by the client hook).
    assert [status for status, _ in sdk.seen.responses] == [400, 403, 403, 404, 401]
    json.dumps(sdk.seen.responses)  # nothing odd recorded


def test_batch_calls(sdk: Clients) -> None:
    """The SDK's `batch` module: submit, poll, list (paged), delete. Image work sent as chat
    bodies validates as the SDK's chat-completion member of a result's `body` union, with the
    images as URLs (Image API results have no member of that union: tests/test_batches.py)."""
    bodies = [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"a lantern, take {i}"}],
            "modalities": ["image"],
            "image_config": IMAGE_CONFIG,
            "seed": i,
        }
        for i in range(3)
    ]
    created = sdk.user.batch.create_batches(
        endpoint="/v1/chat/completions",
        model=MODEL,
        requests=[{"custom_id": f"lantern-{i}", "body": body} for i, body in enumerate(bodies)],
    )
    assert isinstance(created, components.BatchObject)
    assert created.status == "in_progress" and created.request_counts.total == 3
    deadline = time.monotonic() + 120
    batch = sdk.user.batch.get_batches(id=created.id)
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = sdk.user.batch.get_batches(id=created.id)
    assert isinstance(batch, components.BatchObject)
    assert batch.status == "completed" and batch.finalized_at is not None
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 0
    assert batch.usage is not None and batch.usage.cost == pytest.approx(3 * 0.014)
    results = sorted(batch.results or [], key=lambda r: r.custom_id)
    assert [r.custom_id for r in results] == ["lantern-0", "lantern-1", "lantern-2"]
    for result in results:
        assert result.error is None and result.response is not None
        assert result.response.status_code == 200
        body = result.response.body
        images = body.choices[0].message.images  # the chat-completion member of the union
        url = images[0].image_url.url
        assert url.startswith("http") and "/api/v1/files/" in url
        assert image_size(httpx.get(url, timeout=30).content) == (672, 384)
    page = sdk.user.batch.list(limit=1)
    assert page is not None and page.result.object == "list"
    assert page.result.data[0].id == created.id and page.result.data[0].results is None
    done = sdk.user.batch.list(limit=10, status=["completed"])
    assert created.id in [b.id for b in done.result.data]
    deleted = sdk.user.batch.delete(id=created.id)
    assert isinstance(deleted, components.BatchDeletedObject)
    assert deleted.id == created.id and deleted.deletion.openrouter == "deleted"
    with pytest.raises(errors.BatchErrorResponse) as missing:
        sdk.user.batch.get_batches(id=created.id)
    assert missing.value.status_code == 404 and "No batch" in missing.value.message
