"""The `bfl` protocol: submit, poll the polling URL with backoff, download the sample."""

from __future__ import annotations

import base64
import time

import pytest

from pixelrouter.errors import InvalidRequest, ProviderError

from .conftest import make_request, reference
from .fake import Action, FakeUpstream, Reply, Seen, decode_image
from .upstreams import API_KEY, BFLFake


async def test_one_job_per_image_polled_until_ready() -> None:
    async with FakeUpstream(lambda s: Reply(404)) as delivery, BFLFake(delivery) as fake:
        fake.pending_polls = 2
        provider = fake.provider(options={"safety_tolerance": 2})
        request = make_request(
            width=64,
            height=80,
            n=2,
            seed=20,
            output_format="webp",
            references=(reference(64, 64), reference(80, 64)),
        )
        try:
            result = await provider.generate(request)
        finally:
            await provider.aclose()
    submissions = fake.calls("/flux-2-klein-4b")
    assert len(submissions) == 2
    bodies = sorted((s.json() for s in submissions), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [20, 21]
    for submission, body in zip(submissions, bodies, strict=True):
        assert submission.headers["x-key"] == API_KEY
        assert "authorization" not in submission.headers
        assert body["width"] == 64 and body["height"] == 80
        assert body["output_format"] == "png" and body["safety_tolerance"] == 2
        assert body["prompt"] == request.prompt
        sizes = [
            decode_image(base64.b64decode(body[k])).size for k in ("input_image", "input_image_2")
        ]
        assert sizes == [(64, 64), (80, 64)]
        assert "input_image_3" not in body
    polls = fake.calls("/get_result")
    assert len(polls) == 6  # two Pending and one Ready per job
    assert all(p.headers["x-key"] == API_KEY for p in polls)
    # The sample lives on another host: the key never goes there.
    assert len(delivery.seen) == 2
    assert all("x-key" not in s.headers for s in delivery.seen)
    assert [im.seed for im in result.images] == [20, 21]
    for image in result.images:
        decoded = decode_image(image.data)
        assert decoded.format == "WEBP" and decoded.size == (64, 80)


async def test_upstream_model_names_the_endpoint() -> None:
    async with BFLFake() as fake:
        provider = fake.provider(upstream_model="flux-2-klein-9b")
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert fake.seen[0].path == "/v1/flux-2-klein-9b"
    assert "HTTP 404" in caught.value.message


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
async def test_moderation_is_the_clients_outcome(status: str) -> None:
    async with BFLFake() as fake:
        fake.final_status = status
        provider = fake.provider()
        try:
            with pytest.raises(InvalidRequest) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert not isinstance(caught.value, ProviderError)
    assert caught.value.error_type == "content_policy_violation" and status in caught.value.message


@pytest.mark.parametrize("status", ["Error", "Failed"])
async def test_failed_jobs_fall_through(status: str) -> None:
    async with BFLFake() as fake:
        fake.final_status = status
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert caught.value.status == 502 and f"as {status}: bad" in caught.value.message


async def test_transient_poll_failures_are_retried() -> None:
    async with BFLFake() as fake:
        fake.poll_faults = ["503", "reset", "429"]
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert len(result.images) == 1


async def test_persistent_poll_failures_give_up() -> None:
    async with BFLFake() as fake:
        fake.poll_faults = ["503"] * 10
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert caught.value.status == 503 and "job poll" in caught.value.message
    assert len(fake.calls("/get_result")) == 4


async def test_a_lost_job_falls_through() -> None:
    async with BFLFake() as fake:
        fake.poll_faults = ["404"]
        provider = fake.provider()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert caught.value.metadata["upstream_status"] == 404


async def test_a_job_never_ready_stops_at_the_total_timeout() -> None:
    async with BFLFake() as fake:
        fake.pending_polls = 10**6
        provider = fake.provider(
            timeouts=type(fake.config().timeouts)(connect_s=1, first_byte_s=1, total_s=0.5)
        )
        started = time.monotonic()
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert caught.value.status == 504 and "total_s" in caught.value.message
    assert time.monotonic() - started < 2.0
    polls = fake.calls("/get_result")
    assert 3 <= len(polls) <= 20  # backoff: 10 ms doubling to 50 ms


async def test_probe_needs_no_call() -> None:
    async with BFLFake() as fake:
        provider = fake.provider()
        try:
            assert await provider.probe() is True
        finally:
            await provider.aclose()
    assert fake.seen == []


async def test_the_sample_download_follows_a_cdn_redirect() -> None:
    async with FakeUpstream(lambda s: Reply(404)) as delivery, BFLFake(delivery) as fake:
        serve = fake.serve_file

        def cdn(seen: Seen) -> Action:
            if seen.path.startswith("/cdn/"):
                path = seen.target.removeprefix("/cdn")
                return serve(Seen(seen.method, path, seen.headers, seen.body))
            return Reply(302, b"", {"Location": "/cdn" + seen.path})

        delivery.handler = cdn
        provider = fake.provider()
        try:
            result = await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert [s.path for s in delivery.seen] == ["/delivery/job-0.png", "/cdn/delivery/job-0.png"]
    assert len(result.images) == 1


async def test_a_sample_url_on_a_private_host_is_refused_unless_trusted() -> None:
    """An upstream's image URL on another host than its own is judged like a client's
    reference URL: loopback and private addresses are not fetched, unless the provider is
    trusted to name them (`options.private_image_urls`)."""
    async with FakeUpstream(lambda s: Reply(404)) as delivery, BFLFake(delivery) as fake:
        provider = fake.provider(options={"private_image_urls": False})
        try:
            with pytest.raises(ProviderError, match="private, loopback or link-local"):
                await provider.generate(make_request(width=64, height=64))
        finally:
            await provider.aclose()
    assert delivery.seen == []  # never even connected
