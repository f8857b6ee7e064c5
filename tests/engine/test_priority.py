"""Batch priority (docs/batches.md, "Priority"): an interactive job waits only for the batch
call already running, never behind queued batch jobs; the two are never merged into one
pipeline call; and queued batch work never makes the engine refuse an interactive request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import make_request, started_engine


@pytest.fixture(scope="module")
def one_at_a_time() -> Iterator[Any]:
    """A demo engine with batches of 2 and a queue of 4 images."""
    with started_engine(max_batch_size=2, batch_window_ms=0.0, max_queue_images=4) as engine:
        yield engine


async def test_an_interactive_job_runs_next_and_alone(one_at_a_time: Any) -> None:
    engine = one_at_a_time
    running = asyncio.Event()
    blocker = make_request("keeps the worker busy", size=512, steps=40, batching=False)
    blocking = asyncio.create_task(engine.generate(blocker, on_progress=lambda _: running.set()))
    await asyncio.wait_for(running.wait(), 60)
    batch = [make_request(f"batch item {i}", seed=i, priority="batch") for i in range(4)]
    queued = [asyncio.create_task(engine.generate(r)) for r in batch]
    deadline = asyncio.get_running_loop().time() + 10
    while engine.status()["batch_queued_images"] < 4:
        assert asyncio.get_running_loop().time() < deadline, engine.status()
        await asyncio.sleep(0.001)
    assert engine.status()["queue_full"] is True
    # The queue is full of batch work: it never refuses an interactive request.
    interactive = make_request("a person waiting", seed=99)
    result = await engine.generate(interactive)
    assert len(result.images) == 1
    await asyncio.gather(blocking, *queued)
    started = engine.job(interactive.id).started_at
    # It ran right after the call in flight, before every batch job that was waiting, and
    # shared its call with none of them.
    assert all(engine.job(r.id).started_at > started for r in batch)


async def test_batch_jobs_still_batch_together(one_at_a_time: Any) -> None:
    engine = one_at_a_time
    sizes_before = dict(engine.batch_sizes)
    running = asyncio.Event()
    blocker = make_request("keeps the worker busy", size=256, steps=8, batching=False)
    blocking = asyncio.create_task(engine.generate(blocker, on_progress=lambda _: running.set()))
    await asyncio.wait_for(running.wait(), 60)
    pair = [make_request(f"pair {i}", seed=i, size=128, priority="batch") for i in range(2)]
    await asyncio.gather(blocking, *(engine.generate(r) for r in pair))
    assert engine.batch_sizes[2] == sizes_before.get(2, 0) + 1  # the two shared one call


async def test_batch_jobs_wait_a_moment_for_company(one_at_a_time: Any) -> None:
    """With no batch window, interactive jobs run as they come; batch jobs arriving a few
    milliseconds apart still share a call (no one waits on their latency)."""
    engine = one_at_a_time
    before = engine.batch_sizes[2]
    first = asyncio.create_task(engine.generate(make_request("a", seed=1, priority="batch")))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(engine.generate(make_request("b", seed=2, priority="batch")))
    await asyncio.gather(first, second)
    assert engine.batch_sizes[2] == before + 1
