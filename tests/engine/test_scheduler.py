"""The engine's promises: SPEC §2 seeds and bytes, batching, caching, cancellation, progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from pixelrouter.engine.scheduler import JobState
from pixelrouter.errors import ProviderError
from pixelrouter.types import ImageResult, ProgressEvent

from .helpers import make_request, pixels, plain_call, reference, rounding_diff

# SPEC §2: batched images may differ from alone only by rounding.
MAX_ROUNDING = 2
MAX_DIFFERING_FRACTION = 0.01


async def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def _only(result: ImageResult) -> np.ndarray:
    assert len(result.images) == 1
    return pixels(result.images[0].data)


async def test_same_seed_gives_identical_bytes(engine: Any) -> None:
    first = await engine.generate(make_request("a blue boat", seed=11))
    second = await engine.generate(make_request("a blue boat", seed=11))
    assert first.images[0].data == second.images[0].data
    third = await engine.generate(make_request("a blue boat", seed=12))
    assert third.images[0].data != first.images[0].data


async def test_alone_equals_a_plain_diffusers_call(engine: Any, demo_pipe: Any) -> None:
    result = await engine.generate(make_request("a green hill", seed=5, batching=False))
    image = result.images[0]
    assert (image.width, image.height, image.seed, image.index) == (128, 128, 5, 0)
    assert image.media_type == "image/png"
    assert np.array_equal(_only(result), plain_call(demo_pipe, "a green hill", seed=5))


async def test_the_prompt_cache_keeps_bytes_identical(engine: Any, demo_pipe: Any) -> None:
    prompt = "a cached prompt about a yellow kite"
    first = await engine.generate(make_request(prompt, seed=8))
    hits = engine.status()["prompt_cache"]["hits"]
    second = await engine.generate(make_request(prompt, seed=8))
    assert engine.status()["prompt_cache"]["hits"] == hits + 1
    assert second.images[0].data == first.images[0].data
    assert np.array_equal(_only(second), plain_call(demo_pipe, prompt, seed=8))


async def test_batched_images_differ_from_alone_only_by_rounding(
    batch_engine: Any, demo_pipe: Any
) -> None:
    prompts = ["a red fox", "a stone bridge", "a red fox", "an old clock"]
    requests = [make_request(p, seed=100 + i) for i, p in enumerate(prompts)]
    results = await asyncio.gather(*(batch_engine.generate(r) for r in requests))
    jobs = [batch_engine.job(r.id) for r in requests]
    assert len({job.started_at for job in jobs}) == 1, "the four requests ran as one batch"
    for request, result in zip(requests, results, strict=True):
        alone = plain_call(demo_pipe, request.prompt, seed=request.seed)
        worst, fraction = rounding_diff(_only(result), alone)
        assert worst <= MAX_ROUNDING and fraction < MAX_DIFFERING_FRACTION
    # Two prompts in one batch give different images.
    assert rounding_diff(_only(results[0]), _only(results[1]))[1] > 0.5


async def test_n_images_use_seeds_s_and_s_plus_1(engine: Any, demo_pipe: Any) -> None:
    # Alone (batching off): each image is its own call, byte-equal to the plain call.
    alone = await engine.generate(make_request("two moons", seed=40, n=2, batching=False))
    assert [(i.seed, i.index) for i in alone.images] == [(40, 0), (41, 1)]
    for image in alone.images:
        assert np.array_equal(pixels(image.data), plain_call(demo_pipe, "two moons", image.seed))
    # Batched: both latents in one call, equal up to rounding.
    batched = await engine.generate(make_request("two moons", seed=40, n=2))
    assert [i.seed for i in batched.images] == [40, 41]
    for image in batched.images:
        worst, fraction = rounding_diff(
            pixels(image.data), plain_call(demo_pipe, "two moons", image.seed)
        )
        assert worst <= MAX_ROUNDING and fraction < MAX_DIFFERING_FRACTION


async def test_n_above_the_batch_size_runs_as_several_batches(engine: Any, demo_pipe: Any) -> None:
    limit = engine.cfg.max_batch_size
    n = limit + 2  # one full batch and a part of two
    events: list[ProgressEvent] = []
    request = make_request("ten lanterns", seed=70, n=n, batching=False)
    result = await engine.generate(request, events.append)
    assert result.request_id == request.id
    assert [(i.seed, i.index) for i in result.images] == [(70 + i, i) for i in range(n)]
    # Alone, each image is still byte-equal to the plain diffusers call with seed s + i.
    for image in (result.images[0], result.images[limit], result.images[-1]):
        assert np.array_equal(pixels(image.data), plain_call(demo_pipe, "ten lanterns", image.seed))
    # Progress covers every part and ends at its total.
    assert {e.request_id for e in events} == {request.id}
    assert events[-1].step == events[-1].total_steps


async def test_references_change_the_image_and_match_a_plain_call(
    engine: Any, demo_pipe: Any
) -> None:
    from PIL import Image

    ref = reference()
    plain_ref = Image.frombytes("RGB", (ref.width, ref.height), ref.rgb)
    with_ref = await engine.generate(
        make_request("make it blue", seed=9, references=(ref,), batching=False)
    )
    without = await engine.generate(make_request("make it blue", seed=9, batching=False))
    assert with_ref.images[0].data != without.images[0].data
    expected = plain_call(demo_pipe, "make it blue", seed=9, image=[plain_ref])
    assert np.array_equal(_only(with_ref), expected)


async def test_only_identical_references_share_a_batch(batch_engine: Any) -> None:
    ref_a, ref_b = reference(seed=1), reference(seed=2)
    requests = [
        make_request("x", seed=1, references=(ref_a,)),
        make_request("y", seed=2, references=(ref_b,)),
        make_request("z", seed=3, references=(ref_a,), n=3),
        make_request("w", seed=4, references=(ref_b,), n=3),
    ]
    await asyncio.gather(*(batch_engine.generate(r) for r in requests))
    started = [batch_engine.job(r.id).started_at for r in requests]
    assert started[0] == started[2] != started[1] == started[3]


async def test_progress_events_arrive_in_order_with_totals(engine: Any) -> None:
    events: list[ProgressEvent] = []
    request = make_request("progress", steps=3)
    await engine.generate(request, on_progress=events.append)
    assert [(e.request_id, e.step, e.total_steps) for e in events] == [
        (request.id, step, 3) for step in (1, 2, 3)
    ]
    events.clear()
    alone = make_request("progress", steps=2, n=2, batching=False)
    await engine.generate(alone, on_progress=events.append)
    assert [(e.step, e.total_steps) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_a_cancelled_queued_request_never_runs(engine: Any) -> None:
    started_running = asyncio.Event()
    blocker = make_request("a slow blocker", size=512, steps=12, batching=False)
    blocker_task = asyncio.create_task(
        engine.generate(blocker, on_progress=lambda _event: started_running.set())
    )
    await asyncio.wait_for(started_running.wait(), 30)
    queued = make_request("never runs", seed=3)
    queued_task = asyncio.create_task(engine.generate(queued))
    await _wait_until(lambda: engine.job(queued.id) is not None)
    assert engine.job(queued.id).state is JobState.QUEUED
    assert engine.job(blocker.id).state is JobState.RUNNING
    started_before = engine.jobs_started
    queued_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued_task
    assert engine.status()["queue_depth"] == 0
    await blocker_task
    await _wait_until(lambda: engine.status()["running_batch"] == 0)
    job = engine.job(queued.id)
    assert job.state is JobState.CANCELLED and job.started_at is None
    assert engine.jobs_started == started_before


async def test_a_cancelled_running_request_is_dropped_and_the_engine_goes_on(
    engine: Any,
) -> None:
    running = asyncio.Event()
    events: list[ProgressEvent] = []

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        running.set()

    aborted_before = engine.status()["batches_aborted"]
    doomed = make_request("abandoned", size=512, steps=40, batching=False)
    task = asyncio.create_task(engine.generate(doomed, on_progress=on_progress))
    await asyncio.wait_for(running.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await engine.generate(make_request("next one", seed=2))
    assert len(after.images) == 1
    assert engine.job(doomed.id).state is JobState.CANCELLED
    assert engine.status()["batches_aborted"] == aborted_before + 1, "the batch stopped early"


async def test_a_failing_batch_gives_a_short_provider_error(engine: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        await engine.generate(make_request("overflowing seed", seed=2**64))
    assert "Traceback" not in caught.value.message and len(caught.value.message) < 300
    healthy = await engine.generate(make_request("still fine"))
    assert len(healthy.images) == 1


async def test_result_fields_tokens_and_status(engine: Any) -> None:
    request = make_request("a cat", output_format="jpeg", output_compression=50)
    result = await engine.generate(request)
    assert result.request_id == request.id and result.model == request.model
    # Demo weights, and no provider's name: the router stamps the provider that served it.
    assert (result.provider_slug, result.provider_name, result.demo) == ("", "", True)
    assert result.images[0].media_type == "image/jpeg" and result.images[0].data[:2] == b"\xff\xd8"
    assert result.prompt_tokens == engine.count_prompt_tokens("a cat") == 5  # byte-level demo BPE
    assert result.generation_time_ms >= 0
    status = engine.status()
    for field in ("queue_depth", "queued_images", "running_batch", "max_batch_size"):
        assert field in status
    assert status["state"] == "ready" and status["max_batch_size"] == 4
    assert isinstance(status["estimated_wait_s"], float)
    assert engine.readiness() == (True, "ready")


async def test_1024_square_smoke(engine: Any) -> None:
    result = await engine.generate(make_request("a wide field", size=1024))
    image = result.images[0]
    assert (image.width, image.height) == (1024, 1024)
    assert pixels(image.data).shape == (1024, 1024, 3)
