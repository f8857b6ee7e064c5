"""The `pixelrouter` protocol: another instance's Image API, its engine status and `/ready`."""

from __future__ import annotations

import base64

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.routing.router import Router

from .conftest import make_request, reference
from .fake import Reply, decode_image
from .upstreams import API_KEY, PixelrouterFake


async def test_request_is_forwarded_whole_and_images_come_back() -> None:
    async with PixelrouterFake() as fake:
        provider = fake.worker()
        request = make_request(
            width=64,
            height=80,
            n=2,
            seed=41,
            steps=3,
            guidance=2.5,
            output_format="webp",
            output_compression=70,
            references=(reference(96, 64),),
            batching=False,
        )
        try:
            result = await Router([provider]).route(request)  # it names the serving provider
        finally:
            await provider.aclose()
    (call,) = fake.calls("/images")
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    body = call.json()
    assert body["model"] == KLEIN_4B.id
    assert body["size"] == "64x80" and body["n"] == 2 and body["seed"] == 41
    assert body["steps"] == 3 and body["guidance"] == 2.5
    assert body["output_format"] == "webp" and body["output_compression"] == 70
    assert body["provider"] == {"options": {"local": {"batching": False}}}
    (ref,) = body["input_references"]
    header, _, payload = ref["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64"
    assert decode_image(base64.b64decode(payload)).size == (96, 64)

    assert result.provider_slug == "fake-pixelrouter" and result.provider_name == "Fake pixelrouter"
    assert result.model == KLEIN_4B.id and result.request_id == request.id
    assert result.prompt_tokens == 11 and result.failed_images == 0
    assert [im.seed for im in result.images] == [41, 42]
    for image in result.images:
        assert image.media_type == "image/webp"
        decoded = decode_image(image.data)
        assert decoded.format == "WEBP" and decoded.size == (64, 80)


async def test_client_preferences_are_not_forwarded() -> None:
    async with PixelrouterFake() as fake:
        provider = fake.worker(upstream_model="black-forest-labs/flux.2-klein-4b-20260114")
        try:
            await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    body = fake.calls("/images")[0].json()
    assert "provider" not in body and "input_references" not in body
    assert body["model"] == "black-forest-labs/flux.2-klein-4b-20260114"


async def test_refresh_status_reads_the_workers_queue() -> None:
    async with PixelrouterFake() as fake:
        provider = fake.worker(max_queue=3)
        try:
            before = provider.status()
            status = await provider.refresh_status()
        finally:
            await provider.aclose()
    assert before.queue_depth == 0 and before.polled_at is None
    (call,) = fake.calls("/engine/status")
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert status == provider.status()
    assert status.queue_depth == 3 and status.running_batch == 2
    assert status.estimated_wait_s == 1.5
    assert status.queue_full is True  # 3 queued, max_queue 3
    assert status.error is None and status.state == "ready"
    assert provider.readiness() == (True, "ok")


async def test_a_worker_that_cannot_report_is_not_ready() -> None:
    async with PixelrouterFake() as fake:
        fake.engine_status = Reply(503, {"error": {"message": "This server runs no engine."}})
        provider = fake.worker()
        try:
            status = await provider.refresh_status()
        finally:
            await provider.aclose()
    assert status.state == "unreachable" and "no engine" in (status.error or "")
    ready, reason = provider.readiness()
    assert not ready and "no engine" in reason


async def test_a_worker_that_says_not_ready_is_not_ready() -> None:
    async with PixelrouterFake() as fake:
        fake.engine_status = Reply(
            200, {"data": {"state": "loading", "queue_depth": 0, "ready": False, "reason": "load"}}
        )
        provider = fake.worker()
        try:
            await provider.refresh_status()
        finally:
            await provider.aclose()
    assert provider.readiness() == (False, "the worker is not ready: load")


async def test_probe_asks_the_workers_ready_endpoint() -> None:
    async with PixelrouterFake() as fake:
        provider = fake.worker()
        try:
            assert await provider.probe() is True
            fake.ready = Reply(503, {"error": {"message": "not ready"}})
            assert await provider.probe() is False
        finally:
            await provider.aclose()
    assert [s.path for s in fake.seen] == ["/ready", "/ready"]


async def test_probe_of_an_unreachable_worker_is_false() -> None:
    async with PixelrouterFake() as fake:
        provider = fake.worker()
    try:
        assert await provider.probe() is False  # the server is gone
    finally:
        await provider.aclose()


async def test_fewer_images_than_asked_are_delivered_as_partial() -> None:
    async with PixelrouterFake() as fake:
        fake.images_cap = 1
        provider = fake.worker()
        try:
            result = await provider.generate(make_request(width=64, height=64, n=3))
        finally:
            await provider.aclose()
    assert len(result.images) == 1 and result.failed_images == 2
    assert result.images[0].seed == 7
