"""Every protocol against every fault, over real sockets: what falls through (ProviderError,
with the status the attempt is recorded as) and what does not (the client's errors)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from pixelrouter.errors import InvalidRequest, PayloadTooLarge, ProviderError
from pixelrouter.providers.config import Timeouts

from .conftest import make_request
from .upstreams import FAKES

KINDS = sorted(FAKES)


async def _fail(kind: str, *, fault: str | None = None, image_mode: str = "ok", **config):
    async with FAKES[kind]() as fake:
        fake.fault = fault
        fake.image_mode = image_mode
        provider = fake.provider(**config)
        started = time.monotonic()
        try:
            with pytest.raises(Exception) as caught:
                await provider.generate(make_request())
        finally:
            await provider.aclose()
        return caught.value, time.monotonic() - started


@pytest.mark.parametrize("kind", KINDS)
async def test_silent_upstream_times_out_at_first_byte(kind: str) -> None:
    timeouts = Timeouts(connect_s=1.0, first_byte_s=0.3, total_s=10.0)
    error, elapsed = await _fail(kind, fault="stall", timeouts=timeouts)
    assert isinstance(error, ProviderError)
    assert error.status == 504 and error.error_type == "timeout"
    assert "first_byte_s" in error.message
    assert elapsed < 2.0


@pytest.mark.parametrize("kind", KINDS)
async def test_headers_then_stall_hits_the_total_timeout(kind: str) -> None:
    timeouts = Timeouts(connect_s=1.0, first_byte_s=30.0, total_s=0.4)
    error, elapsed = await _fail(kind, fault="headers_then_stall", timeouts=timeouts)
    assert isinstance(error, ProviderError)
    assert error.status == 504 and "total_s" in error.message
    assert elapsed < 2.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["500", "503"])
async def test_5xx_falls_through_with_the_upstream_status(kind: str, fault: str) -> None:
    error, _ = await _fail(kind, fault=fault)
    assert isinstance(error, ProviderError)
    assert error.status == int(fault)
    assert error.metadata["upstream_status"] == int(fault)


@pytest.mark.parametrize("kind", KINDS)
async def test_429_carries_retry_after(kind: str) -> None:
    error, _ = await _fail(kind, fault="429")
    assert isinstance(error, ProviderError)
    assert error.status == 429 and error.retry_after_s == 7.0
    assert "slow down" in error.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("malformed_json", "malformed JSON"),
        ("truncated", "broke off"),
        ("reset", "Fake"),
    ],
)
async def test_broken_answers_fall_through_as_502(kind: str, fault: str, words: str) -> None:
    error, _ = await _fail(kind, fault=fault)
    assert isinstance(error, ProviderError)
    assert error.status == 502
    assert words in error.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("wrong_size", "256x256 image 1 for a 512x512 request"),
        ("not_image", "not an image"),
        ("truncated_png", "damaged or truncated"),
        ("no_image", "without"),
    ],
)
async def test_bad_images_are_never_delivered(kind: str, mode: str, words: str) -> None:
    error, _ = await _fail(kind, image_mode=mode)
    assert isinstance(error, ProviderError)
    assert error.status == 502
    assert words in error.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["400", "422"])
async def test_upstream_client_errors_do_not_fall_through(kind: str, fault: str) -> None:
    error, _ = await _fail(kind, fault=fault)
    assert isinstance(error, InvalidRequest) and not isinstance(error, ProviderError)
    assert error.status == 400
    assert f"Fake {kind} rejected the request (HTTP {fault})" in error.message
    if fault == "400":
        assert "prompt is too long for this upstream" in error.message
    else:
        assert "field required" in error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_413_is_payload_too_large(kind: str) -> None:
    error, _ = await _fail(kind, fault="413")
    assert isinstance(error, PayloadTooLarge)
    assert error.status == 413 and "body too large" in error.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["401", "402", "403"])
async def test_rejected_credentials_are_our_misconfiguration(kind: str, fault: str) -> None:
    error, _ = await _fail(kind, fault=fault)
    assert isinstance(error, ProviderError)
    assert error.status == 502 and error.error_type == "provider_unavailable"
    assert f"Fake {kind} (fake-{kind})" in error.message
    assert "api_key" in error.message
    assert "test-upstream-key" not in error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_404_is_a_wrong_url_not_the_clients_fault(kind: str) -> None:
    error, _ = await _fail(kind, fault="404")
    assert isinstance(error, ProviderError)
    assert error.status == 502 and "check this provider's url" in error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_falls_through(kind: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FAKES[kind]()
    provider = fake.provider_class(fake.config(url=f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(make_request())
    finally:
        await provider.aclose()
    assert caught.value.status == 502
    assert "could not be reached" in caught.value.message


async def test_the_routers_own_deadline_stays_a_timeout_error() -> None:
    """A deadline set around `generate` (routing's) is not turned into a ProviderError."""
    async with FAKES["openai-images"]() as fake:
        fake.fault = "stall"
        provider = fake.provider(timeouts=Timeouts(connect_s=1, first_byte_s=30, total_s=30))
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(provider.generate(make_request()), timeout=0.2)
            assert provider.status().in_flight == 0
        finally:
            await provider.aclose()


async def test_requests_in_flight_fill_max_queue() -> None:
    async with FAKES["openai-images"]() as fake:
        fake.fault = "stall"
        provider = fake.provider(max_queue=1)
        try:
            task = asyncio.create_task(provider.generate(make_request()))
            deadline = time.monotonic() + 5
            while not fake.seen and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            status = provider.status()
            assert status.queue_depth == 1 and status.queue_full is True
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert provider.status().queue_full is False
        finally:
            await provider.aclose()


async def test_an_oversized_answer_is_refused() -> None:
    async with FAKES["pixelrouter"]() as fake:
        provider = fake.provider(options={"max_response_bytes": 1000})
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(make_request())
        finally:
            await provider.aclose()
    assert caught.value.status == 502 and "larger than 1000 bytes" in caught.value.message


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "pixelrouter"])
async def test_an_upstreams_insides_do_not_reach_the_client(kind: str, caplog) -> None:
    """An upstream's error text may name its files, hosts and addresses: the client sees its
    first line with those taken out; the log has it whole. (A pixelrouter worker's messages
    are written for clients and pass whole.)"""
    import logging

    with caplog.at_level(logging.INFO, logger="pixelrouter.providers.http"):
        error, _ = await _fail(kind, fault="400_insides")
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert error.message.endswith(
        "rejected the request (HTTP 400): bad size in <path> at <address> (see <url>)"
    )
    for inside in ("/srv/upstream", "10.2.3.4", "wiki.internal", "Traceback"):
        assert inside not in error.message
    assert "/srv/upstream/app/handlers.py at 10.2.3.4:8000" in caplog.text
